//! `processor decide`: one JSON document in, the decision the pipeline would emit out.
//!
//! Input (every key optional; defaults are the reference engine's):
//!
//! ```json
//! {"config": {"policy": "credit-greedy", "targetError": 0.15, "creditMin": -1, "creditMax": 1,
//!             "creditSensitivity": 0.33, "creditWindow": 300, "validFor": 60,
//!             "throttleMin": 0.05, "throttleIntensityFloor": 150, "throttleIntensityCeiling": 350,
//!             "precisionFeed": "commanded",
//!             "flavours": [{"name": "precision-100", "precision": 1.0, "carbonIntensity": 1.0}, ...],
//!             "components": {"router": {"minReplicas": 1, "maxReplicas": 15}}},
//!  "forecast": {"now": 180, "next": 200, "slots": [180, 200, 220], "slotEnd": "2025-11-18T12:30:00Z"},
//!  "ledger": {"balance": 0.0, "history": [[1763467807000, -0.05]]},
//!  "memory": {"cumulativeCarbon": 0.0, "evaluationCount": 0},
//!  "at": "2025-11-18T12:10:07Z", "version": 1}
//! ```
//!
//! Output: the reference's schedule contract (section 1.6, keys sorted) plus `version` and
//! `exactWeights`; `memory` holds the policy memory after the decision.

use carbonflow_schemas::records::InputPosition;
use carbonflow_schemas::time::{TimeError, parse_rfc3339_ms};
use carbonflow_schemas::vocabulary::DecisionCause;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::contract::reference_contract;
use crate::decide::{DecisionContext, Delivered, decide};
use crate::forecast::ForecastSnapshot;
use crate::ledger::{CreditLedger, QualityAccount};
use crate::policy::PolicyMemory;
use crate::spec::ScheduleSpec;
use crate::state::TELEMETRY_WINDOW_MS;
use crate::validate::{describe_problems, validate};

/// Why a dry run failed.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// The document is not valid JSON of the expected shape.
    #[error("input is not a valid decide document: {0}")]
    Parse(#[from] serde_json::Error),
    /// A time is not RFC 3339.
    #[error("{field}: {source}")]
    Time {
        /// The document key holding the time (`at`, `forecast.slotEnd`).
        field: &'static str,
        /// Why the text is not a time.
        #[source]
        source: TimeError,
    },
    /// The config breaks a rule.
    #[error("invalid config: {0}")]
    Config(String),
    /// The policy cannot decide.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The `config` object is not a schedule spec.
    #[error("config: {0}")]
    Spec(#[from] crate::spec::SpecError),
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    /// A [`ScheduleSpec`] plus an optional `schedule` id.
    config: Option<Value>,
    forecast: Option<ForecastDoc>,
    ledger: LedgerDoc,
    memory: MemoryDoc,
    delivered: DeliveredDoc,
    at: Option<String>,
    version: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ForecastDoc {
    now: Option<f64>,
    next: Option<f64>,
    slots: Vec<f64>,
    slot_end: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct LedgerDoc {
    balance: f64,
    history: Vec<(i64, f64)>,
}

/// What was delivered so far (carbon-optimal's account): answered requests, their surplus
/// over the promised precision (precision·requests), and the observed request rate.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct DeliveredDoc {
    requests: i64,
    surplus: f64,
    observed_rate: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct MemoryDoc {
    cumulative_carbon: f64,
    evaluation_count: i64,
}

fn parse_time(field: &'static str, value: &str) -> Result<i64, DryRunError> {
    parse_rfc3339_ms(value).map_err(|source| DryRunError::Time { field, source })
}

/// Run the dry run on a JSON document; returns the output document.
pub fn run(input: &str) -> Result<Value, DryRunError> {
    let doc: Document = serde_json::from_str(input)?;
    let at_ms = match &doc.at {
        Some(a) => parse_time("at", a)?,
        None => 0,
    };
    let mut config_doc = doc.config.unwrap_or_else(|| json!({}));
    let schedule = match config_doc
        .as_object_mut()
        .and_then(|m| m.remove("schedule"))
    {
        Some(Value::String(s)) => s,
        _ => "default/default".into(),
    };
    let spec = ScheduleSpec::from_value(config_doc)?;
    let mut config = spec.to_config(&schedule, 1, at_ms);
    config.zone = "dry-run".into();
    // A dry run routes nothing; flavours may omit their upstream.
    for f in config
        .flavours
        .iter_mut()
        .filter(|f| f.upstream_url.is_empty())
    {
        f.upstream_url = "http://dry-run".into();
    }
    let config = validate(&config).map_err(|p| DryRunError::Config(describe_problems(&p)))?;
    let mut forecast = ForecastSnapshot::default();
    if let Some(f) = doc.forecast {
        forecast = ForecastSnapshot::from_values(f.now, f.next, f.slots);
        if let Some(end) = f.slot_end {
            forecast.current_slot_end_ms = Some(parse_time("forecast.slotEnd", &end)?);
        }
    }
    let mut ledger = CreditLedger::with_history(doc.ledger.balance, doc.ledger.history);
    let mut memory = PolicyMemory {
        cumulative_carbon: doc.memory.cumulative_carbon,
        evaluation_count: doc.memory.evaluation_count,
    };
    let ctx = DecisionContext {
        config: &config,
        forecast: &forecast,
        forecast_used: None,
        manual: None,
        at_ms,
        version: doc.version.unwrap_or(1),
        epoch: 0,
        cause: DecisionCause::DryRun,
        input: InputPosition {
            topic: "stdin".into(),
            partition: 0,
            offset: 0,
        },
        telemetry_window: None,
        delivered: Delivered {
            quality: QualityAccount {
                requests: doc.delivered.requests,
                surplus: doc.delivered.surplus,
                since_ms: 0,
            },
            observed_rate: doc.delivered.observed_rate,
            window_seconds: TELEMETRY_WINDOW_MS as f64 / 1000.0,
        },
    };
    let decision = decide(&ctx, &mut ledger, &mut memory)?;
    let mut out = reference_contract(&decision);
    out["memory"] = json!({"cumulativeCarbon": memory.cumulative_carbon, "evaluationCount": memory.evaluation_count});
    Ok(out)
}
