//! Scenario files (reference section 5.3) and the forecasts a replay of one publishes.
//!
//! Accepted shapes:
//! * a bare array of intensities: `[120, 150, 180]`;
//! * an object with `pattern` (and optional `repeat`, default true, plus ignored keys
//!   such as `name`, `description`, `metadata`) — the mock's files and the 24-point
//!   profiles;
//! * an object whose `pattern` lists `{"time": seconds, "intensity": g}` points (the
//!   autoscaling scenario), with `interval_seconds` as its slot length.
//!
//! Timestamps come only from the replay's start time, slot length and speed-up, never
//! from the clock of the moment, so a replay from the same start produces identical
//! records.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carbonflow_schemas::records::{Forecast, ForecastPoint};
use serde_json::Value;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading scenario {file}: {source}")]
    Read {
        /// Path of the scenario file, as given.
        file: PathBuf,
        /// The I/O error reading it.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("scenario {file} is not JSON: {source}")]
    Json {
        /// Path of the scenario file, as given.
        file: PathBuf,
        /// The JSON parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The shape or a value is wrong.
    #[error("scenario {file}: {field} {rule}")]
    Invalid {
        /// Path of the scenario file, as given.
        file: PathBuf,
        /// Where, e.g. `pattern[3]`.
        field: String,
        /// What was expected.
        rule: String,
    },
}

/// A loaded scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name (the file's `name`/`scenario`, else its stem).
    pub name: String,
    /// Intensity per slot, gCO2/kWh.
    pub values: Vec<f64>,
    /// Whether the pattern repeats after its end (else the last value holds).
    pub repeat: bool,
    /// Slot length the file itself states (time/intensity lists), if any.
    pub slot: Option<Duration>,
}

