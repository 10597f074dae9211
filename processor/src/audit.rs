//! `processor audit`: replay the topics to verify, explain, export and what-if every
//! decision.
//!
//! The journal is the record of what the processor did: every input, in the order it was
//! applied. Folding it with [`PartitionState::apply`] — the processor's own code —
//! re-derives every decision ([`Replay`]); `verify` compares them with what
//! `schedule.decisions` holds, `explain` and `export` read them, and `what-if` folds the
//! same journal with a schedule's config changed.
//!
//! Carbon accounting (per closed telemetry window): the requests answered in the window
//! were served at the weights of the decision in force during it, at that decision's
//! current carbon intensity. Emissions are in request-equivalents × gCO2/kWh:
//! `requests × Σ_f weight_f × relative_energy_f × intensity`; the always-full-precision
//! baseline is `requests × intensity`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use carbonflow_schemas::bus::{KafkaArgs, Topic};
use carbonflow_schemas::decode;
use carbonflow_schemas::records::{ConfigCommand, ScheduleDecision, journal_entries};
use serde_json::{Value, json};

use crate::dry_run::{format_time, reference_contract};
use crate::journal::{RangeReader, RestoreError};
use crate::spec::ScheduleSpec;
use crate::state::{Input, Output, PartitionState};

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading the topics failed.
    #[error(transparent)]
    Read(#[from] RestoreError),
    /// An argument is wrong.
    #[error("{0}")]
    Argument(String),
}

/// One re-derived decision with what the audit needs around it.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The decision.
    pub decision: ScheduleDecision,
    /// Answered requests per flavour of the window this decision accounted, if any.
    pub delivered: BTreeMap<String, i64>,
}

/// Every decision re-derived from the journal, per schedule in version order, plus what
/// the reading found missing.
#[derive(Debug, Default)]
pub struct Replay {
    /// Decisions per schedule.
    pub decisions: BTreeMap<String, Vec<Derived>>,
    /// Journal entries read.
    pub entries: u64,
    /// Gaps found (retention, compaction).
    pub gaps: Vec<String>,
}

/// How the journal is replayed.
pub struct ReplayOptions<'a> {
    /// Only keep decisions of this schedule.
    pub schedule: Option<&'a str>,
    /// Change this schedule's configs before applying them (what-if).
    pub rewrite: Option<&'a dyn Fn(&mut carbonflow_schemas::records::ScheduleConfig)>,
}

/// Fold every journal partition from its first retained entry.
pub fn replay(args: &KafkaArgs, opts: &ReplayOptions<'_>) -> Result<Replay, AuditError> {
    let layout = args.layout();
    let journal = layout.name(Topic::Journal);
    let mut out = Replay::default();
    for p in 0..layout.schedule_partitions {
        let reader = RangeReader::new(args, p)?;
        let (low, high) = reader.watermarks(&journal)?;
        if low > 0 {
            out.gaps.push(format!(
                "journal partition {p} starts at offset {low}: earlier entries were deleted by retention, so its state is re-derived from an empty start"
            ));
        }
        let mut state = PartitionState::new(p);
        let (mut records, mut entries) = (0_u64, 0_u64);
        reader.read(&journal, low, high, |offset, payload| {
            records += 1;
            if records.is_multiple_of(10_000) {
                eprintln!(
                    "audit: journal partition {p}: record {} of {} ({entries} entries so far)",
                    offset - low + 1,
                    high - low
                );
            }
            let Some(batch) = payload.and_then(|b| journal_entries(b).ok()) else {
                out.gaps.push(format!(
                    "journal partition {p} offset {offset} is unreadable; skipped"
                ));
                return Ok(());
            };
            for entry in batch {
                entries += 1;
                if state.already_applied(&entry.input) {
                    continue;
                }
                let mut input = match Input::decode_record(&entry.record) {
                    Ok(i) => i,
                    Err(_) => {
                        state.skip(&entry.input);
                        continue;
                    }
                };
                if let (Some(rewrite), Input::Config(ConfigCommand::Config(c))) =
                    (opts.rewrite, &mut input)
                    && opts.schedule.is_none_or(|s| s == c.schedule)
                {
                    rewrite(c);
                }
                // The windows this input may close, captured before it is applied.
                let windows: BTreeMap<String, BTreeMap<String, i64>> = state
                    .schedules
                    .iter()
                    .filter_map(|(id, s)| Some((id.clone(), s.window.as_ref()?.served.clone())))
                    .collect();
                for o in state.apply(&input, &entry.input) {
                    let Output::Decision(d) = o else { continue };
                    if opts.schedule.is_some_and(|s| s != d.schedule) {
                        continue;
                    }
                    let delivered = if d.provenance.telemetry_window.is_some() {
                        windows.get(&d.schedule).cloned().unwrap_or_default()
                    } else {
                        BTreeMap::new()
                    };
                    out.decisions
                        .entry(d.schedule.clone())
                        .or_default()
                        .push(Derived {
                            decision: *d,
                            delivered,
                        });
                }
            }
            Ok(())
        })?;
        out.entries += entries;
    }
    Ok(out)
}

