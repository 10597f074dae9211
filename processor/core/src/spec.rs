//! The schedule spec users write (JSON from the admin API, YAML from `ingest config
//! apply`, the `config` object of `processor decide`) and its conversion to the
//! [`ScheduleConfig`] record.
//!
//! Keys are the reference engine's (section 1.3: `targetError`, `creditMin`, ...), either
//! at top level or under `scheduler` as in the reference's CR, plus what carbonflow adds:
//! `zone`, `precisionFeed`, `onExpiry`, flavour upstreams and fallback rules. Numbers
//! may be written as strings, as the reference's CR does (`targetError: "0.15"`).
//! Unknown keys are refused so that a typo never silently keeps a default.

use std::collections::BTreeMap;

use carbonflow_schemas::records::{
    Annotation, ComponentBounds, ExpiryBehaviour, FallbackRule, Flavour, PrecisionFeed,
    ScheduleConfig,
};
use serde::{Deserialize, Deserializer};

/// A schedule spec; every key optional, defaults are the reference engine's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Policy name.
    pub policy: String,
    /// Forecast zone whose forecasts drive this schedule.
    pub zone: String,
    /// Allowed mean error, fraction.
    #[serde(deserialize_with = "number")]
    pub target_error: f64,
    /// Ledger lower bound.
    #[serde(deserialize_with = "number")]
    pub credit_min: f64,
    /// Ledger upper bound.
    #[serde(deserialize_with = "number")]
    pub credit_max: f64,
    /// Scale of one ledger delta.
    #[serde(deserialize_with = "number")]
    pub credit_sensitivity: f64,
    /// Velocity window, seconds.
    #[serde(deserialize_with = "integer")]
    pub credit_window: i64,
    /// Decision validity, seconds.
    #[serde(deserialize_with = "integer")]
    pub valid_for: i64,
    /// Kept for compatibility with the reference (unused there too).
    #[serde(deserialize_with = "integer")]
    pub discovery_interval: i64,
    /// Reference key naming the forecast region; accepted as an alias of `zone`.
    pub carbon_target: Option<String>,
    /// Forecast adapter timeout, seconds.
    #[serde(deserialize_with = "number")]
    pub carbon_timeout: f64,
    /// Forecast adapter poll interval, seconds.
    #[serde(rename = "carbonCacheTTL", deserialize_with = "number")]
    pub carbon_cache_ttl: f64,
    /// Lowest throttle factor.
    #[serde(deserialize_with = "number")]
    pub throttle_min: f64,
    /// gCO2/kWh at or below which throttling stops.
    #[serde(deserialize_with = "number")]
    pub throttle_intensity_floor: f64,
    /// gCO2/kWh at or above which throttling is strongest.
    #[serde(deserialize_with = "number")]
    pub throttle_intensity_ceiling: f64,
    /// Blend factor towards the intensity ratio.
    #[serde(deserialize_with = "number")]
    pub throttle_green_blend: f64,
    /// Intensity ratio at which throttling is switched off.
    #[serde(deserialize_with = "number")]
    pub throttle_green_override_threshold: f64,
    /// `router` or `consumer` (kept for compatibility).
    pub evaluator: String,
    /// `telemetry` (exact delivered counts, default) or `commanded` (the reference's feed).
    pub precision_feed: PrecisionFeedSpec,
    /// `highest-precision` (default) or `keep-last-weights`.
    pub on_expiry: ExpirySpec,
    /// Replica bounds per component.
    pub components: BTreeMap<String, BoundsSpec>,
    /// Precision variants in registry order (default: precision-100, -50 and -30).
    pub flavours: Vec<FlavourSpec>,
    /// Ordered fallback rules.
    pub fallbacks: Vec<FallbackSpec>,
    /// carbon-optimal: the lowest mean precision planned for any one forecast slot,
    /// fraction in (0, 1] or percent in (1, 100].
    #[serde(deserialize_with = "optional_number")]
    pub min_slot_precision: Option<f64>,
    /// Routers forward clients' `Authorization` and `Cookie` headers to the upstreams
    /// (default true; false strips them).
    pub forward_credentials: bool,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            policy: "credit-greedy".into(),
            zone: "GB".into(),
            target_error: 0.15,
            credit_min: -1.0,
            credit_max: 1.0,
            credit_sensitivity: 0.33,
            credit_window: 300,
            valid_for: 60,
            discovery_interval: 60,
            carbon_target: None,
            carbon_timeout: 2.0,
            carbon_cache_ttl: 5.0,
            throttle_min: 0.05,
            throttle_intensity_floor: 150.0,
            throttle_intensity_ceiling: 350.0,
            throttle_green_blend: 0.6,
            throttle_green_override_threshold: 0.99,
            evaluator: "router".into(),
            precision_feed: PrecisionFeedSpec::Telemetry,
            on_expiry: ExpirySpec::HighestPrecision,
            components: BTreeMap::new(),
            flavours: [
                ("precision-100", 1.0, 1.0),
                ("precision-50", 0.5, 0.6),
                ("precision-30", 0.3, 0.3),
            ]
            .into_iter()
            .map(|(name, precision, energy)| FlavourSpec {
                name: name.into(),
                precision,
                carbon_intensity: energy,
                enabled: true,
                upstream: String::new(),
                upstream_header: None,
                annotations: BTreeMap::new(),
                max_share: None,
            })
            .collect(),
            fallbacks: vec![],
            min_slot_precision: None,
            forward_credentials: true,
        }
    }
}

