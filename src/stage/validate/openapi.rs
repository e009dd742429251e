//! OpenAPI-driven validation: a route (or its upstream) names the
//! backend's own OpenAPI 3.0 or 3.1 document, as a JSON file or a URL
//! (FastAPI's `/openapi.json`), read when the config is compiled: at start
//! and on every reload. Each request is matched to its operation by method
//! and path template, and then its path, query and header parameters
//! (coerced from text by their schema's type) and its JSON body are
//! checked against the document's schemas. Operations the document does
//! not declare are refused (`undeclared = "refuse"`, the default: 404 for
//! an unknown path, 405 for an unknown method) or let through (`"allow"`).
//!
//! `$ref`s into `#/components/…` resolve because each schema is compiled
//! with the document's `components` beside it. 3.1 schemas are JSON Schema
//! 2020-12; 3.0 schemas are compiled as draft 4, with `nullable: true`
//! turned into a `"null"` type. Problems in parameters carry pointers
//! `#/path/<name>`, `#/query/<name>` and `#/header/<name>`; body problems
//! carry JSON pointers into the body.

use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::schema::Schema;
use crate::error::FieldError;

/// `openapi = { … }` on a route's `validate`, or on an upstream.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OpenApiConfig {
    /// A JSON document on disk (relative to the config's folder).
    pub file: Option<std::path::PathBuf>,
    /// A URL the document is fetched from (http or https).
    pub url: Option<String>,
    /// `refuse` (default) or `allow` operations the document does not declare.
    #[serde(default)]
    pub undeclared: Undeclared,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Undeclared {
    #[default]
    Refuse,
    Allow,
}

/// The largest document read.
const MAX_DOCUMENT: usize = 8 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn name(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

#[derive(Debug)]
struct Parameter {
    name: String,
    location: Location,
    required: bool,
    /// The schema's `type`, for turning text into a JSON value.
    kind: Option<String>,
    schema: Option<Schema>,
}

#[derive(Debug)]
struct Operation {
    method: Method,
    segments: Vec<Segment>,
    parameters: Vec<Parameter>,
    body_required: bool,
    /// Declared body media types (lowercased); empty: no body declared.
    body_types: Vec<String>,
    body_schema: Option<Schema>,
}

/// A compiled document.
#[derive(Debug)]
pub struct OpenApi {
    operations: Vec<Operation>,
    pub undeclared: Undeclared,
}

/// A matched operation and the path parameters read from the request.
pub struct OpenApiOperation<'a> {
    operation: &'a Operation,
    path_values: Vec<(&'a str, String)>,
}

/// Reads the document from its file or URL.
pub fn read(base_dir: &Path, config: &OpenApiConfig) -> Result<Value, String> {
    let text = match (&config.file, &config.url) {
        (Some(file), None) => {
            let path = base_dir.join(file);
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        (None, Some(url)) => fetch(url)?,
        _ => return Err("set `file` or `url` (one of them)".into()),
    };
    if text.len() > MAX_DOCUMENT {
        return Err(format!("the document is larger than {} MiB", MAX_DOCUMENT >> 20));
    }
    serde_json::from_slice(&text)
        .map_err(|e| format!("the document is not JSON ({e}); only JSON documents are read"))
}

/// Fetches a document. Compiling is synchronous and may run inside or
/// outside the async runtime, so the request runs on a thread of its own
/// with a runtime of its own.
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("`{url}` is not an http or https URL"));
    }
    let url = url.to_string();
    let thread = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?;
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("fetching {url}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("fetching {url}: status {}", response.status()));
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| format!("fetching {url}: {e}"))?;
            Ok(bytes.to_vec())
        })
    });
    thread.join().map_err(|_| "the fetch failed".to_string())?
}