/// Decisions per schedule, by version.
pub type Emitted = BTreeMap<String, BTreeMap<i64, ScheduleDecision>>;

/// Every decision record on `schedule.decisions`, and the gaps found reading them.
pub fn emitted(args: &KafkaArgs) -> Result<(Emitted, Vec<String>), AuditError> {
    let layout = args.layout();
    let topic = layout.name(Topic::Decisions);
    let mut out = Emitted::new();
    let mut gaps = vec![];
    for p in 0..layout.schedule_partitions {
        let reader = RangeReader::new(args, p)?;
        let (low, high) = reader.watermarks(&topic)?;
        if low > 0 {
            gaps.push(format!(
                "{topic} partition {p} starts at offset {low}: older decisions were deleted"
            ));
        }
        reader.read(&topic, low, high, |_, payload| {
            if let Some(d) = payload.and_then(|b| decode::<ScheduleDecision>(b).ok()) {
                out.entry(d.schedule.clone())
                    .or_default()
                    .insert(d.version, d);
            }
            Ok(())
        })?;
    }
    Ok((out, gaps))
}

/// Paths where two JSON values differ (`flavours[1].weight`, ...).
pub fn differences(a: &Value, b: &Value) -> Vec<String> {
    fn walk(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        p,
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(u, v, format!("{path}[{i}]"), out);
                }
            }
            _ if a != b => out.push(path),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(a, b, String::new(), &mut out);
    out
}

/// Result of `audit verify`.
#[derive(Debug, Default)]
pub struct Verification {
    /// Decisions compared.
    pub checked: u64,
    /// Identical.
    pub matched: u64,
    /// `(schedule, version, differing fields)`.
    pub mismatched: Vec<(String, i64, Vec<String>)>,
    /// Re-derived but not on the topic (compacted, or never delivered).
    pub missing: Vec<(String, i64)>,
    /// On the topic but not re-derived (adopted after a crash, or outside the journal).
    pub unexplained: Vec<(String, i64)>,
}