/// Ledger feed as written in a spec.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionFeedSpec {
    /// Exact delivered counts.
    Telemetry,
    /// Commanded average precision.
    Commanded,
}

/// Expiry behaviour as written in a spec.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpirySpec {
    /// All traffic to the highest-precision enabled flavour.
    HighestPrecision,
    /// Keep routing on the last weights.
    KeepLastWeights,
}

/// One flavour of a spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlavourSpec {
    /// Unique name.
    pub name: String,
    /// Precision, fraction in (0, 1] or percent in (1, 100].
    #[serde(deserialize_with = "number")]
    pub precision: f64,
    /// Energy per request relative to full precision (reference key `carbonIntensity`).
    #[serde(alias = "relativeEnergy", default, deserialize_with = "number")]
    pub carbon_intensity: f64,
    /// Disabled flavours get no traffic.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Base URL of this flavour's backend.
    #[serde(default)]
    pub upstream: String,
    /// Service-mesh mode: the header carrying the precision percent.
    #[serde(default)]
    pub upstream_header: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// carbon-optimal: the largest share of a slot's requests this flavour may get,
    /// fraction in (0, 1] or percent in (1, 100].
    #[serde(default, deserialize_with = "optional_number")]
    pub max_share: Option<f64>,
}

fn enabled() -> bool {
    true
}

/// Replica bounds of a component.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BoundsSpec {
    /// Lower bound.
    #[serde(default, alias = "minReplicaCount")]
    pub min_replicas: Option<i32>,
    /// Upper bound.
    #[serde(default, alias = "maxReplicaCount")]
    pub max_replicas: Option<i32>,
}

/// A fallback rule: `{when: {status: [timeout, 5xx, 503]}, to: flavour}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    /// Outcomes that trigger the retry (`when: {status: [...]}`).
    pub when: FallbackWhen,
    /// Flavour to retry on.
    pub to: String,
}

/// Conditions of a fallback rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackWhen {
    /// `timeout`, `connect_error`, `5xx`, `4xx` or exact codes; numbers are accepted.
    pub status: Vec<serde_json::Value>,
}

/// Why a spec document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The document is not a JSON object of the spec's shape.
    #[error("schedule spec is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// The document is not an object.
    #[error("schedule spec must be a JSON object with keys such as policy, targetError, flavours")]
    NotAnObject,
}

impl ScheduleSpec {
    /// Read a spec from a JSON value; keys under `scheduler` (the reference's CR shape)
    /// are merged into the top level first.
    pub fn from_value(value: serde_json::Value) -> Result<Self, SpecError> {
        let serde_json::Value::Object(mut map) = value else {
            return Err(SpecError::NotAnObject);
        };
        if let Some(serde_json::Value::Object(inner)) = map.remove("scheduler") {
            map.extend(inner);
        }
        Ok(serde_json::from_value(serde_json::Value::Object(map))?)
    }

