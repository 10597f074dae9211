//! Who may call what on the admin API. Reading (`/healthz`, `/readyz`, `/metrics`, the
//! status page, schedules) is open; every request that publishes a command (`PUT
//! /config/...`, `POST` and `DELETE .../manual`) must carry the bearer token when one is
//! set, be `application/json` when it has a body, and carry no `Origin` but the API's own
//! (a page in the operator's browser cannot forge one). The processor refuses to listen
//! beyond loopback without a token (see `main`).
//!
//! Also here: every error answer is JSON, axum's own (404, 405, 413, 415) included.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

/// The secret mutating requests present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the admin token {0}: expected at least 16 characters without spaces")]
pub struct TokenError(&'static str);

impl AdminToken {
    /// A token from its text (surrounding whitespace, such as a file's final newline, is
    /// not part of it).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError("is empty"));
        }
        if t.len() < 16 {
            return Err(TokenError("is too short"));
        }
        if t.chars().any(char::is_whitespace) {
            return Err(TokenError("contains whitespace"));
        }
        Ok(Self(t.into()))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        presented.ct_eq(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn refuse(status: StatusCode, error: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "detail": detail})),
    )
        .into_response()
}

/// Whether `headers` carry an `Origin` other than the API's own (`http://<Host>`).
fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"));
    origin.to_str().ok() != own.as_deref()
}

/// Whether the `Host` header names a loopback address (with or without a port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware of the routes that publish commands.
pub(crate) async fn guard_commands(
    State(token): State<Option<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(token) = &token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| token.matches(p.as_bytes())) {
            let mut r = refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this request changes schedules: send `Authorization: Bearer <token>` with the token the processor was started with (--admin-token-file)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    // Without a token the API listens on loopback only; a page whose name was made to
    // resolve to 127.0.0.1 (DNS rebinding) still sends its own name as Host.
    if token.is_none() && !loopback_host(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "foreign_host",
            "without an admin token, requests that change schedules must address the API as localhost, 127.0.0.1 or [::1]",
        );
    }
    if foreign_origin(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "foreign_origin",
            "requests that change schedules are not accepted from another site's pages",
        );
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if has_body && !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        );
    }
    next.run(request).await
}

/// Error answers that are not JSON yet (axum's own rejections and fallbacks) become
/// `{"error": ..., "detail": ...}` with the same status.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let error = status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "_");
    let detail = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such endpoint".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take this method".into(),
            _ => error.clone(),
        }
    } else {
        text
    };
    let mut r = (
        status,
        axum::Json(json!({"error": error, "detail": detail})),
    )
        .into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            r.headers_mut().append(name, value.clone());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("header"));
        h
    }

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        for ok in [
            "127.0.0.1:9400",
            "localhost:9400",
            "[::1]:9400",
            "localhost",
        ] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for bad in ["rebind.evil:9400", "10.0.0.1:9400", "[fe80::1]:9400"] {
            assert!(!loopback_host(&with_host(bad)), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        let t = AdminToken::new("correct-horse-battery-staple\n").expect("token");
        assert!(t.matches(b"correct-horse-battery-staple"));
        assert!(!t.matches(b"correct-horse-battery-stapl"));
        assert!(AdminToken::new("short").is_err());
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }
}
