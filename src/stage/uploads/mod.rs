//! Upload limits and malware scanning for `multipart/form-data` bodies,
//! per route (`uploads = { … }`), in the body phase:
//!
//! - how many files, how large each, how large all of them (413), which
//!   declared types (422), and whether each file's leading bytes agree with
//!   its declared type ([`sniff`]; an executable sent as `image/png` is
//!   refused);
//! - with `[clamav]`, every file is scanned by a ClamAV daemon over its
//!   `INSTREAM` protocol ([`clamav`]); an infected file is a 422 and an
//!   `upload.infected` audit event, and never reaches the upstream. A
//!   scanner that is down or fails refuses the upload with 503
//!   (`on_error = "closed"`, the default) or lets it through unscanned
//!   (`"open"`); `portcullis_upload_scans_total{result}` counts clean,
//!   infected and error.
//!
//! The body is read whole (within the route's `max_body`) and the upstream
//! receives the same bytes. Other content types pass untouched.

pub mod clamav;
pub mod sniff;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http::header::CONTENT_TYPE;
use serde::Deserialize;

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::config::ByteSize;
use crate::enforce::{Enforcement, Mode, mode_for, protection};
use crate::error::{FieldError, GatewayError};
use crate::pipeline::{Flow, Phases, RequestCx, Route, Slot, Stage, StageResult, Verdict};

pub use clamav::{ClamavConfig, Scanner};

/// A route's `uploads` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// Most files in one request (default 10).
    pub max_files: Option<usize>,
    /// Largest single file (default 10 MiB).
    pub max_file_size: Option<ByteSize>,
    /// Largest sum of all parts (default: the route's body limit).
    pub max_total_size: Option<ByteSize>,
    /// Declared media types a file may have; any when omitted. When set,
    /// each file's leading bytes must agree with its declared type.
    pub allowed_types: Option<Vec<String>>,
    /// Scan files with `[clamav]` (default true when `[clamav]` is set).
    pub scan: Option<bool>,
    /// `report`: let refused uploads through, counted and audited.
    pub mode: Option<Mode>,
}

const DEFAULT_MAX_FILES: usize = 10;
const DEFAULT_MAX_FILE: u64 = 10 << 20;
const READ_CEILING: u64 = 1 << 40;

pub struct RouteUploads {
    max_files: usize,
    max_file_size: u64,
    max_total_size: u64,
    allowed_types: Option<Vec<String>>,
    scan: bool,
    mode: Mode,
}

pub struct UploadsStage {
    slot: Slot<RouteUploads>,
    scanner: Option<Scanner>,
    audit: crate::audit::Audit,
    metrics: Arc<crate::metrics::Metrics>,
    enforcement: Enforcement,
}

/// Compiles `[clamav]` and every route's `uploads`; none: no stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let scanner = cx.config.clamav.as_ref().map(Scanner::new);
    if let Some(c) = &cx.config.clamav
        && (c.timeout.0.is_zero() || c.timeout.0 > std::time::Duration::from_secs(300))
    {
        cx.problems.at("clamav.timeout", "must be between 1ms and 5m");
    }
    if cx.routes().iter().all(|r| r.config.uploads.is_none()) {
        return None;
    }
    let has_scanner = scanner.is_some();
    let server_max = cx.config.server.max_body.0;
    let slot = cx.per_route(|route, problems| {
        let config = route.config.uploads.as_ref()?;
        let scan = config.scan.unwrap_or(has_scanner);
        if scan && !has_scanner {
            problems.in_route(route, "uploads.scan", "scanning needs a [clamav] table");
        }
        let max_files = config.max_files.unwrap_or(DEFAULT_MAX_FILES);
        if max_files == 0 || max_files > 1000 {
            problems.in_route(route, "uploads.max_files", "must be between 1 and 1000");
        }
        let body_max = route.config.max_body.map_or(server_max, |b| b.0);
        let allowed_types = config.allowed_types.as_ref().map(|list| {
            list.iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        });
        if let Some(list) = &allowed_types
            && let Some(bad) = list.iter().find(|t| !t.contains('/'))
        {
            problems.in_route(
                route,
                "uploads.allowed_types",
                format!("`{bad}` is not a media type such as image/png"),
            );
        }
        Some(RouteUploads {
            max_files,
            max_file_size: config.max_file_size.map_or(DEFAULT_MAX_FILE, |b| b.0),
            max_total_size: config.max_total_size.map_or(body_max, |b| b.0),
            allowed_types,
            scan,
            mode: mode_for(problems, route, protection::UPLOADS, config.mode, None),
        })
    });
    Some(Arc::new(UploadsStage {
        slot,
        scanner,
        audit: cx.runtime.audit.clone(),
        metrics: cx.runtime.metrics.clone(),
        enforcement: Enforcement::new(cx),
    }))
}

/// One file of a multipart body.
struct File {
    field: String,
    declared: String,
    data: Bytes,
}

fn multipart_boundary(req: &Request<GatewayBody>) -> Option<String> {
    let value = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    if !value
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return None;
    }
    multer::parse_boundary(value).ok()
}

