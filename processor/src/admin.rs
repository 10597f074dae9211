//! The admin HTTP API, compatible with the reference engine's (section 8.1), plus health,
//! readiness, per-schedule state, `/metrics` and the status page (`/`, see [`crate::status`]).
//!
//! Writes never change state directly: `PUT /config` and `POST .../manual` validate what
//! they can and publish a record to `schedule.config`; the owning processor applies it
//! like any other input, so the journal stays the only source of truth. Every error is a
//! JSON body naming the problem.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use carbonflow_schemas::CodecError;
use carbonflow_schemas::bus::{RecordProducer, TopicLayout};
use carbonflow_schemas::records::{
    ConfigCommand, FieldProblem, FlavourWeight, ManualOverride, OverrideCancellation,
};
use carbonflow_schemas::service::{METRICS_CONTENT_TYPE, metrics_text, now_ms};
use carbonflow_schemas::upstream::AllowList;
use carbonflow_schemas::vocabulary::ScheduleId;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use carbonflow_core::contract::reference_contract;
use carbonflow_core::issued::IssuedDecision;
use carbonflow_core::spec::ScheduleSpec;
use carbonflow_core::validate::{validate, validate_override};

use crate::access::{AdminToken, guard_commands, json_errors};
use crate::status::StatusDocument;
use crate::view::ProcessorView;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The pipeline's view.
    pub view: Arc<ProcessorView>,
    /// Producer for config records.
    pub producer: RecordProducer,
    /// Topic names.
    pub layout: TopicLayout,
    /// Prometheus exporter handle.
    pub metrics: PrometheusHandle,
    /// The token requests that publish commands must carry (`None`: loopback only).
    pub token: Option<AdminToken>,
    /// Where flavour upstreams may be (the gate's allow-list, checked here first so
    /// that the caller hears of it).
    pub upstreams: AllowList,
}

/// The routes: reading is open, publishing commands goes through
/// [`guard_commands`], and every error answer is JSON.
pub fn router(state: AdminState) -> Router {
    let commands = Router::new()
        .route(
            "/schedule/{ns}/{name}/manual",
            post(post_manual).delete(delete_manual),
        )
        .route("/config/{ns}/{name}", put(put_config))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            guard_commands,
        ));
    Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_document))
        .route("/schedule", get(list_schedules))
        .route("/schedule/{ns}/{name}", get(get_schedule))
        .route("/schedule/{ns}/{name}/state", get(get_state))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(commands)
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

/// Serve on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// JSON with a status code.
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self.0)).into_response()
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The `{ns}/{name}` of a request path as a schedule id; a path that is not one is
/// answered 400 naming what is wrong with it.
struct SchedulePath(ScheduleId);

impl<S: Send + Sync> FromRequestParts<S> for SchedulePath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path((ns, name)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        ScheduleId::new(&ns, &name).map(SchedulePath).map_err(|e| {
            reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_schedule", "detail": e.to_string()}),
            )
        })
    }
}

/// 400 body listing every field problem.
fn invalid(error: &str, problems: &[FieldProblem]) -> Response {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "problems": problems.iter().map(|p| json!({"field": p.field, "rule": p.rule})).collect::<Vec<_>>()}),
    )
}

/// 404 body for a schedule this instance does not hold, saying who would.
fn unknown(state: &AdminState, id: &ScheduleId) -> Response {
    let mut body = json!({"error": format!("unknown schedule {id}")});
    body["hint"] = json!(format!(
        "this processor ({}) owns schedule partitions {:?}; schedules of other partitions are served by their owner",
        state.view.ownership(),
        state.view.partitions()
    ));
    reply(StatusCode::NOT_FOUND, body)
}

async fn list_schedules(State(state): State<AdminState>) -> Response {
    let mut all = Vec::new();
    for issued in state.view.decisions() {
        let d = match issued.decode() {
            Ok(d) => d,
            Err(e) => return undecodable(&issued, &e),
        };
        let mut v = reference_contract(&d);
        v["schedule"] = json!(d.schedule);
        all.push(v);
    }
    reply(StatusCode::OK, json!({ "schedules": all }))
}

/// The answer when a kept decision's record does not decode. The processor wrote the
/// record itself, so this is its own fault: 500, naming the decision.
fn undecodable(issued: &IssuedDecision, e: &CodecError) -> Response {
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({
            "error": "undecodable_decision",
            "detail": format!("the latest decision (version {}) kept for this schedule does not decode: {e}; expected a ScheduleDecision record", issued.version()),
        }),
    )
}

async fn get_schedule(State(state): State<AdminState>, SchedulePath(id): SchedulePath) -> Response {
    match state.view.decision(id.as_str()) {
        Some(issued) => match issued.decode() {
            Ok(d) => reply(StatusCode::OK, reference_contract(&d)),
            Err(e) => undecodable(&issued, &e),
        },
        None if state.view.summary(id.as_str()).is_some() => {
            reply(StatusCode::ACCEPTED, json!({"status": "pending"}))
        }
        None => unknown(&state, &id),
    }
}

