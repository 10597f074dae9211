//! The pure half of `processor audit`: re-deriving decisions from journal entries, and
//! what the audit commands compute from them (verification against the emitted
//! decisions, explanations, carbon accounting, export rows, what-if rewrites). The shell
//! (`processor/src/audit.rs`) reads the topics and feeds entries here.
//!
//! The journal is the record of what the processor did: every input, in the order it was
//! applied. Folding it with [`PartitionState::apply`] — the processor's own code —
//! re-derives every decision ([`Replay`]).
//!
//! Carbon accounting here is *commanded*: the requests answered in each closed telemetry
//! window are spread over the flavours at the weights of the decision in force during it,
//! at that decision's current intensity, and accounted with the one definition of
//! emissions ([`EmissionsAccount::of`]). That is what makes `what-if` meaningful:
//! telemetry is replayed as recorded, so only the commanded split can change. The status
//! page and metrics account what was *delivered* with the same definition over the
//! requests each flavour actually served; each [`Derived`] carries that figure too, taken
//! from the fold itself, and the two agree when routers deliver what they are commanded.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use carbonflow_schemas::records::{
    ConfigCommand, JournalEntry, JournalRecord, ScheduleConfig, ScheduleDecision,
};
use carbonflow_schemas::time::format_rfc3339_ms;
use serde_json::{Value, json};

use crate::contract::reference_contract;
use crate::policy::planned_slots;
use crate::spec::ScheduleSpec;
use crate::state::{Admission, EmissionsAccount, Input, Output, PartitionState};
use crate::validate::{describe_problems, validate};

/// Why an audit computation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A command-line argument is malformed.
    #[error("{0}")]
    Argument(String),
    /// The what-if change makes a config of the journal invalid: the what-if would not
    /// be what the processor does, so it stops instead of keeping the original config.
    #[error(
        "what-if: config version {config_version} of {schedule} becomes invalid with the change: {problems}"
    )]
    Rewrite {
        /// Schedule whose config the change breaks.
        schedule: String,
        /// Its config version in the journal.
        config_version: i64,
        /// Every broken field and its rule.
        problems: String,
    },
}

/// One re-derived decision with what the audit needs around it.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The decision.
    pub decision: ScheduleDecision,
    /// Answered requests per flavour of the window this decision accounted, if any.
    pub delivered: BTreeMap<String, i64>,
    /// Emissions the fold accounted as delivered for that window (zero when none).
    pub emissions: EmissionsAccount,
}

/// Every decision re-derived from the journal, per schedule in version order, plus what
/// the reading found missing.
#[derive(Debug, Default)]
pub struct Replay {
    /// Decisions per schedule.
    pub decisions: BTreeMap<String, Vec<Derived>>,
    /// Journal entries read.
    pub entries: u64,
    /// Ownership claims read.
    pub claims: u64,
    /// Entries superseded owners wrote after a newer claim: not folded (fencing).
    pub fenced: u64,
    /// Gaps found (retention, compaction, unreadable records), for the report.
    pub gaps: Vec<String>,
}

/// A config change for what-if: applied to every config of the schedule the journal holds.
pub type Rewrite = dyn Fn(&mut ScheduleConfig) -> Result<(), AuditError>;

/// How the journal is replayed.
#[derive(Clone, Copy, Default)]
pub struct ReplayOptions<'a> {
    /// Only keep decisions of this schedule.
    pub schedule: Option<&'a str>,
    /// Change this schedule's configs before applying them (what-if).
    pub rewrite: Option<&'a Rewrite>,
}

/// The fold of one journal partition, fed entry by entry.
pub struct PartitionReplay<'a> {
    state: PartitionState,
    opts: ReplayOptions<'a>,
}

impl<'a> PartitionReplay<'a> {
    /// An empty state of `partition`.
    pub fn new(partition: i32, opts: ReplayOptions<'a>) -> Self {
        Self {
            state: PartitionState::new(partition),
            opts,
        }
    }

    /// Fold one journal record, read at journal offset `offset`, as restore does: the
    /// entries [`PartitionState::admit`] lets in are applied, claims and fenced entries
    /// are counted.
    pub fn apply_record(
        &mut self,
        offset: i64,
        record: &JournalRecord,
        out: &mut Replay,
    ) -> Result<(), AuditError> {
        match self.state.admit(offset, record) {
            Admission::Entries(entries) => {
                for entry in entries {
                    self.apply(entry, out)?;
                }
            }
            Admission::Claimed { .. } => out.claims += 1,
            Admission::Fenced { entries, .. } => out.fenced += entries as u64,
        }
        Ok(())
    }