    /// The config record for `schedule`, unvalidated (see [`crate::validate`]).
    pub fn to_config(&self, schedule: &str, config_version: i64, at_ms: i64) -> ScheduleConfig {
        ScheduleConfig {
            schedule: schedule.to_string(),
            config_version,
            published_at_ms: at_ms,
            policy: self.policy.clone(),
            zone: self
                .carbon_target
                .clone()
                .unwrap_or_else(|| self.zone.clone()),
            target_error: self.target_error,
            credit_min: self.credit_min,
            credit_max: self.credit_max,
            credit_sensitivity: self.credit_sensitivity,
            credit_window_seconds: self.credit_window,
            valid_for_seconds: self.valid_for,
            discovery_interval_seconds: self.discovery_interval,
            carbon_timeout_seconds: self.carbon_timeout,
            carbon_cache_ttl_seconds: self.carbon_cache_ttl,
            throttle_min: self.throttle_min,
            throttle_intensity_floor: self.throttle_intensity_floor,
            throttle_intensity_ceiling: self.throttle_intensity_ceiling,
            throttle_green_blend: self.throttle_green_blend,
            throttle_green_override_threshold: self.throttle_green_override_threshold,
            // The reference: "consumer" (case/space-insensitive) else "router".
            evaluator: if self.evaluator.trim().eq_ignore_ascii_case("consumer") {
                "consumer".into()
            } else {
                "router".into()
            },
            precision_feed: match self.precision_feed {
                PrecisionFeedSpec::Telemetry => PrecisionFeed::Telemetry,
                PrecisionFeedSpec::Commanded => PrecisionFeed::Commanded,
            },
            on_expiry: match self.on_expiry {
                ExpirySpec::HighestPrecision => ExpiryBehaviour::HighestPrecision,
                ExpirySpec::KeepLastWeights => ExpiryBehaviour::KeepLastWeights,
            },
            components: self
                .components
                .iter()
                .map(|(component, b)| ComponentBounds {
                    component: component.clone(),
                    min_replicas: b.min_replicas,
                    max_replicas: b.max_replicas,
                })
                .collect(),
            flavours: self
                .flavours
                .iter()
                .map(|f| Flavour {
                    name: f.name.clone(),
                    precision: f.precision,
                    relative_energy: f.carbon_intensity,
                    enabled: f.enabled,
                    upstream_url: f.upstream.clone(),
                    upstream_header: f.upstream_header.clone(),
                    annotations: f
                        .annotations
                        .iter()
                        .map(|(key, value)| Annotation {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                    max_share: f.max_share,
                })
                .collect(),
            fallbacks: self
                .fallbacks
                .iter()
                .map(|r| FallbackRule {
                    when_status: r
                        .when
                        .status
                        .iter()
                        .map(|s| match s {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect(),
                    to: r.to.clone(),
                })
                .collect(),
            min_slot_precision: self.min_slot_precision,
            forward_credentials: self.forward_credentials,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(f64),
    String(String),
}

impl ScheduleSpec {
    /// The scalar keys of `config` as a spec document: the inverse of
    /// [`to_config`](Self::to_config) for everything but flavours, components, fallbacks
    /// and the expiry behaviour (what `audit what-if --set` patches).
    pub fn scalar_document(c: &ScheduleConfig) -> serde_json::Map<String, serde_json::Value> {
        let v = serde_json::json!({
            "policy": c.policy, "zone": c.zone, "targetError": c.target_error, "creditMin": c.credit_min,
            "creditMax": c.credit_max, "creditSensitivity": c.credit_sensitivity, "creditWindow": c.credit_window_seconds,
            "validFor": c.valid_for_seconds, "throttleMin": c.throttle_min,
            "throttleIntensityFloor": c.throttle_intensity_floor, "throttleIntensityCeiling": c.throttle_intensity_ceiling,
            "throttleGreenBlend": c.throttle_green_blend, "throttleGreenOverrideThreshold": c.throttle_green_override_threshold,
            "precisionFeed": match c.precision_feed {
                PrecisionFeed::Telemetry => "telemetry",
                PrecisionFeed::Commanded => "commanded",
            },
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match NumberOrString::deserialize(d)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("expected a number, got the string {s:?}"))
        }),
    }
}

fn optional_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<NumberOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrString::Number(n)) => Ok(Some(n)),
        Some(NumberOrString::String(s)) => s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("expected a number, got the string {s:?}"))
        }),
    }
}

fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = number(d)?;
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Ok(n as i64)
    } else {
        Err(serde::de::Error::custom(format!(
            "expected a whole number, got {n}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reference_cr_shape_with_string_numbers_is_read() {
        let spec = ScheduleSpec::from_value(json!({
            "scheduler": {"targetError": "0.1", "creditMin": "-2.0", "creditWindow": 10,
                           "policy": "forecast-aware", "carbonTarget": "GB-13"},
        }))
        .expect("spec");
        let c = spec.to_config("demo/app", 3, 1000);
        assert_eq!(c.target_error, 0.1);
        assert_eq!(c.credit_min, -2.0);
        assert_eq!(c.credit_window_seconds, 10);
        assert_eq!(c.zone, "GB-13");
        assert_eq!(c.flavours.len(), 3);
        assert_eq!(c.config_version, 3);
    }

    #[test]
    fn unknown_keys_and_bad_numbers_are_named() {
        let e = ScheduleSpec::from_value(json!({"targetErorr": 0.1})).expect_err("typo");
        assert!(e.to_string().contains("targetErorr"), "{e}");
        let e = ScheduleSpec::from_value(json!({"creditMax": "lots"})).expect_err("nan");
        assert!(e.to_string().contains("lots"), "{e}");
        assert!(matches!(
            ScheduleSpec::from_value(json!([1])),
            Err(SpecError::NotAnObject)
        ));
    }

    #[test]
    fn fallbacks_and_upstreams_are_carried() {
        let spec = ScheduleSpec::from_value(json!({
            "flavours": [{"name": "full", "precision": 100, "upstream": "http://full:8080"}],
            "fallbacks": [{"when": {"status": ["timeout", 503]}, "to": "full"}],
            "onExpiry": "keep-last-weights",
        }))
        .expect("spec");
        let c = spec.to_config("a/b", 1, 0);
        assert_eq!(c.flavours[0].upstream_url, "http://full:8080");
        assert_eq!(c.fallbacks[0].when_status, vec!["timeout", "503"]);
        assert_eq!(c.on_expiry, ExpiryBehaviour::KeepLastWeights);
    }
}
