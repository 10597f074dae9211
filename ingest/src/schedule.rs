//! `ingest config apply|delete` and `ingest override`: schedule commands published to
//! `schedule.config`, checked with the processor's own rules before anything is written.
//!
//! A schedule file is YAML (or JSON) with `schedule: namespace/name` and the keys of a
//! [`ScheduleSpec`] (the reference's `targetError`, `creditMin`, ... at top level or under
//! `scheduler`, plus `zone`, `precisionFeed`, `onExpiry`, flavour `upstream` /
//! `upstreamHeader` and `fallbacks`).

use std::path::{Path, PathBuf};

use carbonflow_core::spec::ScheduleSpec;
use carbonflow_core::validate::{describe_problems, validate, validate_override};
use carbonflow_schemas::records::{
    ConfigCommand, FlavourWeight, ManualOverride, OverrideCancellation, ScheduleConfig,
    ScheduleDeletion,
};
use carbonflow_schemas::vocabulary::{ScheduleId, ScheduleIdError};
use serde_json::Value;

/// Why a schedule command was not published.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The file could not be read.
    #[error("reading {file}: {source}")]
    Read {
        /// Path of the schedule file, as given.
        file: PathBuf,
        /// The I/O error reading it.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape.
    #[error("{file}: {detail}")]
    Shape {
        /// Path of the schedule file, as given.
        file: PathBuf,
        /// The YAML parse error, a missing `schedule:` key, or a spec key error.
        detail: String,
    },
    /// The config breaks rules; nothing was published.
    #[error("{file}: invalid schedule, nothing published:\n{}", .problems.iter().map(|(f, r)| format!("  {f}: {r}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Path of the schedule file, as given.
        file: PathBuf,
        /// `(field, rule)` pairs.
        problems: Vec<(String, String)>,
    },
    /// An argument is malformed.
    #[error("{0}")]
    Argument(String),
}

/// Read and validate a schedule file; `config_version` and `at_ms` stamp it.
pub fn load(file: &Path, config_version: i64, at_ms: i64) -> Result<ScheduleConfig, ScheduleError> {
    let text = std::fs::read_to_string(file).map_err(|source| ScheduleError::Read {
        file: file.into(),
        source,
    })?;
    let shape = |detail: String| ScheduleError::Shape {
        file: file.into(),
        detail,
    };
    let mut doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| shape(e.to_string()))?;
    let schedule = match doc.as_object_mut().and_then(|m| m.remove("schedule")) {
        Some(Value::String(s)) => s,
        _ => {
            return Err(shape(
                "schedule: must be given as namespace/name (e.g. `schedule: shop/checkout`)".into(),
            ));
        }
    };
    let spec = ScheduleSpec::from_value(doc).map_err(|e| shape(e.to_string()))?;
    validate(&spec.to_config(&schedule, config_version, at_ms)).map_err(|problems| {
        ScheduleError::Invalid {
            file: file.into(),
            problems: problems.into_iter().map(|p| (p.field, p.rule)).collect(),
        }
    })
}

/// `--schedule` as a schedule id.
fn schedule_argument(schedule: &str) -> Result<ScheduleId, ScheduleError> {
    schedule
        .parse()
        .map_err(|e: ScheduleIdError| ScheduleError::Argument(format!("--schedule: {e}")))
}

/// A deletion of `schedule`.
pub fn deletion(schedule: &str, at_ms: i64) -> Result<ConfigCommand, ScheduleError> {
    let id = schedule_argument(schedule)?;
    Ok(ConfigCommand::Delete(ScheduleDeletion {
        schedule: id.to_string(),
        issued_at_ms: at_ms,
    }))
}

/// The end of `schedule`'s manual override.
pub fn cancellation(
    schedule: &str,
    reason: Option<String>,
    at_ms: i64,
) -> Result<ConfigCommand, ScheduleError> {
    let id = schedule_argument(schedule)?;
    Ok(ConfigCommand::CancelOverride(OverrideCancellation {
        schedule: id.to_string(),
        issued_at_ms: at_ms,
        reason,
    }))
}

/// An override from `flavour=weight` pairs, checked with the processor's override rules
/// (the ones that need no config in force: the owner checks the flavours against it).
pub fn manual_override(
    schedule: &str,
    weights: &[String],
    ttl_seconds: i64,
    reason: Option<String>,
    at_ms: i64,
) -> Result<ConfigCommand, ScheduleError> {
    let id = schedule_argument(schedule)?;
    let weights = weights
        .iter()
        .map(|w| {
            let (flavour, weight) = w
                .split_once('=')
                .and_then(|(f, w)| Some((f, w.parse::<f64>().ok()?)))
                .ok_or_else(|| {
                    ScheduleError::Argument(format!(
                        "--weight {w:?}: expected flavour=weight with a number as the weight"
                    ))
                })?;
            Ok(FlavourWeight {
                flavour: flavour.to_string(),
                weight,
            })
        })
        .collect::<Result<Vec<_>, ScheduleError>>()?;
    let o = ManualOverride {
        schedule: id.to_string(),
        issued_at_ms: at_ms,
        ttl_seconds,
        weights,
        reason,
    };
    validate_override(&o, None, None).map_err(|problems| {
        ScheduleError::Argument(format!(
            "invalid override, nothing published: {}",
            describe_problems(&problems)
        ))
    })?;
    Ok(ConfigCommand::Override(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cf-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join(name);
        std::fs::write(&f, text).expect("write");
        f
    }

    #[test]
    fn a_yaml_schedule_loads_and_validates() {
        let f = write(
            "ok.yaml",
            "schedule: shop/checkout\npolicy: precision-tier\nzone: GB\ntargetError: \"0.1\"\nflavours:\n  - {name: full, precision: 100, carbonIntensity: 1, upstream: http://a:1}\n  - {name: lite, precision: 30, carbonIntensity: 0.3, upstream: http://b:1}\nfallbacks:\n  - {when: {status: [5xx, timeout]}, to: full}\n",
        );
        let c = load(&f, 5, 0).expect("valid");
        assert_eq!(
            (c.schedule.as_str(), c.config_version),
            ("shop/checkout", 5)
        );
        assert_eq!(c.flavours[1].precision, 0.3, "percent accepted");
        assert_eq!(c.fallbacks[0].when_status, vec!["5xx", "timeout"]);
    }

    #[test]
    fn an_invalid_file_names_the_file_and_field() {
        let f = write(
            "bad.yaml",
            "schedule: shop/checkout\ncreditMin: 3\nflavours:\n  - {name: full, precision: 1, upstream: http://a:1}\n",
        );
        let e = load(&f, 1, 0).expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("bad.yaml") && text.contains("credit_min"),
            "{text}"
        );
        let f = write("typo.yaml", "schedule: a/b\ntargetErorr: 0.1\n");
        let text = load(&f, 1, 0).expect_err("typo").to_string();
        assert!(
            text.contains("typo.yaml") && text.contains("targetErorr"),
            "{text}"
        );
    }

    #[test]
    fn override_arguments_are_checked() {
        let o = manual_override("a/b", &["lite=2".into()], 60, None, 0).expect("ok");
        assert!(matches!(o, ConfigCommand::Override(ref m) if m.weights[0].weight == 2.0));
        assert!(manual_override("a/b", &["lite".into()], 60, None, 0).is_err());
        assert!(manual_override("a/b", &["lite=2".into()], 0, None, 0).is_err());
    }
}
