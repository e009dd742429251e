//! Input validation, per route (`validate = { … }`), in the body phase:
//!
//! - `content_types`: a body of any other type is refused with 415;
//! - JSON bodies (`application/json`, `*+json`) are parsed once and
//!   checked against structural limits (nesting depth, string and array
//!   length: [`limits`]), a JSON Schema (`schema` inline, or `schema_file`:
//!   [`schema`]) and content rules on string fields ([`rules`]);
//! - what breaks them is a 422 problem document whose `errors` list each
//!   problem with its JSON pointer; a body that is not JSON is a 400.
//!
//! - with `openapi` (here or on the upstream), each request is checked
//!   against its operation in the backend's OpenAPI document: parameters,
//!   body, and whether the operation exists at all ([`openapi`]).
//!
//! Only the listed `methods` (POST, PUT and PATCH by default) have their
//! bodies checked by `schema`, limits and rules; an OpenAPI operation is
//! checked whatever its method.
//! A route without `validate` has no slot here and pays nothing; one with
//! it reads the body whole (within the route's `max_body`, already
//! enforced), and the upstream receives the same bytes.

pub mod limits;
pub mod openapi;
pub mod rules;
pub mod schema;

use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{Method, Request};
use http_body::Body;
use serde::Deserialize;
use serde_json::Value;

use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::enforce::{Enforcement, Mode, mode_for, protection};
use crate::error::{FieldError, GatewayError};
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};

pub use limits::JsonLimits;
pub use rules::{ContentRule, ContentRuleConfig};
pub use schema::Schema;

/// A key as a JSON pointer segment (RFC 6901: `~` and `/` escaped).
pub fn pointer_segment(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

/// The most problems one 422 lists.
const MAX_ERRORS: usize = 20;
/// Bodies are read within the route's `max_body`; this only bounds the read.
const READ_CEILING: u64 = 1 << 40;

/// A route's `validate` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Methods whose bodies are checked (default POST, PUT, PATCH).
    pub methods: Option<Vec<String>>,
    /// Media types a body may have (`application/json`); any when omitted.
    pub content_types: Option<Vec<String>>,
    /// A JSON Schema, inline (a TOML table).
    pub schema: Option<Value>,
    /// A JSON Schema in a file (relative to the config's folder).
    pub schema_file: Option<std::path::PathBuf>,
    /// Deepest nesting of arrays and objects (default 32).
    pub max_depth: Option<usize>,
    /// Longest string or property name, in characters (default 100000).
    pub max_string_length: Option<usize>,
    /// Most items in one array (default 10000).
    pub max_array_length: Option<usize>,
    /// Content rules on string fields.
    #[serde(default)]
    pub rules: Vec<ContentRuleConfig>,
    /// Validate by the backend's OpenAPI document.
    pub openapi: Option<openapi::OpenApiConfig>,
    /// `report`: let refused bodies through, counted and audited.
    pub mode: Option<Mode>,
}

/// A route's compiled validation.
pub struct RouteValidation {
    methods: Vec<Method>,
    /// Lowercased media types.
    content_types: Option<Vec<String>>,
    checks: JsonChecks,
    openapi: Option<openapi::OpenApi>,
    mode: Mode,
    /// Content rules report under their own name.
    rules_mode: Mode,
}

pub struct ValidateStage {
    slot: Slot<RouteValidation>,
    enforcement: Enforcement,
}

