//! The reference engine's JSON contract of a decision (its section 1.6): what its
//! routers and dashboards read, reproduced key for key so that a consumer written for the
//! reference reads ours unchanged. Where our meaning differs, ours is under its own key
//! and the reference's key keeps the reference's meaning.

use std::collections::BTreeMap;

use carbonflow_schemas::records::ScheduleDecision;
use carbonflow_schemas::time::format_rfc3339_ms;
use serde_json::{Value, json};

/// The reference engine's schedule JSON (section 1.6) for a decision, plus `version` and
/// `exactWeights`. Keys come out sorted (serde_json's map), as Flask sorts them.
pub fn reference_contract(d: &ScheduleDecision) -> Value {
    let flavour_weights: BTreeMap<&str, i32> = d
        .flavours
        .iter()
        .filter(|f| f.weight > 0.0)
        .map(|f| (f.name.as_str(), f.weight_percent))
        .collect();
    let exact: BTreeMap<&str, f64> = d
        .flavours
        .iter()
        .map(|f| (f.name.as_str(), f.weight))
        .collect();
    let diagnostics: BTreeMap<&str, Option<f64>> = d
        .diagnostics
        .iter()
        .map(|x| (x.name.as_ref(), x.value))
        .collect();
    let ceilings: BTreeMap<&str, i32> = d
        .processing
        .ceilings
        .iter()
        .map(|c| (c.component.as_str(), c.replicas))
        .collect();
    let mut credits = json!({
        "balance": d.credits.balance, "velocity": d.credits.velocity, "target": d.credits.target,
        "min": d.credits.min, "max": d.credits.max,
    });
    if let Some(a) = d.credits.allowance {
        credits["allowance"] = json!(a);
    }
    json!({
        "avgPrecision": d.avg_precision,
        "credits": credits,
        "diagnostics": diagnostics,
        "flavourWeights": flavour_weights,
        "exactWeights": exact,
        "flavours": d.flavours.iter().map(|f| json!({
            "name": f.name, "precision": f.precision_percent, "weight": f.weight_percent,
            "carbonIntensity": f.relative_energy, "enabled": f.enabled,
        })).collect::<Vec<_>>(),
        "policy": {"name": d.policy},
        "processing": {
            "throttle": d.processing.throttle, "creditsRatio": d.processing.credits_ratio,
            "intensityRatio": d.processing.intensity_ratio, "ceilings": ceilings,
        },
        "validUntil": format_rfc3339_ms(d.valid_until_ms),
        "version": d.version,
    })
}