/// Compare re-derived and emitted decisions, within `[from_ms, to_ms]` of decision time.
pub fn verify(
    replay: &Replay,
    emitted: &Emitted,
    schedule: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Verification {
    let mut v = Verification::default();
    let in_range = |d: &ScheduleDecision| (from_ms..=to_ms).contains(&d.decided_at_ms);
    for (id, derived) in &replay.decisions {
        let on_topic = emitted.get(id);
        for d in derived.iter().map(|d| &d.decision).filter(|d| in_range(d)) {
            match on_topic.and_then(|t| t.get(&d.version)) {
                None => v.missing.push((id.clone(), d.version)),
                Some(e) => {
                    v.checked += 1;
                    let diff = differences(
                        &serde_json::to_value(d).unwrap_or(Value::Null),
                        &serde_json::to_value(e).unwrap_or(Value::Null),
                    );
                    if diff.is_empty() {
                        v.matched += 1;
                    } else {
                        v.mismatched.push((id.clone(), d.version, diff));
                    }
                }
            }
        }
    }
    for (id, versions) in emitted {
        if schedule.is_some_and(|s| s != id) {
            continue;
        }
        let derived = replay.decisions.get(id);
        for version in versions
            .iter()
            .filter(|(_, d)| in_range(d))
            .map(|(v, _)| *v)
        {
            if derived.is_none_or(|ds| ds.iter().all(|x| x.decision.version != version)) {
                v.unexplained.push((id.clone(), version));
            }
        }
    }
    v
}

fn weights(d: &ScheduleDecision) -> String {
    d.flavours
        .iter()
        .map(|f| format!("{} {}% ({:.4})", f.name, f.weight_percent, f.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A readable account of one decision (`audit explain`).
pub fn explain(decisions: &[Derived], index: usize) -> String {
    let Derived {
        decision: d,
        delivered,
    } = &decisions[index];
    let p = &d.provenance;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "decision {} version {} at {} ({})",
        d.schedule,
        d.version,
        format_time(d.decided_at_ms),
        d.policy
    );
    let _ = writeln!(
        s,
        "  caused by: {} at {} partition {} offset {}",
        p.cause, p.input.topic, p.input.partition, p.input.offset
    );
    let _ = writeln!(s, "  config version in force: {}", p.config_version);
    match &p.forecast {
        Some(f) => {
            let _ = writeln!(
                s,
                "  forecast used: {} issued {}; now {} gCO2/kWh, next {}, slots {:?}",
                f.issuer,
                format_time(f.issued_at_ms),
                f.intensity_now.map_or("-".into(), |v| v.to_string()),
                f.intensity_next.map_or("-".into(), |v| v.to_string()),
                f.slots
            );
        }
        None => {
            let _ = writeln!(s, "  forecast used: none (no forecast for the zone yet)");
        }
    }
    let _ = writeln!(
        s,
        "  ledger: balance {:+.6} → {:+.6}, velocity {:+.6} → {:+.6} (bounds {} .. {})",
        p.ledger_before.balance,
        p.ledger_after.balance,
        p.ledger_before.velocity,
        p.ledger_after.velocity,
        d.credits.min,
        d.credits.max
    );
    match &p.telemetry_window {
        Some(w) => {
            let _ = writeln!(
                s,
                "  telemetry window: {} .. {}, {} answered requests, realised precision {:.4}; delivered {:?}",
                format_time(w.start_ms),
                format_time(w.end_ms),
                w.requests,
                w.realised_precision,
                delivered
            );
        }
        None => {
            let _ = writeln!(s, "  telemetry window: none accounted by this decision");
        }
    }
    let diags: Vec<String> = d
        .diagnostics
        .iter()
        .map(|x| {
            format!(
                "{}={}",
                x.name,
                x.value.map_or("null".into(), |v| format!("{v}"))
            )
        })
        .collect();
    let _ = writeln!(s, "  policy diagnostics: {}", diags.join(", "));
    let _ = writeln!(s, "  weights: {}", weights(d));
    let _ = writeln!(
        s,
        "  mean commanded precision {:.4}, throttle {:.4}, valid until {}",
        d.avg_precision,
        d.processing.throttle,
        format_time(d.valid_until_ms)
    );
    match index.checked_sub(1).map(|i| &decisions[i].decision) {
        Some(prev) => {
            let changes = differences(&reference_contract(prev), &reference_contract(d));
            let _ = writeln!(
                s,
                "  changed from version {}: {}",
                prev.version,
                changes.join(", ")
            );
            let _ = writeln!(s, "    before: {}", weights(prev));
        }
        None => {
            let _ = writeln!(s, "  first decision of this schedule in the journal");
        }
    }
    s
}

/// Carbon and precision of the windows accounted by `decisions` (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Accounting {
    /// Answered requests accounted.
    pub requests: i64,
    /// Σ requests × commanded mean precision.
    pub precision_sum: f64,
    /// Emissions, request-equivalents × gCO2/kWh.
    pub emissions: f64,
    /// Always-full-precision baseline, same unit.
    pub baseline: f64,
}

impl Accounting {
    /// Mean precision delivered.
    pub fn mean_precision(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.precision_sum / self.requests as f64
        }
    }

    /// Fraction saved against always-full-precision.
    pub fn reduction(&self) -> f64 {
        if self.baseline == 0.0 {
            0.0
        } else {
            1.0 - self.emissions / self.baseline
        }
    }
}

/// Per window: `(window decision index, requests, in-force decision)`, accounted.
pub fn account(decisions: &[Derived]) -> (Accounting, Vec<(usize, Accounting)>) {
    let mut total = Accounting::default();
    let mut rows = vec![];
    for i in 1..decisions.len() {
        let d = &decisions[i].decision;
        let Some(w) = &d.provenance.telemetry_window else {
            continue;
        };
        let in_force = &decisions[i - 1].decision;
        let intensity = in_force
            .provenance
            .forecast
            .as_ref()
            .and_then(|f| f.intensity_now)
            .unwrap_or(0.0);
        let energy: f64 = in_force
            .flavours
            .iter()
            .map(|f| f.weight * f.relative_energy)
            .sum();
        let a = Accounting {
            requests: w.requests,
            precision_sum: w.requests as f64 * in_force.avg_precision,
            emissions: w.requests as f64 * energy * intensity,
            baseline: w.requests as f64 * intensity,
        };
        total.requests += a.requests;
        total.precision_sum += a.precision_sum;
        total.emissions += a.emissions;
        total.baseline += a.baseline;
        rows.push((i, a));
    }
    (total, rows)
}

/// One export row per decision: JSON object (the CSV has the same columns).
pub fn export_rows(decisions: &[Derived]) -> Vec<Value> {
    let (_, windows) = account(decisions);
    let by_index: BTreeMap<usize, Accounting> = windows.into_iter().collect();
    decisions
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let d = &x.decision;
            let a = by_index.get(&i).copied().unwrap_or_default();
            let served: i64 = x.delivered.values().sum();
            let commanded: BTreeMap<&str, f64> = match i.checked_sub(1) {
                Some(j) => decisions[j].decision.flavours.iter().map(|f| (f.name.as_str(), f.weight)).collect(),
                None => BTreeMap::new(),
            };
            let delivered: BTreeMap<&str, f64> = x
                .delivered
                .iter()
                .map(|(f, n)| (f.as_str(), if served > 0 { *n as f64 / served as f64 } else { 0.0 }))
                .collect();
            json!({
                "schedule": d.schedule,
                "version": d.version,
                "decided_at": format_time(d.decided_at_ms),
                "cause": d.provenance.cause,
                "policy": d.policy,
                "config_version": d.provenance.config_version,
                "intensity_now": d.provenance.forecast.as_ref().and_then(|f| f.intensity_now),
                "weights": d.flavours.iter().map(|f| (f.name.clone(), f.weight)).collect::<BTreeMap<_, _>>(),
                "avg_precision": d.avg_precision,
                "credit_balance": d.credits.balance,
                "window_requests": d.provenance.telemetry_window.as_ref().map(|w| w.requests),
                "window_commanded": commanded,
                "window_delivered": delivered,
                "window_realised_precision": d.provenance.telemetry_window.as_ref().map(|w| w.realised_precision),
                "window_emissions": a.emissions,
                "window_baseline_emissions": a.baseline,
            })
        })
        .collect()
}