    /// Apply one journal entry, adding the decisions it re-derives to `out`. An entry
    /// already folded in is ignored; one whose record no longer decodes only advances the
    /// position, as the live path did when it dead-lettered that record.
    pub fn apply(&mut self, entry: &JournalEntry, out: &mut Replay) -> Result<(), AuditError> {
        out.entries += 1;
        if self.state.already_applied(&entry.input) {
            return Ok(());
        }
        let Ok(mut input) = Input::decode_record(&entry.record) else {
            self.state.skip(&entry.input);
            return Ok(());
        };
        if let (Some(rewrite), Input::Config(ConfigCommand::Config(c))) =
            (self.opts.rewrite, &mut input)
            && self.opts.schedule.is_none_or(|s| s == c.schedule)
        {
            rewrite(c)?;
        }
        // The windows this input may close and the emissions so far, captured before it
        // is applied: a decision that accounts a window gets the difference.
        let before: BTreeMap<String, (BTreeMap<String, i64>, EmissionsAccount)> = self
            .state
            .schedules
            .iter()
            .filter_map(|(id, s)| {
                Some((id.clone(), (s.window.as_ref()?.served.clone(), s.emissions)))
            })
            .collect();
        for o in self.state.apply(&input, &entry.input) {
            let Output::Decision { decision: d, .. } = o else {
                continue;
            };
            if self.opts.schedule.is_some_and(|s| s != d.schedule) {
                continue;
            }
            let (delivered, emissions) =
                match (&d.provenance.telemetry_window, before.get(&d.schedule)) {
                    (Some(_), Some((served, emitted))) => {
                        let now = self
                            .state
                            .schedules
                            .get(&d.schedule)
                            .map_or(*emitted, |s| s.emissions);
                        (served.clone(), now.since(emitted))
                    }
                    _ => (BTreeMap::new(), EmissionsAccount::default()),
                };
            out.decisions
                .entry(d.schedule.clone())
                .or_default()
                .push(Derived {
                    decision: std::sync::Arc::unwrap_or_clone(d),
                    delivered,
                    emissions,
                });
        }
        Ok(())
    }
}