/// The media type of a `Content-Type` value, lowercased, without parameters.
fn media_type(req: &Request<GatewayBody>) -> Option<String> {
    let value = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Every limit is bounded: a configured one must be between 1 and `max`.
fn bounded(
    problems: &mut Problems<'_>,
    route: &RouteEntry<'_>,
    key: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> usize {
    match value {
        None => default,
        Some(v) if (1..=max).contains(&v) => v,
        Some(_) => {
            problems.in_route(route, key, format!("must be between 1 and {max}"));
            default
        }
    }
}

fn load_schema(
    cx_base: &std::path::Path,
    config: &JsonChecksConfig<'_>,
) -> Result<Option<Value>, (String, String)> {
    match (config.schema, config.schema_file) {
        (Some(_), Some(_)) => Err(("schema".into(), "set `schema` or `schema_file`, not both".into())),
        (Some(inline), None) => Ok(Some(inline.clone())),
        (None, Some(file)) => {
            let path = cx_base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    "schema_file".to_string(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            serde_json::from_str(&text).map(Some).map_err(|e| {
                (
                    "schema_file".to_string(),
                    format!("{} is not JSON: {e}", path.display()),
                )
            })
        }
        (None, None) => Ok(None),
    }
}

/// Where a document's checks come from: a route's `validate` table, or a
/// WebSocket route's `websocket.validate`.
pub struct JsonChecksConfig<'a> {
    pub schema: Option<&'a Value>,
    pub schema_file: Option<&'a std::path::Path>,
    pub max_depth: Option<usize>,
    pub max_string_length: Option<usize>,
    pub max_array_length: Option<usize>,
    pub rules: &'a [ContentRuleConfig],
}

/// The checks on one JSON document: limits, schema and content rules,
/// shared by request bodies and WebSocket messages.
pub struct JsonChecks {
    pub schema: Option<Schema>,
    pub limits: JsonLimits,
    pub rules: Vec<ContentRule>,
}

impl JsonChecks {
    /// Compiles the checks; problems name keys under `prefix`.
    pub fn compile(
        base_dir: &std::path::Path,
        config: &JsonChecksConfig<'_>,
        route: &RouteEntry<'_>,
        problems: &mut Problems<'_>,
        prefix: &str,
    ) -> JsonChecks {
        let schema = match load_schema(base_dir, config) {
            Ok(None) => None,
            Ok(Some(document)) => match Schema::compile(&document) {
                Ok(schema) => Some(schema),
                Err(e) => {
                    let key = if config.schema.is_some() {
                        "schema"
                    } else {
                        "schema_file"
                    };
                    problems.in_route(route, &format!("{prefix}.{key}"), e);
                    None
                }
            },
            Err((key, e)) => {
                problems.in_route(route, &format!("{prefix}.{key}"), e);
                None
            }
        };
        let d = JsonLimits::DEFAULT;
        let mut limit = |key: &str, value, default, max| {
            bounded(problems, route, &format!("{prefix}.{key}"), value, default, max)
        };
        let limits = JsonLimits {
            max_depth: limit("max_depth", config.max_depth, d.max_depth, 128),
            max_string_length: limit(
                "max_string_length",
                config.max_string_length,
                d.max_string_length,
                16 << 20,
            ),
            max_array_length: limit(
                "max_array_length",
                config.max_array_length,
                d.max_array_length,
                1 << 20,
            ),
        };
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            match ContentRule::compile(rule, i) {
                Ok(rule) => rules.push(rule),
                Err(found) => {
                    for (key, e) in found {
                        problems.in_route(route, &format!("{prefix}.rules[{i}].{key}"), e);
                    }
                }
            }
        }
        JsonChecks {
            schema,
            limits,
            rules,
        }
    }

    /// The limits, then (for a document within them) the schema and `extra`.
    pub fn check_shape(&self, doc: &Value, extra: Option<&Schema>, errors: &mut Vec<FieldError>) {
        limits::check(doc, self.limits, errors, MAX_ERRORS);
        // A document past the limits is not handed to the schema.
        if errors.is_empty() {
            for schema in [self.schema.as_ref(), extra].into_iter().flatten() {
                schema.check(doc, errors, MAX_ERRORS);
            }
        }
    }

    pub fn check_rules(&self, doc: &Value, errors: &mut Vec<FieldError>) {
        for rule in &self.rules {
            rule.check(doc, errors, MAX_ERRORS);
        }
    }
}

fn compile_route(
    base_dir: &std::path::Path,
    upstream_openapi: Option<&openapi::OpenApiConfig>,
    route: &RouteEntry<'_>,
    problems: &mut Problems<'_>,
) -> Option<RouteValidation> {
    let from_upstream;
    let config = match (route.config.validate.as_ref(), upstream_openapi) {
        (Some(config), _) => config,
        (None, Some(api)) => {
            from_upstream = ValidateConfig {
                openapi: Some(api.clone()),
                ..Default::default()
            };
            &from_upstream
        }
        (None, None) => return None,
    };
    let api_config = config.openapi.as_ref().or(upstream_openapi);
    let openapi = api_config.and_then(|api| {
        match openapi::read(base_dir, api).and_then(|doc| openapi::OpenApi::compile(doc, api.undeclared)) {
            Ok(compiled) => Some(compiled),
            Err(e) => {
                problems.in_route(route, "validate.openapi", e);
                None
            }
        }
    });
    let methods = match &config.methods {
        None => vec![Method::POST, Method::PUT, Method::PATCH],
        Some(names) => names
            .iter()
            .filter_map(|n| match Method::from_bytes(n.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    problems.in_route(route, "validate.methods", format!("`{n}` is not an HTTP method"));
                    None
                }
            })
            .collect(),
    };
    let content_types = config.content_types.as_ref().map(|list| {
        list.iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .inspect(|t| {
                if !t.contains('/') || t.contains(';') {
                    problems.in_route(
                        route,
                        "validate.content_types",
                        format!("`{t}` is not a media type such as application/json"),
                    );
                }
            })
            .collect()
    });
    let checks = JsonChecks::compile(
        base_dir,
        &JsonChecksConfig {
            schema: config.schema.as_ref(),
            schema_file: config.schema_file.as_deref(),
            max_depth: config.max_depth,
            max_string_length: config.max_string_length,
            max_array_length: config.max_array_length,
            rules: &config.rules,
        },
        route,
        problems,
        "validate",
    );
    let mode = mode_for(problems, route, protection::VALIDATION, config.mode, None);
    let rules_mode = if checks.rules.is_empty() {
        Mode::Enforce
    } else {
        mode_for(problems, route, protection::CONTENT_RULES, config.mode, None)
    };
    Some(RouteValidation {
        methods,
        content_types,
        checks,
        openapi,
        mode,
        rules_mode,
    })
}

