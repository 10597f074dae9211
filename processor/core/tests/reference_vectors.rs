//! The reference's worked examples (sections 1.6, 3.1–3.3, 4.1) through `processor
//! decide`'s document interface, compared number for number.

use carbonflow_core::dry_run::run;
use serde_json::{Value, json};

fn decide(doc: Value) -> Value {
    run(&doc.to_string()).unwrap_or_else(|e| panic!("decide failed: {e}"))
}

fn worked_example(policy: &str, now: f64, next: f64, slots: Vec<f64>) -> Value {
    decide(json!({
        "config": {"policy": policy, "precisionFeed": "commanded", "components": {
            "router": {"minReplicas": 1, "maxReplicas": 15},
            "consumer": {"minReplicas": 1, "maxReplicas": 12},
            "target": {"minReplicas": 1, "maxReplicas": 12}}},
        "forecast": {"now": now, "next": next, "slots": slots, "slotEnd": "2025-11-18T12:30:00Z"},
        "at": "2025-11-18T12:10:07Z"
    }))
}

fn weights(out: &Value) -> Vec<i64> {
    ["precision-100", "precision-50", "precision-30"]
        .iter()
        .map(|f| out["flavourWeights"][f].as_i64().unwrap_or(0))
        .collect()
}

#[test]
fn section_1_6_and_4_1_credit_greedy_decision() {
    let out = worked_example(
        "credit-greedy",
        180.0,
        200.0,
        vec![180.0, 200.0, 220.0, 240.0, 260.0, 280.0],
    );
    assert_eq!(out["avgPrecision"], json!(0.6486111111111111));
    assert_eq!(
        out["credits"],
        json!({"allowance": 0.575, "balance": -0.06645833333333333, "max": 1.0,
        "min": -1.0, "target": 0.15, "velocity": -0.06645833333333333})
    );
    assert_eq!(
        out["diagnostics"],
        json!({"allowance": 0.575, "avg_precision": 0.6486111111111111,
        "base_allowance": 0.5, "carbon_multiplier": 1.15, "carbon_now": 180.0, "carbon_ratio": 0.5,
        "credit_balance": 0.0, "normalised_credit": 0.5})
    );
    assert_eq!(
        out["flavourWeights"],
        json!({"precision-100": 42, "precision-30": 32, "precision-50": 26})
    );
    assert_eq!(
        out["processing"],
        json!({"ceilings": {"consumer": 8, "router": 10, "target": 8},
        "creditsRatio": 0.46677083333333336, "intensityRatio": 0.75, "throttle": 0.6367083333333333})
    );
    assert_eq!(out["validUntil"], json!("2025-11-18T12:11:07Z"));
    assert_eq!(
        out["flavours"][0],
        json!({"carbonIntensity": 1.0, "enabled": true, "name": "precision-100",
        "precision": 100, "weight": 42})
    );
    assert_eq!(
        out["exactWeights"]["precision-100"],
        json!(0.42500000000000004)
    );
}

#[test]
fn section_3_1_credit_greedy_at_60_and_300() {
    assert_eq!(
        weights(&worked_example("credit-greedy", 60.0, 60.0, vec![60.0])),
        vec![85, 7, 8]
    );
    assert_eq!(
        weights(&worked_example("credit-greedy", 300.0, 300.0, vec![300.0])),
        vec![5, 42, 53]
    );
}

#[test]
fn section_3_2_forecast_aware_rising() {
    let out = worked_example("forecast-aware", 180.0, 200.0, vec![180.0, 200.0]);
    assert_eq!(weights(&out), vec![46, 24, 30]);
    assert!(
        (out["diagnostics"]["adjustment"].as_f64().expect("adj") + 0.027777777777777776).abs()
            < 1e-15
    );
    assert_eq!(out["diagnostics"]["trend"], json!(20.0));
}

#[test]
fn section_3_3_forecast_aware_global_three_examples() {
    let out = worked_example(
        "forecast-aware-global",
        180.0,
        200.0,
        vec![180.0, 200.0, 220.0, 240.0, 260.0, 280.0],
    );
    assert_eq!(weights(&out), vec![42, 26, 32], "dead band");
    let out = worked_example(
        "forecast-aware-global",
        300.0,
        300.0,
        vec![300.0, 300.0, 290.0, 280.0, 270.0, 260.0],
    );
    assert_eq!(weights(&out), vec![1, 44, 55]);
    assert_eq!(out["memory"]["evaluationCount"], json!(1));
    let out = worked_example(
        "forecast-aware-global",
        60.0,
        60.0,
        vec![60.0, 55.0, 50.0, 55.0, 60.0, 70.0],
    );
    assert_eq!(weights(&out), vec![98, 1, 1]);
}

#[test]
fn section_4_1_green_override_then_opportunity_shift() {
    // now 100 (intensity ratio 1 → override to 1.0), but a slot at 50 ahead: 100/50 = 2 → 0.5.
    let out = decide(json!({
        "config": {"precisionFeed": "commanded"},
        "forecast": {"now": 100, "next": 100, "slots": [100, 80, 50]},
        "at": "2025-11-18T12:10:07Z"
    }));
    assert_eq!(out["processing"]["intensityRatio"], json!(1.0));
    assert_eq!(out["processing"]["throttle"], json!(0.5));
}

#[test]
fn missing_forecast_means_no_throttling_and_validity_of_valid_for() {
    let out = decide(json!({"at": "2025-11-18T12:10:07.900Z"}));
    assert_eq!(out["processing"]["throttle"], json!(1.0));
    assert_eq!(
        out["validUntil"],
        json!("2025-11-18T12:11:07Z"),
        "sub-seconds truncated"
    );
}

#[test]
fn invalid_config_is_refused_naming_the_field() {
    let err = run(&json!({"config": {"creditMin": 2.0}}).to_string())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("credit_min") && err.contains("credit_max"),
        "{err}"
    );
    let err = run(&json!({"config": {"policy": "greedy"}}).to_string())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("policy") && err.contains("credit-greedy"),
        "{err}"
    );
}