/// Follows a local `$ref` (`#/components/parameters/x`).
fn resolve<'d>(doc: &'d Value, value: &'d Value) -> &'d Value {
    let mut value = value;
    for _ in 0..16 {
        match value
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(pointer) => match doc.pointer(pointer) {
                Some(target) => value = target,
                None => return value,
            },
            None => return value,
        }
    }
    value
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `"null"` among the types.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(kind)) = map.get("type").cloned()
            {
                map.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(kind), "null".into()]),
                );
            }
            map.values_mut().for_each(rewrite_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

struct Compiler<'d> {
    doc: &'d Value,
    /// `"3.0"` documents are draft 4.
    draft4: bool,
}

impl Compiler<'_> {
    /// A schema of the document, with the document's components beside it.
    fn schema(&self, schema: &Value) -> Result<Schema, String> {
        let mut root = match schema {
            Value::Object(map) => map.clone(),
            Value::Bool(b) => return Schema::compile(&Value::Bool(*b)),
            _ => return Err("a schema is not an object".into()),
        };
        if let Some(components) = self.doc.get("components") {
            root.entry("components").or_insert_with(|| components.clone());
        }
        if self.draft4 {
            root.insert("$schema".into(), "http://json-schema.org/draft-04/schema#".into());
        }
        Schema::compile(&Value::Object(root))
    }

    fn parameter(&self, value: &Value) -> Result<Option<Parameter>, String> {
        let p = resolve(self.doc, value);
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a parameter has no name")?;
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            Some("header") => Location::Header,
            // Cookie parameters are the backend's business.
            _ => return Ok(None),
        };
        let schema_value = p.get("schema").map(|s| resolve(self.doc, s));
        Ok(Some(Parameter {
            name: if location == Location::Header {
                name.to_ascii_lowercase()
            } else {
                name.to_string()
            },
            location,
            required: location == Location::Path || p.get("required") == Some(&Value::Bool(true)),
            kind: schema_value
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str)
                .map(String::from),
            schema: p.get("schema").map(|s| self.schema(s)).transpose()?,
        }))
    }

    fn operation(&self, path: &str, method: Method, item: &Value, op: &Value) -> Result<Operation, String> {
        let segments = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param(name.to_string()),
                None => Segment::Literal(s.to_string()),
            })
            .collect();
        let mut parameters: Vec<Parameter> = Vec::new();
        // Operation-level parameters override path-level ones of the same name and place.
        for list in [op.get("parameters"), item.get("parameters")]
            .into_iter()
            .flatten()
        {
            for value in list.as_array().into_iter().flatten() {
                if let Some(p) = self.parameter(value)?
                    && !parameters
                        .iter()
                        .any(|q| q.name == p.name && q.location == p.location)
                {
                    parameters.push(p);
                }
            }
        }
        let body = op.get("requestBody").map(|b| resolve(self.doc, b));
        let content = body.and_then(|b| b.get("content")).and_then(Value::as_object);
        let body_types = content
            .map(|c| c.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default();
        let json_schema = content
            .and_then(|c| c.iter().find(|(k, _)| super::is_json(&k.to_ascii_lowercase())))
            .and_then(|(_, media)| media.get("schema"));
        Ok(Operation {
            method,
            segments,
            parameters,
            body_required: body.and_then(|b| b.get("required")) == Some(&Value::Bool(true)),
            body_types,
            body_schema: json_schema.map(|s| self.schema(s)).transpose()?,
        })
    }
}