/// Compiles every route's `validate`; none: no stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let upstreams = &cx.config.upstreams;
    let upstream_api = |name: &str| {
        upstreams
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| u.openapi.clone())
    };
    let apis: Vec<Option<openapi::OpenApiConfig>> = cx
        .routes()
        .iter()
        .map(|r| upstream_api(&r.config.upstream))
        .collect();
    if cx
        .routes()
        .iter()
        .zip(&apis)
        .all(|(r, api)| r.config.validate.is_none() && api.is_none())
    {
        return None;
    }
    let base_dir = cx.loaded.base_dir.clone();
    let mut index = 0;
    let slot = cx.per_route(|route, problems| {
        index += 1;
        compile_route(&base_dir, apis[index - 1].as_ref(), route, problems)
    });
    Some(Arc::new(ValidateStage {
        slot,
        enforcement: Enforcement::new(cx),
    }))
}

/// Whether the request has a body to check.
fn has_body(req: &Request<GatewayBody>) -> bool {
    match req.headers().get(http::header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() != b"0",
        None => !req.body().is_end_stream(),
    }
}

impl ValidateStage {
    /// The request's OpenAPI operation, or the answer for an undeclared one.
    fn operation<'v>(
        &self,
        cx: &RequestCx,
        v: &'v RouteValidation,
        api: &'v openapi::OpenApi,
        req: &Request<GatewayBody>,
    ) -> Result<Option<openapi::OpenApiOperation<'v>>, Box<StageResult>> {
        let path = cx.rewritten_path.as_deref().unwrap_or(req.uri().path());
        let path = path.split('?').next().unwrap_or(path);
        let (operation, path_known) = api.find(req.method(), path);
        let Some(operation) = operation else {
            if api.undeclared == openapi::Undeclared::Allow {
                return Ok(None);
            }
            let error = if path_known {
                GatewayError::MethodNotAllowed {
                    method: req.method().clone(),
                    allow: crate::stage::route::allow_header(&api.allowed(path)),
                }
            } else {
                GatewayError::NotFound
            };
            return Err(Box::new(self.enforcement.refuse(
                cx,
                v.mode,
                protection::VALIDATION,
                error,
            )));
        };
        let mut errors = Vec::new();
        operation.check_parameters(req.uri().query(), req.headers(), &mut errors, MAX_ERRORS);
        if !errors.is_empty() {
            let detail = "The request's parameters do not match the API's description.";
            return Err(Box::new(self.refuse(
                cx,
                v.mode,
                protection::VALIDATION,
                detail,
                errors,
            )));
        }
        Ok(Some(operation))
    }

    async fn check_json(
        &self,
        cx: &mut RequestCx,
        v: &RouteValidation,
        req: &mut Request<GatewayBody>,
        operation_schema: Option<&Schema>,
    ) -> StageResult {
        let bytes = crate::body::buffer(req, READ_CEILING).await?;
        let doc: Value = match serde_json::from_slice(&bytes) {
            Ok(doc) => doc,
            Err(e) => {
                let detail = if e.to_string().contains("recursion limit") {
                    "The body is nested too deeply to read."
                } else {
                    "The body is not valid JSON."
                };
                return self.enforcement.refuse(
                    cx,
                    v.mode,
                    protection::VALIDATION,
                    GatewayError::bad_request(detail),
                );
            }
        };
        let mut errors = Vec::new();
        v.checks.check_shape(&doc, operation_schema, &mut errors);
        if !errors.is_empty() {
            return self.refuse(
                cx,
                v.mode,
                protection::VALIDATION,
                "The body does not match what this route accepts.",
                errors,
            );
        }
        v.checks.check_rules(&doc, &mut errors);
        if !errors.is_empty() {
            return self.refuse(
                cx,
                v.rules_mode,
                protection::CONTENT_RULES,
                "The body breaks this route's content rules.",
                errors,
            );
        }
        Ok(Flow::Continue)
    }

    fn refuse(
        &self,
        cx: &RequestCx,
        mode: Mode,
        protection: &'static str,
        detail: &'static str,
        errors: Vec<FieldError>,
    ) -> StageResult {
        let error = GatewayError::Unprocessable {
            detail: detail.into(),
            errors,
        };
        self.enforcement.refuse(cx, mode, protection, error)
    }
}