async fn get_state(State(state): State<AdminState>, SchedulePath(id): SchedulePath) -> Response {
    match state.view.summary(id.as_str()) {
        Some(s) => reply(StatusCode::OK, json!(s)),
        None => unknown(&state, &id),
    }
}

async fn status_page() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::status::PAGE,
    )
        .into_response()
}

async fn status_document(State(state): State<AdminState>) -> Response {
    reply(StatusCode::OK, json!(StatusDocument::of(&state.view)))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.view.is_ready() {
        reply(StatusCode::OK, json!({"status": "ready"}))
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "restoring", "detail": "partitions are being restored from the journal"}),
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics_text(&state.metrics, state.view.lag()),
    )
        .into_response()
}

fn parse_json(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_json", "detail": format!("body must be a JSON object: {e}")}),
        ))
    })
}

async fn publish(state: &AdminState, command: ConfigCommand) -> Result<(), Response> {
    state
        .producer
        .publish_config(&state.layout, &command)
        .await
        .map(|_| ())
        .map_err(|e| {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "publish_failed", "detail": e.to_string()}),
            )
        })
}

async fn put_config(
    State(state): State<AdminState>,
    SchedulePath(id): SchedulePath,
    body: Bytes,
) -> Response {
    let value = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let spec = match ScheduleSpec::from_value(value) {
        Ok(s) => s,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_config", "detail": e.to_string()}),
            );
        }
    };
    // Versions must increase; the wall clock does, and the version in force (when this
    // instance owns the schedule) bounds it from below.
    let in_force = state
        .view
        .summary(id.as_str())
        .map_or(0, |s| s.config_version);
    let now = now_ms();
    let config = spec.to_config(id.as_str(), now.max(in_force + 1), now);
    if let Err(problems) = validate(&config) {
        return invalid("invalid_config", &problems);
    }
    let not_allowed: Vec<FieldProblem> = config
        .flavours
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let refusal = state.upstreams.check_url(&f.upstream_url).err()?;
            Some(FieldProblem {
                field: format!("flavours[{i}].upstream_url"),
                rule: format!("must be an allowed upstream: {}", refusal.rule),
            })
        })
        .collect();
    if !not_allowed.is_empty() {
        return invalid("invalid_config", &not_allowed);
    }
    let version = config.config_version;
    match publish(&state, ConfigCommand::Config(Box::new(config))).await {
        Ok(()) => reply(
            StatusCode::ACCEPTED,
            json!({"status": "accepted", "configVersion": version}),
        ),
        Err(r) => r,
    }
}

/// Body of `POST /schedule/{ns}/{name}/manual`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ManualBody {
    /// Weight per flavour (proportional).
    weights: std::collections::BTreeMap<String, f64>,
    /// Lifetime in seconds (default: the reference's max(1, validFor) = 60).
    #[serde(default = "default_ttl")]
    ttl_seconds: i64,
    /// Operator's free-text reason, copied into the override record for audit.
    #[serde(default)]
    reason: Option<String>,
}

fn default_ttl() -> i64 {
    60
}

async fn post_manual(
    State(state): State<AdminState>,
    SchedulePath(id): SchedulePath,
    body: Bytes,
) -> Response {
    let value = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let body: ManualBody = match serde_json::from_value(value) {
        Ok(b) => b,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_override", "detail": format!("expected {{\"weights\": {{flavour: weight}}, \"ttlSeconds\": n, \"reason\": text}}: {e}")}),
            );
        }
    };
    let o = ManualOverride {
        schedule: id.to_string(),
        issued_at_ms: now_ms(),
        ttl_seconds: body.ttl_seconds,
        weights: body
            .weights
            .into_iter()
            .map(|(flavour, weight)| FlavourWeight { flavour, weight })
            .collect(),
        reason: body.reason,
    };
    // What the override says on its own; the owner checks the rest (flavours enabled in
    // the config in force, expiry at its event time) and answers on schedule.rejections.
    if let Err(problems) = validate_override(&o, None, None) {
        return invalid("invalid_override", &problems);
    }
    match publish(&state, ConfigCommand::Override(o)).await {
        Ok(()) => reply(StatusCode::ACCEPTED, json!({"status": "schedule set"})),
        Err(r) => r,
    }
}

/// `DELETE /schedule/{ns}/{name}/manual`: end the override now. Published like every
/// command; the owner applies it in order with the schedule's other commands, and ending
/// an override that is not in force changes nothing.
async fn delete_manual(
    State(state): State<AdminState>,
    SchedulePath(id): SchedulePath,
) -> Response {
    let cancel = OverrideCancellation {
        schedule: id.to_string(),
        issued_at_ms: now_ms(),
        reason: None,
    };
    match publish(&state, ConfigCommand::CancelOverride(cancel)).await {
        Ok(()) => reply(StatusCode::ACCEPTED, json!({"status": "override ending"})),
        Err(r) => r,
    }
}