const METHODS: &[(&str, Method)] = &[
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

impl OpenApi {
    /// Compiles a document.
    pub fn compile(mut doc: Value, undeclared: Undeclared) -> Result<OpenApi, String> {
        let version = doc
            .get("openapi")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let draft4 = version.starts_with("3.0");
        if !draft4 && !version.starts_with("3.1") {
            return Err(format!(
                "`openapi: {version}`: OpenAPI 3.0 and 3.1 documents are read"
            ));
        }
        if draft4 {
            rewrite_nullable(&mut doc);
        }
        let compiler = Compiler { doc: &doc, draft4 };
        let paths: &Map<String, Value> = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("the document has no `paths`")?;
        let mut operations = Vec::new();
        for (path, item) in paths {
            let item = resolve(&doc, item);
            for (name, method) in METHODS {
                if let Some(op) = item.get(*name) {
                    let compiled = compiler
                        .operation(path, method.clone(), item, op)
                        .map_err(|e| format!("{} {path}: {e}", name.to_uppercase()))?;
                    operations.push(compiled);
                }
            }
        }
        // Literal segments before parameters, as OpenAPI matches `/users/me`
        // before `/users/{id}`.
        operations.sort_by_key(|o| {
            o.segments
                .iter()
                .map(|s| matches!(s, Segment::Param(_)))
                .collect::<Vec<_>>()
        });
        Ok(OpenApi {
            operations,
            undeclared,
        })
    }

    /// Finds the operation for a method and (decoded, normalised) path.
    pub fn find<'a>(&'a self, method: &Method, path: &str) -> (Option<OpenApiOperation<'a>>, bool) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut path_known = false;
        for op in &self.operations {
            if op.segments.len() != parts.len() {
                continue;
            }
            let mut values = Vec::new();
            let fits = op
                .segments
                .iter()
                .zip(&parts)
                .all(|(segment, part)| match segment {
                    Segment::Literal(text) => text == part,
                    Segment::Param(name) => {
                        values.push((
                            name.as_str(),
                            percent_encoding::percent_decode_str(part)
                                .decode_utf8_lossy()
                                .into_owned(),
                        ));
                        !part.is_empty()
                    }
                });
            if !fits {
                continue;
            }
            path_known = true;
            if op.method == *method || (*method == Method::HEAD && op.method == Method::GET) {
                return (
                    Some(OpenApiOperation {
                        operation: op,
                        path_values: values,
                    }),
                    true,
                );
            }
        }
        (None, path_known)
    }
}

impl OpenApi {
    /// The methods the document declares for a path, for `Allow`.
    pub fn allowed(&self, path: &str) -> Vec<Method> {
        METHODS
            .iter()
            .map(|(_, m)| m.clone())
            .filter(|m| *m != Method::HEAD && self.find(m, path).0.is_some())
            .collect()
    }
}

/// A parameter's text as the JSON value its schema expects.
fn coerce(kind: Option<&str>, text: &str) -> Value {
    match kind {
        Some("integer") => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| text.into()),
        Some("number") => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| text.into()),
        Some("boolean") => match text {
            "true" => true.into(),
            "false" => false.into(),
            _ => text.into(),
        },
        _ => text.into(),
    }
}

impl<'a> OpenApiOperation<'a> {
    /// Checks the path, query and header parameters.
    pub fn check_parameters(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        errors: &mut Vec<FieldError>,
        cap: usize,
    ) {
        let query: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        for p in &self.operation.parameters {
            let values: Vec<String> = match p.location {
                Location::Path => self
                    .path_values
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                Location::Query => query
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                Location::Header => headers
                    .get_all(p.name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(String::from))
                    .collect(),
            };
            let pointer = format!("#/{}/{}", p.location.name(), p.name);
            if values.is_empty() {
                if p.required && errors.len() < cap {
                    errors.push(FieldError {
                        pointer,
                        detail: "is required".into(),
                    });
                }
                continue;
            }
            let Some(schema) = &p.schema else { continue };
            // A scalar given more than once is checked every time: backends
            // differ on which one they read (Starlette takes the last).
            let checked: Vec<Value> = if p.kind.as_deref() == Some("array") {
                vec![Value::Array(values.iter().map(|v| coerce(None, v)).collect())]
            } else {
                values.iter().map(|v| coerce(p.kind.as_deref(), v)).collect()
            };
            let mut found = Vec::new();
            for value in &checked {
                schema.check(value, &mut found, cap);
            }
            for e in found.into_iter().take(cap.saturating_sub(errors.len())) {
                errors.push(FieldError {
                    pointer: format!("{pointer}{}", e.pointer),
                    detail: e.detail,
                });
            }
        }
    }