impl Stage for ValidateStage {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn phases(&self) -> Phases {
        Phases::BODY
    }

    fn body<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let Some(v) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        let operation = match &v.openapi {
            None => None,
            Some(api) => match self.operation(cx, v, api, req) {
                Ok(operation) => operation,
                Err(result) => return Verdict::Ready(*result),
            },
        };
        if !v.methods.contains(req.method()) && operation.is_none() {
            return Verdict::CONTINUE;
        }
        let body_present = has_body(req);
        let media = media_type(req).filter(|_| body_present);
        if let Some(op) = &operation
            && let Err(problem) = op.accepts(media.as_deref(), body_present)
        {
            let error = match media {
                None if !body_present => GatewayError::Unprocessable {
                    detail: "This operation needs a request body.".into(),
                    errors: vec![FieldError {
                        pointer: String::new(),
                        detail: problem,
                    }],
                },
                _ => GatewayError::UnsupportedMediaType { allowed: problem },
            };
            return Verdict::Ready(self.enforcement.refuse(cx, v.mode, protection::VALIDATION, error));
        }
        let checks_body = v.methods.contains(req.method());
        if !has_body(req) {
            if v.checks.schema.is_some() && checks_body {
                let missing = vec![FieldError {
                    pointer: String::new(),
                    detail: "a JSON body is required".into(),
                }];
                return Verdict::Ready(self.refuse(
                    cx,
                    v.mode,
                    protection::VALIDATION,
                    "This route needs a JSON body.",
                    missing,
                ));
            }
            return Verdict::CONTINUE;
        }
        if let Some(allowed) = &v.content_types
            && !media.as_ref().is_some_and(|m| allowed.contains(m))
        {
            let error = GatewayError::UnsupportedMediaType {
                allowed: allowed.join(", "),
            };
            return Verdict::Ready(self.enforcement.refuse(cx, v.mode, protection::VALIDATION, error));
        }
        let body_schema = operation.as_ref().and_then(|op| op.body_schema());
        if media.as_deref().is_some_and(is_json) {
            return Verdict::Pending(Box::pin(self.check_json(cx, v, req, body_schema)));
        }
        // A schema, or content rules, check JSON: a body in another type
        // (or none declared) would pass unread.
        if (v.checks.schema.is_some() || !v.checks.rules.is_empty()) && checks_body {
            let error = GatewayError::UnsupportedMediaType {
                allowed: "application/json".into(),
            };
            return Verdict::Ready(self.enforcement.refuse(cx, v.mode, protection::VALIDATION, error));
        }
        Verdict::CONTINUE
    }
}