fn field_error(field: &str, detail: impl Into<String>) -> GatewayError {
    GatewayError::Unprocessable {
        detail: "An uploaded file is not accepted here.".into(),
        errors: vec![FieldError {
            pointer: format!("/{}", crate::stage::validate::pointer_segment(field)),
            detail: detail.into(),
        }],
    }
}

/// Reads the parts of a complete multipart body, within the route's
/// limits: the files, and the other fields (scanned too).
async fn files(
    body: Bytes,
    boundary: String,
    limits: &RouteUploads,
) -> Result<(Vec<File>, Vec<File>), GatewayError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut files = Vec::new();
    let mut fields = Vec::new();
    let malformed = |_| GatewayError::bad_request("The multipart body is malformed.");
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field
            .name()
            .unwrap_or_default()
            .chars()
            .take(100)
            .collect::<String>();
        // multer knows `filename=` only as written; `FILENAME=` and RFC
        // 5987's `filename*=` are files to Go, Werkzeug and busboy, and so
        // is any part that declares a content type.
        let disposition = field
            .headers()
            .get(http::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let is_file =
            field.file_name().is_some() || disposition.contains("filename") || field.content_type().is_some();
        let declared = field
            .content_type()
            .map_or("application/octet-stream".to_string(), |m| {
                m.essence_str().to_ascii_lowercase()
            });
        let data = field.bytes().await.map_err(malformed)?;
        if !is_file {
            fields.push(File {
                field: name,
                declared: String::new(),
                data,
            });
            continue;
        }
        if files.len() == limits.max_files {
            return Err(field_error(
                &name,
                format!("more than {} files", limits.max_files),
            ));
        }
        if data.len() as u64 > limits.max_file_size {
            return Err(GatewayError::PayloadTooLarge {
                limit: limits.max_file_size,
            });
        }
        files.push(File {
            field: name,
            declared,
            data,
        });
    }
    Ok((files, fields))
}

impl UploadsStage {
    async fn check(
        &self,
        cx: &mut RequestCx,
        limits: &RouteUploads,
        req: &mut Request<GatewayBody>,
        boundary: String,
    ) -> StageResult {
        let body = match crate::body::buffer(req, READ_CEILING).await {
            Ok(body) => body,
            Err(e) => return Err(e),
        };
        if body.len() as u64 > limits.max_total_size {
            let error = GatewayError::PayloadTooLarge {
                limit: limits.max_total_size,
            };
            return self
                .enforcement
                .refuse(cx, limits.mode, protection::UPLOADS, error);
        }
        let (files, fields) = match files(body, boundary, limits).await {
            Ok(parts) => parts,
            Err(error) => {
                return self
                    .enforcement
                    .refuse(cx, limits.mode, protection::UPLOADS, error);
            }
        };
        for file in &files {
            if let Some(allowed) = &limits.allowed_types {
                let detail = if !allowed.contains(&file.declared) {
                    Some(format!("files of type {} are not accepted", file.declared))
                } else if !sniff::agrees(&file.declared, &file.data) {
                    Some(format!("the file's content is not {}", file.declared))
                } else {
                    None
                };
                if let Some(detail) = detail {
                    return self.enforcement.refuse(
                        cx,
                        limits.mode,
                        protection::UPLOADS,
                        field_error(&file.field, detail),
                    );
                }
            }
        }
        if limits.scan
            && let Some(scanner) = &self.scanner
        {
            for file in files.iter().chain(&fields) {
                if let Err(error) = self.scan(cx, scanner, file).await {
                    return self
                        .enforcement
                        .refuse(cx, limits.mode, protection::UPLOADS, error);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Scans one file: `Err` when it must be refused.
    async fn scan(&self, cx: &RequestCx, scanner: &Scanner, file: &File) -> Result<(), GatewayError> {
        match scanner.scan(&file.data).await {
            Ok(clamav::Verdict::Clean) => {
                self.metrics.upload_scan("clean");
                Ok(())
            }
            Ok(clamav::Verdict::Infected(signature)) => {
                self.metrics.upload_scan("infected");
                self.audit.emit(
                    crate::audit::Event::new("upload.infected", crate::audit::Severity::Warning)
                        .for_request(cx)
                        .detail("field", file.field.clone())
                        .detail("signature", signature.chars().take(200).collect::<String>())
                        .detail("size", file.data.len()),
                );
                Err(field_error(&file.field, "the file contains malware"))
            }
            Err(clamav::ScanError::TooLarge) => {
                self.metrics.upload_scan("error");
                Err(field_error(
                    &file.field,
                    "the file is larger than the malware scanner accepts",
                ))
            }
            Err(error) => {
                self.metrics.upload_scan("error");
                tracing::warn!(request_id = cx.request_id(), %error, "upload scan failed");
                match scanner.on_error {
                    clamav::OnScanError::Open => Ok(()),
                    clamav::OnScanError::Closed => Err(GatewayError::Unavailable(
                        "The upload could not be scanned for malware; try again later.".into(),
                    )),
                }
            }
        }
    }
}

impl Stage for UploadsStage {
    fn name(&self) -> &'static str {
        "uploads"
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
        let Some(limits) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        let Some(boundary) = multipart_boundary(req) else {
            return Verdict::CONTINUE;
        };
        Verdict::Pending(Box::pin(self.check(cx, limits, req, boundary)))
    }
}