    /// Whether the operation takes a body of this media type (`None`: the
    /// request has none).
    pub fn accepts(&self, media_type: Option<&str>, has_body: bool) -> Result<(), String> {
        let types = &self.operation.body_types;
        match media_type {
            None if !has_body && self.operation.body_required => Err("a request body is required".into()),
            None if !has_body => Ok(()),
            // A body without a declared type is read as JSON by some
            // backends: it is refused rather than passed unchecked.
            None if !types.is_empty() => Err(types.join(", ")),
            None => Ok(()),
            Some(_) if types.is_empty() => Ok(()),
            Some(m)
                if types.iter().any(|t| {
                    t == m || t == "*/*" || t.strip_suffix("/*").is_some_and(|p| m.starts_with(p))
                }) =>
            {
                Ok(())
            }
            Some(_) => Err(types.join(", ")),
        }
    }

    pub fn body_schema(&self) -> Option<&'a Schema> {
        self.operation.body_schema.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "openapi": "3.0.3",
            "paths": {
                "/items/{item_id}": {
                    "parameters": [{"name": "item_id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                    "get": {"parameters": [{"$ref": "#/components/parameters/Verbose"}]},
                    "put": {"requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}
                },
                "/items/latest": {"get": {}}
            },
            "components": {
                "parameters": {"Verbose": {"name": "verbose", "in": "query", "schema": {"type": "boolean"}}},
                "schemas": {"Item": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "note": {"type": "string", "nullable": true}}}}
            }
        })
    }

    #[test]
    fn operations_match_by_template_and_check_their_parameters() {
        let api = OpenApi::compile(doc(), Undeclared::Refuse).unwrap();
        let (op, _) = api.find(&Method::GET, "/items/latest");
        assert!(
            op.unwrap().path_values.is_empty(),
            "a literal path wins over a template"
        );
        let (op, _) = api.find(&Method::GET, "/items/7");
        let op = op.unwrap();
        let mut errors = Vec::new();
        op.check_parameters(Some("verbose=true"), &HeaderMap::new(), &mut errors, 20);
        assert!(errors.is_empty(), "{errors:?}");
        op.check_parameters(Some("verbose=maybe"), &HeaderMap::new(), &mut errors, 20);
        assert_eq!(errors[0].pointer, "#/query/verbose");
        let (op, _) = api.find(&Method::GET, "/items/0");
        let mut errors = Vec::new();
        op.unwrap()
            .check_parameters(None, &HeaderMap::new(), &mut errors, 20);
        assert_eq!(errors[0].pointer, "#/path/item_id");
        assert!(matches!(api.find(&Method::DELETE, "/items/7"), (None, true)));
        assert!(matches!(api.find(&Method::GET, "/nothing"), (None, false)));
    }

    #[test]
    fn bodies_use_component_schemas_and_3_0_nullable() {
        let api = OpenApi::compile(doc(), Undeclared::Refuse).unwrap();
        let (op, _) = api.find(&Method::PUT, "/items/7");
        let op = op.unwrap();
        assert!(op.accepts(None, false).is_err(), "the body is required");
        assert!(op.accepts(None, true).is_err(), "a body without a type");
        assert!(op.accepts(Some("text/plain"), true).is_err());
        assert!(op.accepts(Some("application/json"), true).is_ok());
        let schema = op.body_schema().unwrap();
        assert!(schema.is_valid(&json!({"name": "x", "note": null})));
        assert!(!schema.is_valid(&json!({"note": "x"})));
        assert!(OpenApi::compile(json!({"openapi": "2.0", "paths": {}}), Undeclared::Refuse).is_err());
    }
}