/// Render rows as CSV (nested maps as `name=value;...`).
pub fn to_csv(rows: &[Value]) -> String {
    let columns = [
        "schedule",
        "version",
        "decided_at",
        "cause",
        "policy",
        "config_version",
        "intensity_now",
        "weights",
        "avg_precision",
        "credit_balance",
        "window_requests",
        "window_commanded",
        "window_delivered",
        "window_realised_precision",
        "window_emissions",
        "window_baseline_emissions",
    ];
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    };
    let mut out = columns.join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = columns
            .iter()
            .map(|c| {
                let s = cell(&r[*c]);
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s
                }
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// A config rewrite for what-if: a policy and `key=value` spec settings (the schedule
/// spec's keys, e.g. `targetError=0.1`).
pub fn rewrite_for(
    policy: Option<String>,
    sets: &[String],
) -> Result<impl Fn(&mut carbonflow_schemas::records::ScheduleConfig) + use<>, AuditError> {
    let mut patch = serde_json::Map::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| AuditError::Argument(format!("--set {s:?}: expected key=value")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        patch.insert(k.to_string(), value);
    }
    // Check the keys now, against a default spec, so typos fail before the replay.
    ScheduleSpec::from_value(Value::Object(patch.clone()))
        .map_err(|e| AuditError::Argument(format!("--set: {e}")))?;
    Ok(move |c: &mut carbonflow_schemas::records::ScheduleConfig| {
        if let Some(p) = &policy {
            c.policy = p.clone();
        }
        if patch.is_empty() {
            return;
        }
        let mut doc = spec_of(c);
        for (k, v) in &patch {
            doc.insert(k.clone(), v.clone());
        }
        if let Ok(spec) = ScheduleSpec::from_value(Value::Object(doc)) {
            let mut next = spec.to_config(&c.schedule, c.config_version, c.published_at_ms);
            next.flavours = c.flavours.clone();
            next.fallbacks = c.fallbacks.clone();
            if let Ok(valid) = crate::validate::validate(&next) {
                *c = valid;
            }
        }
    })
}

/// The scalar keys of a config as a spec document (what `--set` patches).
fn spec_of(c: &carbonflow_schemas::records::ScheduleConfig) -> serde_json::Map<String, Value> {
    let v = json!({
        "policy": c.policy, "zone": c.zone, "targetError": c.target_error, "creditMin": c.credit_min,
        "creditMax": c.credit_max, "creditSensitivity": c.credit_sensitivity, "creditWindow": c.credit_window_seconds,
        "validFor": c.valid_for_seconds, "throttleMin": c.throttle_min,
        "throttleIntensityFloor": c.throttle_intensity_floor, "throttleIntensityCeiling": c.throttle_intensity_ceiling,
        "throttleGreenBlend": c.throttle_green_blend, "throttleGreenOverrideThreshold": c.throttle_green_override_threshold,
        "precisionFeed": match c.precision_feed {
            carbonflow_schemas::records::PrecisionFeed::Telemetry => "telemetry",
            carbonflow_schemas::records::PrecisionFeed::Commanded => "commanded",
        },
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_nested_paths() {
        let a = json!({"flavours": [{"weight": 0.5}, {"weight": 0.5}], "version": 3});
        let b = json!({"flavours": [{"weight": 0.5}, {"weight": 0.4}], "version": 3});
        assert_eq!(differences(&a, &b), vec!["flavours[1].weight"]);
        assert!(differences(&a, &a).is_empty());
    }

    #[test]
    fn csv_quotes_cells_with_separators() {
        let rows =
            vec![json!({"schedule": "a/b", "version": 1, "cause": "x,y", "weights": {"f": 0.5}})];
        let csv = to_csv(&rows);
        assert!(
            csv.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("a/b,1,,\"x,y\"")),
            "{csv}"
        );
    }
}