/// Decisions per schedule, by [`ScheduleDecision::precedence`]: owners of different
/// epochs may issue the same version (a superseded owner's late decisions), never the
/// same pair.
pub type Emitted = BTreeMap<String, BTreeMap<(i64, i64), ScheduleDecision>>;

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
    /// Compared decisions whose re-derived and emitted JSON are identical in every field.
    pub matched: u64,
    /// `(schedule, epoch, version, differing fields)`.
    pub mismatched: Vec<(String, i64, i64, Vec<String>)>,
    /// Re-derived but not on the topic (compacted, or never delivered): `(schedule,
    /// epoch, version)`.
    pub missing: Vec<(String, i64, i64)>,
    /// On the topic but not re-derived (a superseded owner's after a newer claim, adopted
    /// after a crash, or outside the journal): `(schedule, epoch, version)`.
    pub unexplained: Vec<(String, i64, i64)>,
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
            match on_topic.and_then(|t| t.get(&d.precedence())) {
                None => v.missing.push((id.clone(), d.epoch, d.version)),
                Some(e) => {
                    v.checked += 1;
                    let diff = differences(
                        &serde_json::to_value(d).unwrap_or(Value::Null),
                        &serde_json::to_value(e).unwrap_or(Value::Null),
                    );
                    if diff.is_empty() {
                        v.matched += 1;
                    } else {
                        v.mismatched.push((id.clone(), d.epoch, d.version, diff));
                    }
                }
            }
        }
    }
    for (id, decisions) in emitted {
        if schedule.is_some_and(|s| s != id) {
            continue;
        }
        let derived = replay.decisions.get(id);
        for &(epoch, version) in decisions
            .iter()
            .filter(|(_, d)| in_range(d))
            .map(|(key, _)| key)
        {
            let explained = derived.is_some_and(|ds| {
                ds.iter()
                    .any(|x| x.decision.precedence() == (epoch, version))
            });
            if !explained {
                v.unexplained.push((id.clone(), epoch, version));
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
        ..
    } = &decisions[index];
    let p = &d.provenance;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "decision {} version {} at {} ({})",
        d.schedule,
        d.version,
        format_rfc3339_ms(d.decided_at_ms),
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
                format_rfc3339_ms(f.issued_at_ms),
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
                format_rfc3339_ms(w.start_ms),
                format_rfc3339_ms(w.end_ms),
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
        .filter(|x| !x.name.starts_with("plan."))
        .map(|x| {
            format!(
                "{}={}",
                x.name,
                x.value.map_or("null".into(), |v| format!("{v}"))
            )
        })
        .collect();
    let _ = writeln!(s, "  policy diagnostics: {}", diags.join(", "));
    let plan = planned_slots(&d.diagnostics);
    if !plan.is_empty() {
        let _ = writeln!(
            s,
            "  plan (slot: forecast gCO2/kWh → planned precision; shares):"
        );
        let value =
            |v: Option<f64>, scale: f64| v.map_or("-".into(), |v| format!("{:.1}", v * scale));
        for (i, p) in plan.iter().enumerate() {
            let shares: Vec<String> = p
                .shares
                .iter()
                .map(|(f, w)| format!("{f} {} %", value(*w, 100.0)))
                .collect();
            let _ = writeln!(
                s,
                "    {:>3}: {:>6} → {:>5} %; {}",
                if i == 0 {
                    "now".to_string()
                } else {
                    format!("+{i}")
                },
                value(p.intensity, 1.0),
                value(p.precision, 100.0),
                shares.join(", ")
            );
        }
    }
    let _ = writeln!(s, "  weights: {}", weights(d));
    let _ = writeln!(
        s,
        "  mean commanded precision {:.4}, throttle {:.4}, valid until {}",
        d.avg_precision,
        d.processing.throttle,
        format_rfc3339_ms(d.valid_until_ms)
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
    /// Σ answered requests × mean precision commanded while they were served.
    pub precision_sum: f64,
    /// Emissions at the commanded weights, and at full precision.
    pub emissions: EmissionsAccount,
}

impl Accounting {
    /// Mean precision commanded, weighted by answered requests (0 with none).
    pub fn mean_commanded_precision(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.precision_sum / self.requests as f64
        }
    }

    /// Fraction saved against always-full-precision (0 before anything was accounted).
    pub fn reduction(&self) -> f64 {
        self.emissions.saved_fraction().unwrap_or(0.0)
    }

    fn add(&mut self, other: &Accounting) {
        self.requests += other.requests;
        self.precision_sum += other.precision_sum;
        self.emissions = self.emissions.plus(&other.emissions);
    }
}

/// The total and, per decision that accounted a window, `(decision index, accounting)`.
pub fn account(decisions: &[Derived]) -> (Accounting, Vec<(usize, Accounting)>) {
    let mut total = Accounting::default();
    let mut rows = vec![];
    for i in 1..decisions.len() {
        let Some(w) = &decisions[i].decision.provenance.telemetry_window else {
            continue;
        };
        let in_force = &decisions[i - 1].decision;
        let intensity = in_force
            .provenance
            .forecast
            .as_ref()
            .and_then(|f| f.intensity_now)
            .unwrap_or(0.0);
        let full_energy = in_force
            .flavours
            .iter()
            .max_by_key(|f| f.precision_percent)
            .map_or(1.0, |f| f.relative_energy);
        let requests = w.requests as f64;
        let commanded = in_force
            .flavours
            .iter()
            .map(|f| (f.relative_energy, requests * f.weight));
        let a = Accounting {
            requests: w.requests,
            precision_sum: requests * in_force.avg_precision,
            emissions: EmissionsAccount::of(intensity, full_energy, commanded),
        };
        total.add(&a);
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
                "decided_at": format_rfc3339_ms(d.decided_at_ms),
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
                "window_emissions": a.emissions.delivered,
                "window_baseline_emissions": a.emissions.full_precision,
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
/// spec's keys, e.g. `targetError=0.1`). Keys are checked now, against a default spec, so
/// typos fail before the replay; a change that makes a journaled config invalid fails the
/// replay with the fields it breaks.
pub fn rewrite_for(policy: Option<String>, sets: &[String]) -> Result<Box<Rewrite>, AuditError> {
    let mut patch = serde_json::Map::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| AuditError::Argument(format!("--set {s:?}: expected key=value")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        patch.insert(k.to_string(), value);
    }
    ScheduleSpec::from_value(Value::Object(patch.clone()))
        .map_err(|e| AuditError::Argument(format!("--set: {e}")))?;
    Ok(Box::new(move |c: &mut ScheduleConfig| {
        let broken = |problems: String| AuditError::Rewrite {
            schedule: c.schedule.clone(),
            config_version: c.config_version,
            problems,
        };
        // A config the processor refused is replayed as it was (refused again); only a
        // change that breaks an accepted config is an error.
        if validate(c).is_err() {
            return Ok(());
        }
        let mut next = c.clone();
        if let Some(p) = &policy {
            next.policy = p.clone();
        }
        if !patch.is_empty() {
            let mut doc = ScheduleSpec::scalar_document(&next);
            for (k, v) in &patch {
                doc.insert(k.clone(), v.clone());
            }
            let spec =
                ScheduleSpec::from_value(Value::Object(doc)).map_err(|e| broken(e.to_string()))?;
            let mut patched = spec.to_config(&c.schedule, c.config_version, c.published_at_ms);
            patched.flavours = next.flavours.clone();
            patched.fallbacks = next.fallbacks.clone();
            next = patched;
        }
        validate(&next).map_err(|p| broken(describe_problems(&p)))?;
        *c = next;
        Ok(())
    }))
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