impl Scenario {
    /// Load and check a scenario file.
    pub fn load(file: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(file).map_err(|source| ScenarioError::Read {
            file: file.into(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ScenarioError::Json {
            file: file.into(),
            source,
        })?;
        let stem = file
            .file_stem()
            .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
        Self::from_value(&value, &stem).map_err(|(field, rule)| ScenarioError::Invalid {
            file: file.into(),
            field,
            rule,
        })
    }

    /// Read a scenario from JSON; errors are `(field, rule)`.
    pub fn from_value(value: &Value, default_name: &str) -> Result<Self, (String, String)> {
        let bad = |field: String, rule: &str| (field, rule.to_string());
        let (pattern, object) = match value {
            Value::Array(a) => (a, None),
            Value::Object(o) => match o.get("pattern") {
                Some(Value::Array(a)) => (a, Some(o)),
                _ => return Err(bad("pattern".into(), "must be an array of intensities")),
            },
            _ => {
                return Err(bad(
                    "(top level)".into(),
                    "must be an array of intensities or an object with a pattern",
                ));
            }
        };
        if pattern.is_empty() {
            return Err(bad("pattern".into(), "must not be empty"));
        }
        let mut values = Vec::with_capacity(pattern.len());
        let mut times = Vec::new();
        for (i, v) in pattern.iter().enumerate() {
            let (g, field) = match v {
                Value::Object(p) => {
                    times.push(p.get("time").and_then(Value::as_f64));
                    (p.get("intensity"), format!("pattern[{i}].intensity"))
                }
                other => (Some(other), format!("pattern[{i}]")),
            };
            match g.and_then(Value::as_f64) {
                Some(g) if g.is_finite() && g >= 0.0 => values.push(g),
                _ => {
                    return Err(bad(
                        field,
                        &format!(
                            "must be a non-negative number of gCO2/kWh, got {}",
                            g.map_or("nothing".into(), Value::to_string)
                        ),
                    ));
                }
            }
        }
        let name = object
            .and_then(|o| o.get("name").or_else(|| o.get("scenario")))
            .and_then(Value::as_str)
            .unwrap_or(default_name)
            .to_string();
        let repeat = match object.and_then(|o| o.get("repeat")) {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("repeat".into(), "must be true or false")),
        };
        let slot = if times.is_empty() {
            None
        } else {
            let secs = object
                .and_then(|o| o.get("interval_seconds"))
                .and_then(Value::as_f64)
                .or_else(|| match (times.first(), times.get(1)) {
                    (Some(Some(a)), Some(Some(b))) if b > a => Some(b - a),
                    _ => None,
                });
            match secs {
                Some(s) if s > 0.0 => Some(Duration::from_secs_f64(s)),
                _ => {
                    return Err(bad(
                        "interval_seconds".into(),
                        "must be a positive number of seconds when the pattern lists time points",
                    ));
                }
            }
        };
        Ok(Self {
            name,
            values,
            repeat,
            slot,
        })
    }

    /// Intensity of slot `i` (repeating, or holding the last value).
    pub fn value(&self, i: usize) -> f64 {
        if self.repeat {
            self.values[i % self.values.len()]
        } else {
            self.values[i.min(self.values.len() - 1)]
        }
    }

    /// The forecast issued at the start of slot `k`: slots `k .. k + horizon`, slot `i`
    /// spanning `[start + i·slot, start + (i+1)·slot)`.
    pub fn forecast(
        &self,
        zone: &str,
        start_ms: i64,
        slot_ms: i64,
        k: usize,
        horizon: usize,
    ) -> Forecast {
        let at = |i: usize| start_ms + i as i64 * slot_ms;
        Forecast {
            zone: zone.to_string(),
            issuer: format!("scenario:{}", self.name),
            issued_at_ms: at(k),
            points: (k..k + horizon.max(1))
                .map(|i| {
                    let g = self.value(i);
                    ForecastPoint {
                        start_ms: at(i),
                        end_ms: at(i + 1),
                        g_per_kwh: g,
                        index: Some(index_label(g).into()),
                    }
                })
                .collect(),
            demand: None,
        }
    }
}

/// The mock API's index labels (reference section 5.2).
pub fn index_label(g: f64) -> &'static str {
    match g {
        g if g < 100.0 => "very low",
        g if g < 150.0 => "low",
        g if g < 200.0 => "moderate",
        g if g < 300.0 => "high",
        _ => "very high",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_reference_shape_loads() {
        let bare = Scenario::from_value(&json!([120, 150]), "bare").expect("bare");
        assert_eq!(
            (bare.values.clone(), bare.repeat),
            (vec![120.0, 150.0], true)
        );
        let object = Scenario::from_value(
            &json!({"scenario": "x", "repeat": false, "pattern": [40, 45], "description": "d"}),
            "f",
        )
        .expect("object");
        assert_eq!((object.name.as_str(), object.repeat), ("x", false));
        let profile = Scenario::from_value(
            &json!({"name": "UK", "pattern": [45, 42], "metadata": {"interval": "30min"}}),
            "f",
        )
        .expect("profile");
        assert_eq!(profile.name, "UK");
        let timed = Scenario::from_value(
            &json!({"interval_seconds": 5, "pattern": [{"time": 0, "intensity": 280}, {"time": 5, "intensity": 285}]}),
            "auto",
        )
        .expect("timed");
        assert_eq!(timed.values, vec![280.0, 285.0]);
        assert_eq!(timed.slot, Some(Duration::from_secs(5)));
    }

    #[test]
    fn bad_values_are_named_with_their_index() {
        let e = Scenario::from_value(&json!([1, -5]), "f").expect_err("negative");
        assert_eq!(e.0, "pattern[1]");
        let e = Scenario::from_value(&json!({"pattern": [1, "x"]}), "f").expect_err("text");
        assert_eq!(e.0, "pattern[1]");
        assert!(e.1.contains("\"x\""), "{}", e.1);
        let e = Scenario::from_value(&json!({"pattern": [{"time": 0}]}), "f").expect_err("missing");
        assert_eq!(e.0, "pattern[0].intensity");
    }

    #[test]
    fn forecasts_are_a_function_of_start_slot_and_step() {
        let s = Scenario::from_value(&json!({"repeat": false, "pattern": [100, 200, 300]}), "s")
            .expect("s");
        let f = s.forecast("GB", 1_000_000, 15_000, 2, 3);
        assert_eq!(f.issued_at_ms, 1_030_000);
        let v: Vec<f64> = f.points.iter().map(|p| p.g_per_kwh).collect();
        assert_eq!(v, vec![300.0, 300.0, 300.0], "holds the last value");
        assert_eq!(f.points[1].start_ms, 1_045_000);
        assert_eq!(
            f,
            s.forecast("GB", 1_000_000, 15_000, 2, 3),
            "deterministic"
        );
        assert_eq!(f.points[0].index.as_deref(), Some("very high"));
    }
}
