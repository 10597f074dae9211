//! A partition's state and the one pure function that applies an input to it.
//!
//! The processor's state is event-sourced: a [`PartitionState`] is the fold of its journal,
//! and the journal is the sequence of inputs applied, in the order applied, each with its
//! position (restore: the processor's `journal`, with [`crate::reconcile`]).
//! [`PartitionState::apply`] is therefore both the live path and the restore path, and it
//! must be deterministic: no clock (time comes from the records, ticks included), no
//! unseeded randomness, no I/O, ordered maps only.
//!
//! What re-decides a schedule: a config change, an override starting or ending,
//! a forecast for its zone, a telemetry window closing, a forecast slot boundary, and a
//! decision about to expire. Every decision is emitted on the input that caused it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use carbonflow_schemas::codec::{record_name, wrong_record};
use carbonflow_schemas::records::{
    ConfigCommand, ConfigRejection, FieldProblem, Forecast, ForecastUsed, InputPosition,
    JournalEntry, JournalRecord, ManualOverride, Outcome, OverrideCancellation, OwnershipClaim,
    PrecisionFeed, ScheduleConfig, ScheduleDecision, ScheduleDeletion, TelemetryBucket,
    TelemetryWindow, Tick,
};
use carbonflow_schemas::topics::Topic;
use carbonflow_schemas::vocabulary::DecisionCause;
use carbonflow_schemas::{AvroRecord, CodecError, decode};
use serde::{Deserialize, Serialize};

use crate::decide::{DecisionContext, Delivered, decide, ledger_params};
use crate::forecast::ForecastSnapshot;
use crate::issued::IssuedDecision;
use crate::ledger::{CreditLedger, QualityAccount};
use crate::policy::{PolicyError, PolicyMemory};
use crate::validate::{validate, validate_override};

/// Version of the encoding of [`PartitionState`] inside snapshots (gzip-compressed JSON
/// since 3; since 4 the clock is moved by ticks alone; since 5 a schedule's last decision
/// is its record, base64). Bump it when the struct, its encoding or the meaning of a field
/// changes: restore then ignores snapshots of formats it cannot read
/// ([`STATE_FORMATS_READ`]) and replays the journal, which always works.
pub const STATE_FORMAT: i32 = 5;

/// Snapshot formats restore reads: format 4 differs from 5 only in how a decision is
/// written, and both forms are read.
pub const STATE_FORMATS_READ: [i32; 2] = [4, STATE_FORMAT];

/// Length of a telemetry window, event-time ms. Windows are aligned to multiples of it.
pub const TELEMETRY_WINDOW_MS: i64 = 5_000;

/// How long after a window's end a tick closes it, so that buckets of the same seconds
/// from other routers are still counted in it (later ones go to the next window: counted
/// once either way).
pub const LATE_GRACE_MS: i64 = 1_000;

/// How long before `valid_until` a decision is re-issued (at most half its validity).
pub const REFRESH_LEAD_MS: i64 = 5_000;

/// What [`Input::decode_record`] accepts, for its error.
const INPUT_RECORDS: &str =
    "processor input (config, override, deletion, forecast, telemetry bucket, tick or decision)";

/// One input of the processor, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A config, override or deletion from `schedule.config`.
    Config(ConfigCommand),
    /// A forecast from `carbon.forecasts`.
    Forecast(Forecast),
    /// A router's telemetry bucket from `request.telemetry`.
    Telemetry(TelemetryBucket),
    /// Time from `processor.ticks`.
    Tick(Tick),
    /// A decision found on `schedule.decisions` but not in the journal (produced just
    /// before a crash, its journal entry lost). Its version is taken so that no version is
    /// ever issued twice with different content.
    Adopted(Box<ScheduleDecision>),
}

impl Input {
    /// Decode a record read from `topic`. Only the processor's input topics hold inputs;
    /// a record of another type than its topic carries is refused, never guessed.
    pub fn decode(topic: Topic, bytes: &[u8]) -> Result<Self, CodecError> {
        match topic {
            Topic::Config => ConfigCommand::decode(bytes).map(Input::Config),
            Topic::Forecasts => decode(bytes).map(Input::Forecast),
            Topic::Telemetry => decode(bytes).map(Input::Telemetry),
            Topic::Ticks => decode(bytes).map(Input::Tick),
            Topic::Decisions => decode(bytes).map(|d| Input::Adopted(Box::new(d))),
            Topic::Rejections | Topic::Journal | Topic::Snapshots | Topic::DeadLetters => {
                Err(wrong_record(INPUT_RECORDS, bytes))
            }
        }
    }

    /// Decode a record by the name its schema carries (journal replays: the record says
    /// what it is, whatever topic names the deployment used).
    pub fn decode_record(bytes: &[u8]) -> Result<Self, CodecError> {
        let topic = match record_name(bytes)? {
            Forecast::FULL_NAME => Topic::Forecasts,
            TelemetryBucket::FULL_NAME => Topic::Telemetry,
            Tick::FULL_NAME => Topic::Ticks,
            ScheduleDecision::FULL_NAME => Topic::Decisions,
            ScheduleConfig::FULL_NAME
            | ManualOverride::FULL_NAME
            | ScheduleDeletion::FULL_NAME
            | OverrideCancellation::FULL_NAME => Topic::Config,
            _ => return Err(wrong_record(INPUT_RECORDS, bytes)),
        };
        Self::decode(topic, bytes)
    }

    /// Short name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Config(ConfigCommand::Config(_)) => "config",
            Input::Config(ConfigCommand::Override(_)) => "override",
            Input::Config(ConfigCommand::Delete(_)) => "delete",
            Input::Config(ConfigCommand::CancelOverride(_)) => "cancel-override",
            Input::Forecast(_) => "forecast",
            Input::Telemetry(_) => "telemetry",
            Input::Tick(_) => "tick",
            Input::Adopted(_) => "adopted",
        }
    }
}

/// What applying an input asks the shell to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A new decision for `schedule.decisions`: `issued` holds its record, which the
    /// state keeps as the schedule's latest.
    Decision {
        /// The decision.
        decision: Arc<ScheduleDecision>,
        /// Its record.
        issued: IssuedDecision,
    },
    /// A refused config or override for `schedule.rejections`.
    Rejection(ConfigRejection),
    /// A deleted schedule: a tombstone for `schedule.decisions`.
    Removed {
        /// `namespace/name`.
        schedule: String,
    },
    /// A decision was due but its policy's result is unusable; the previous decision
    /// stays in force and nothing in the schedule's state changed.
    Refused {
        /// `namespace/name`.
        schedule: String,
        /// What made the decision due.
        cause: DecisionCause,
        /// Why it was refused.
        error: PolicyError,
    },
}

impl Output {
    /// The schedule this output concerns.
    pub fn schedule(&self) -> &str {
        match self {
            Output::Decision { decision, .. } => &decision.schedule,
            Output::Rejection(r) => &r.schedule,
            Output::Removed { schedule } | Output::Refused { schedule, .. } => schedule,
        }
    }
}

/// What [`PartitionState::admit`] made of a journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission<'r> {
    /// An ownership claim: `epoch` is now the partition's.
    Claimed {
        /// The claim's epoch.
        epoch: i64,
    },
    /// Entries to fold, in order.
    Entries(&'r [JournalEntry]),
    /// Entries a superseded owner of `epoch` wrote after a newer claim: not folded.
    Fenced {
        /// The superseded owner's epoch.
        epoch: i64,
        /// How many entries the record held.
        entries: usize,
    },
}

/// Telemetry of the window being filled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenWindow {
    /// Window start, epoch ms (a multiple of [`TELEMETRY_WINDOW_MS`]).
    pub start_ms: i64,
    /// Window end, epoch ms.
    pub end_ms: i64,
    /// Answered requests per flavour (success, client error or served by fallback).
    pub served: BTreeMap<String, i64>,
    /// Every request of the window, whatever its outcome.
    pub requests: i64,
}

/// Everything the processor keeps about one schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Validated config in force (`None` before the first or after a deletion). Boxed,
    /// and the last decision behind an `Arc`: a partition's map stores its schedules
    /// inline, and a small state per schedule keeps 100,000 of them in a few hundred
    /// megabytes.
    pub config: Option<Box<ScheduleConfig>>,
    /// Manual override, while it lives.
    pub manual: Option<ManualOverride>,
    /// The credit ledger.
    pub ledger: CreditLedger,
    /// Exact delivered quality against the promise in force (what carbon-optimal plans on).
    #[serde(default)]
    pub quality: QualityAccount,
    /// Policy memory.
    pub memory: PolicyMemory,
    /// Last version issued (kept across deletions so versions never go backwards).
    pub version: i64,
    /// Last decision issued, as its record (shared with the shell's read model).
    pub last_decision: Option<IssuedDecision>,
    /// End of the forecast slot that was current at the last decision.
    pub slot_end_ms: Option<i64>,
    /// Telemetry window being filled.
    pub window: Option<OpenWindow>,
    /// Requests of every telemetry bucket applied, all outcomes (audit: each counted once).
    pub requests_seen: i64,
    /// Answered requests accounted in the ledger through closed windows.
    pub requests_accounted: i64,
    /// Request rate of the last closed window, requests/s.
    pub observed_rate: Option<f64>,
    /// The last closed telemetry window: what was actually delivered, per flavour.
    #[serde(default)]
    pub last_window: Option<DeliveredWindow>,
    /// Emissions of every closed window, against always-full-precision.
    #[serde(default)]
    pub emissions: EmissionsAccount,
}

/// Answered requests per flavour of one closed telemetry window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveredWindow {
    /// Window start, epoch ms.
    pub start_ms: i64,
    /// Window end, epoch ms.
    pub end_ms: i64,
    /// Answered requests per configured flavour.
    pub served: BTreeMap<String, i64>,
}

impl DeliveredWindow {
    /// Share of the answered requests each flavour took, in `[0, 1]` (empty if none).
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let total: i64 = self.served.values().sum();
        self.served
            .iter()
            .filter(|_| total > 0)
            .map(|(f, n)| (f.clone(), *n as f64 / total as f64))
            .collect()
    }
}

/// Emissions index of the requests served, with the reference's accounting (section 9.2):
/// each window adds `intensity_now × Σ requests_f × relative_energy_f`. Multiply by the
/// kWh of one full-precision request to get grams. Windows closed while no forecast was
/// known add nothing to either side, so the saving is never overstated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EmissionsAccount {
    /// What the requests as served emitted (g/kWh × full-precision-request energy).
    pub delivered: f64,
    /// What the same requests would have emitted all served at full precision.
    pub full_precision: f64,
}

impl EmissionsAccount {
    /// The one definition of emissions, used for delivered and for commanded requests:
    /// `requests` as `(relative energy of the flavour that serves them, request count)`
    /// pairs, served at carbon `intensity`, against the same requests all served at
    /// `full_energy`, the relative energy of the most precise flavour.
    pub fn of(
        intensity: f64,
        full_energy: f64,
        requests: impl IntoIterator<Item = (f64, f64)>,
    ) -> Self {
        let (mut count, mut energy) = (0.0, 0.0);
        for (e, n) in requests {
            count += n;
            energy += n * e;
        }
        Self {
            delivered: intensity * energy,
            full_precision: intensity * full_energy * count,
        }
    }

    /// Fraction saved against full precision, `None` before anything was accounted.
    pub fn saved_fraction(&self) -> Option<f64> {
        (self.full_precision > 0.0).then(|| 1.0 - self.delivered / self.full_precision)
    }

    /// Both sides summed.
    pub fn plus(&self, other: &EmissionsAccount) -> EmissionsAccount {
        EmissionsAccount {
            delivered: self.delivered + other.delivered,
            full_precision: self.full_precision + other.full_precision,
        }
    }

    /// What was accounted after `earlier`, a previous reading of the same account.
    pub fn since(&self, earlier: &EmissionsAccount) -> EmissionsAccount {
        EmissionsAccount {
            delivered: self.delivered - earlier.delivered,
            full_precision: self.full_precision - earlier.full_precision,
        }
    }
}

/// The state of one schedule partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Schedule partition number.
    pub partition: i32,
    /// Event-time clock, epoch ms: the latest tick applied (only ticks move it).
    pub clock_ms: i64,
    /// Ownership epoch of the latest claim folded in (0 before any): the epoch of the
    /// owner whose entries the fold accepts, and the one its decisions carry.
    #[serde(default)]
    pub epoch: i64,
    /// Next offset to read per input `topic:partition` (last applied + 1, Kafka's
    /// committed-offset convention).
    pub positions: BTreeMap<String, i64>,
    /// Latest forecast per zone.
    pub forecasts: BTreeMap<String, Forecast>,
    /// Schedules by `namespace/name`. Boxed: the map's nodes hold 11 entries and are
    /// often half full (ids arrive in order, and a node splits at its middle), so an
    /// inline state wasted about 0.3 KB per schedule in empty slots.
    pub schedules: BTreeMap<String, Box<ScheduleState>>,
}

fn position_key(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// Decisions an input made due for many schedules at once, not made yet: drawn in
/// batches with [`Fanout::decide`], in order, before the next input is applied.
#[derive(Debug, Default)]
pub struct Fanout {
    due: VecDeque<Due>,
    pos: Option<InputPosition>,
}

/// A decision due: the schedule, why, and the telemetry window it closed, if any.
type Due = (String, DecisionCause, Option<TelemetryWindow>);

impl Fanout {
    fn of(due: Vec<Due>, pos: &InputPosition) -> Self {
        Self {
            due: due.into(),
            pos: Some(pos.clone()),
        }
    }

    /// Whether every decision due has been made.
    pub fn is_done(&self) -> bool {
        self.due.is_empty()
    }

    /// Make the next `most` decisions due in `state` (the state the fan-out came from).
    pub fn decide(&mut self, state: &mut PartitionState, most: usize) -> Vec<Output> {
        let Some(pos) = &self.pos else {
            return vec![];
        };
        let n = most.min(self.due.len());
        self.due
            .drain(..n)
            .flat_map(|(id, cause, window)| state.decide(&id, cause, pos, window))
            .collect()
    }
}

impl PartitionState {
    /// Empty state of `partition`.
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    /// Next offset to read from `topic`/`partition` (0 if never read).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.positions
            .get(&position_key(topic, partition))
            .copied()
            .unwrap_or(0)
    }

    /// Whether the input at `pos` is already part of this state.
    pub fn already_applied(&self, pos: &InputPosition) -> bool {
        pos.offset < self.next_offset(&pos.topic, pos.partition)
    }

    /// Advance past the record at `pos` without applying it (it could not be decoded and
    /// went to the dead-letter topic).
    pub fn skip(&mut self, pos: &InputPosition) {
        // +1: a position is the next offset to read, so a restart resumes after this record.
        self.positions
            .insert(position_key(&pos.topic, pos.partition), pos.offset + 1);
    }

    /// Admit one journal record, read at journal offset `offset`, into the fold: the one
    /// rule of fencing (DESIGN invariant 4), for restore and audit alike. A claim makes
    /// its epoch the partition's; entries of an older epoch than the latest claim were
    /// written by a superseded owner after it was fenced, and are not folded: the inputs
    /// they applied are applied again by the new owner from the positions it restored.
    /// Entries of a newer epoch than any claim read (their claim lost to a journal gap)
    /// take their epoch. The entries returned are to be [`replay`](Self::replay)ed in order.
    pub fn admit<'r>(&mut self, offset: i64, record: &'r JournalRecord) -> Admission<'r> {
        match record {
            JournalRecord::Claim(_) => {
                self.epoch = self.epoch.max(OwnershipClaim::epoch_at(offset));
                Admission::Claimed { epoch: self.epoch }
            }
            JournalRecord::Entries { epoch, entries } if *epoch < self.epoch => Admission::Fenced {
                epoch: *epoch,
                entries: entries.len(),
            },
            JournalRecord::Entries { epoch, entries } => {
                self.epoch = *epoch;
                Admission::Entries(entries)
            }
        }
    }

    /// Apply one journal entry (restore, audit): the input it holds at its position. An
    /// entry already folded in produces nothing; one whose record no longer decodes only
    /// advances the position, as the live path did when it dead-lettered that record.
    pub fn replay(&mut self, entry: &JournalEntry) -> Vec<Output> {
        if self.already_applied(&entry.input) {
            return vec![];
        }
        match Input::decode_record(&entry.record) {
            Ok(input) => self.apply(&input, &entry.input),
            Err(_) => {
                self.skip(&entry.input);
                vec![]
            }
        }
    }

    /// Apply one input read at `pos`; returns what to write. Callers skip inputs for
    /// which [`already_applied`](Self::already_applied) holds.
    pub fn apply(&mut self, input: &Input, pos: &InputPosition) -> Vec<Output> {
        let (mut outputs, mut fanout) = self.apply_staged(input, pos);
        outputs.extend(fanout.decide(self, usize::MAX));
        outputs
    }

    /// [`apply`](Self::apply) in stages: the outputs of the input itself, and the
    /// decisions it made due for many schedules at once (a forecast for their zone, a
    /// tick) as a [`Fanout`] to be drawn in batches, so that the first can be written
    /// while the rest are made. Drawing the whole fan-out before applying another input
    /// gives exactly `apply`'s outputs, in its order.
    pub fn apply_staged(&mut self, input: &Input, pos: &InputPosition) -> (Vec<Output>, Fanout) {
        let none = Fanout::default();
        self.skip(pos);
        // Only ticks move the clock: the processor writes them, and an input's own event
        // time (any writer's clock) must not be able to move every schedule's time.
        if let Input::Tick(t) = input {
            self.clock_ms = self.clock_ms.max(t.at_ms);
        }
        match input {
            Input::Config(ConfigCommand::Config(c)) => (self.apply_config(c, pos), none),
            Input::Config(ConfigCommand::Override(o)) => (self.apply_override(o, pos), none),
            Input::Config(ConfigCommand::Delete(d)) => {
                let Some(s) = self.schedules.get_mut(&d.schedule) else {
                    return (vec![], none);
                };
                // Keep the version: a re-created schedule continues after it.
                **s = ScheduleState {
                    version: s.version,
                    ..ScheduleState::default()
                };
                let removed = Output::Removed {
                    schedule: d.schedule.clone(),
                };
                (vec![removed], none)
            }
            Input::Config(ConfigCommand::CancelOverride(c)) => {
                // Ending an override that is not in force changes nothing.
                let Some(s) = self
                    .schedules
                    .get_mut(&c.schedule)
                    .filter(|s| s.manual.is_some())
                else {
                    return (vec![], none);
                };
                s.manual = None;
                let outputs = self.decide(&c.schedule, DecisionCause::OverrideEnd, pos, None);
                (outputs, none)
            }
            Input::Forecast(f) => (vec![], self.apply_forecast(f, pos)),
            Input::Telemetry(b) => (self.apply_telemetry(b, pos), none),
            Input::Tick(_) => (vec![], self.apply_tick(pos)),
            Input::Adopted(d) => {
                let s = self.schedules.entry(d.schedule.clone()).or_default();
                s.version = s.version.max(d.version);
                (vec![], none)
            }
        }
    }

    fn reject(
        &self,
        schedule: &str,
        config_version: i64,
        pos: &InputPosition,
        reasons: Vec<FieldProblem>,
    ) -> Vec<Output> {
        vec![Output::Rejection(ConfigRejection {
            schedule: schedule.to_string(),
            config_version,
            rejected_at_ms: self.clock_ms,
            input: pos.clone(),
            reasons,
        })]
    }

    fn apply_config(&mut self, c: &ScheduleConfig, pos: &InputPosition) -> Vec<Output> {
        let valid = match validate(c) {
            Ok(v) => v,
            Err(problems) => return self.reject(&c.schedule, c.config_version, pos, problems),
        };
        let in_force = self
            .schedules
            .get(&c.schedule)
            .and_then(|s| s.config.as_ref())
            .map(|c| c.config_version);
        if let Some(v) = in_force.filter(|v| c.config_version <= *v) {
            let problem = FieldProblem {
                field: "config_version".into(),
                rule: format!("must be greater than {v}, the version in force"),
            };
            return self.reject(&c.schedule, c.config_version, pos, vec![problem]);
        }
        let s = self.schedules.entry(c.schedule.clone()).or_default();
        s.ledger.clamp_to(&ledger_params(&valid));
        let same_promise = s.config.as_ref().is_some_and(|held| {
            held.policy == valid.policy && held.target_error == valid.target_error
        });
        if !same_promise {
            s.quality = QualityAccount::since(self.clock_ms);
        }
        s.config = Some(Box::new(valid));
        self.decide(&c.schedule, DecisionCause::Config, pos, None)
    }

    fn apply_override(&mut self, o: &ManualOverride, pos: &InputPosition) -> Vec<Output> {
        let Some(config) = self
            .schedules
            .get(&o.schedule)
            .and_then(|s| s.config.as_ref())
        else {
            let p = FieldProblem {
                field: "schedule".into(),
                rule: format!("{} has no config in force", o.schedule),
            };
            return self.reject(&o.schedule, 0, pos, vec![p]);
        };
        if let Err(problems) = validate_override(o, Some(config), Some(self.clock_ms)) {
            return self.reject(&o.schedule, 0, pos, problems);
        }
        let previous = self
            .schedules
            .get_mut(&o.schedule)
            .and_then(|s| s.manual.replace(o.clone()));
        let outputs = self.decide(&o.schedule, DecisionCause::Override, pos, None);
        // An override whose weights give no usable decision is refused like an invalid
        // one: the override in force before stays, and the publisher hears why.
        if let [Output::Refused { error, .. }] = outputs.as_slice() {
            let problem = FieldProblem {
                field: "weights".into(),
                rule: format!("must give a usable decision: {error}"),
            };
            if let Some(s) = self.schedules.get_mut(&o.schedule) {
                s.manual = previous;
            }
            return self.reject(&o.schedule, 0, pos, vec![problem]);
        }
        outputs
    }

    fn apply_forecast(&mut self, f: &Forecast, pos: &InputPosition) -> Fanout {
        if self
            .forecasts
            .get(&f.zone)
            .is_some_and(|held| held.issued_at_ms > f.issued_at_ms)
        {
            return Fanout::default(); // an older forecast arriving late changes nothing
        }
        self.forecasts.insert(f.zone.clone(), f.clone());
        let due = self
            .schedules
            .iter()
            .filter(|(_, s)| s.config.as_ref().is_some_and(|c| c.zone == f.zone))
            .map(|(id, _)| (id.clone(), DecisionCause::Forecast, None))
            .collect();
        Fanout::of(due, pos)
    }

    fn apply_telemetry(&mut self, b: &TelemetryBucket, pos: &InputPosition) -> Vec<Output> {
        // Counted even before the schedule's config is applied: the config and telemetry
        // topics are read concurrently, so after a restart telemetry can be read first.
        // The window is accounted when it closes, against the config then in force.
        let s = self.schedules.entry(b.schedule.clone()).or_default();
        let mut closed = None;
        if s.window
            .as_ref()
            .is_some_and(|w| b.bucket_start_ms >= w.end_ms)
        {
            closed = close_window(s, &self.forecasts);
        }
        let w = s.window.get_or_insert_with(|| {
            let start = b.bucket_start_ms.div_euclid(TELEMETRY_WINDOW_MS) * TELEMETRY_WINDOW_MS;
            OpenWindow {
                start_ms: start,
                end_ms: start + TELEMETRY_WINDOW_MS,
                ..OpenWindow::default()
            }
        });
        for c in &b.counts {
            let count = c.count.max(0);
            w.requests += count;
            s.requests_seen += count;
            // Only answered requests deliver a precision; failures deliver none.
            if matches!(
                c.outcome,
                Outcome::Success | Outcome::ClientError | Outcome::Fallback
            ) {
                *w.served.entry(c.flavour.clone()).or_default() += count;
            }
        }
        match closed {
            Some(window) if s.config.is_some() => {
                self.decide(&b.schedule, DecisionCause::Telemetry, pos, Some(window))
            }
            _ => vec![],
        }
    }

    fn apply_tick(&mut self, pos: &InputPosition) -> Fanout {
        let clock = self.clock_ms;
        let mut due = Vec::new();
        for (id, s) in &mut self.schedules {
            let Some(valid_for_s) = s.config.as_ref().map(|c| c.valid_for_seconds) else {
                continue;
            };
            // One decision per schedule and tick, named after the most specific cause.
            let mut cause = None;
            if let Some(d) = &s.last_decision {
                // Only a decision whose validity ran out by `valid_for` is refreshed early;
                // one bounded by a slot end or an override's end is re-decided when that
                // boundary passes (below), since deciding earlier would change nothing.
                let by_validity = d.valid_until_ms()
                    == (d.decided_at_ms() + valid_for_s * 1000).div_euclid(1000) * 1000;
                let lead = REFRESH_LEAD_MS.min(valid_for_s * 1000 / 2);
                if by_validity && d.valid_until_ms() - lead <= clock {
                    cause = Some(DecisionCause::Refresh);
                }
            }
            let mut window = None;
            if s.window
                .as_ref()
                .is_some_and(|w| w.end_ms + LATE_GRACE_MS <= clock)
            {
                window = close_window(s, &self.forecasts);
                cause = Some(DecisionCause::Telemetry);
            }
            if s.slot_end_ms.is_some_and(|end| end <= clock) {
                cause = Some(DecisionCause::Slot);
            }
            if s.manual
                .as_ref()
                .is_some_and(|m| m.expires_at_ms() <= clock)
            {
                s.manual = None;
                cause = Some(DecisionCause::OverrideEnd);
            }
            if let Some(cause) = cause {
                due.push((id.clone(), cause, window));
            }
        }
        Fanout::of(due, pos)
    }

    /// Decide `id` now; the version advances only when a decision is made.
    fn decide(
        &mut self,
        id: &str,
        cause: DecisionCause,
        pos: &InputPosition,
        telemetry_window: Option<TelemetryWindow>,
    ) -> Vec<Output> {
        let clock = self.clock_ms;
        let Some(s) = self.schedules.get_mut(id).map(|s| &mut **s) else {
            return vec![];
        };
        let ScheduleState {
            config: Some(config),
            manual,
            ledger,
            memory,
            ..
        } = s
        else {
            return vec![];
        };
        let (mut forecast, forecast_used) = match self.forecasts.get(&config.zone) {
            Some(f) => {
                let snap = ForecastSnapshot::at(f, clock);
                let used = snap.used(f);
                (snap, Some(used))
            }
            None => (ForecastSnapshot::default(), None),
        };
        // forecast-aware-global's demand factor compares the forecast demand ahead with
        // the request rate actually observed (DESIGN: observed rate, not a constant).
        if forecast.demand_next.is_some() {
            forecast.demand_now = s.observed_rate.or(forecast.demand_now);
        }
        let manual = manual.as_ref().filter(|m| m.expires_at_ms() > clock);
        let version = s.version + 1;
        let ctx = DecisionContext {
            config,
            forecast: &forecast,
            forecast_used,
            manual,
            at_ms: clock,
            version,
            epoch: self.epoch,
            cause,
            input: pos.clone(),
            telemetry_window,
            delivered: Delivered {
                quality: delivered_so_far(s.quality, s.window.as_ref(), config),
                observed_rate: s.observed_rate,
                window_seconds: TELEMETRY_WINDOW_MS as f64 / 1000.0,
            },
        };
        // A refused decision changes nothing: the one in force stays, and the shell logs
        // and counts the refusal.
        let d = match decide(&ctx, ledger, memory) {
            Ok(d) => d,
            Err(error) => {
                return vec![Output::Refused {
                    schedule: id.to_string(),
                    cause,
                    error,
                }];
            }
        };
        let issued = match IssuedDecision::encode(&d) {
            Ok(issued) => issued,
            Err(e) => {
                return vec![Output::Refused {
                    schedule: id.to_string(),
                    cause,
                    error: PolicyError::Unencodable {
                        schedule: id.to_string(),
                        detail: e.to_string(),
                    },
                }];
            }
        };
        s.version = version;
        s.slot_end_ms = forecast.current_slot_end_ms;
        s.last_decision = Some(issued.clone());
        vec![Output::Decision {
            decision: Arc::new(d),
            issued,
        }]
    }
}

/// The quality account with the open window's answered requests added: what a plan made
/// now must count as delivered, though the ledger accounts them only when the window closes.
fn delivered_so_far(
    account: QualityAccount,
    open: Option<&OpenWindow>,
    config: &ScheduleConfig,
) -> QualityAccount {
    let mut account = account;
    let Some(w) = open else { return account };
    for (name, count) in &w.served {
        if let Some(f) = config.flavours.iter().find(|f| &f.name == name) {
            account.record(w.start_ms, *count, f.precision, config.target_error);
        }
    }
    account
}

/// Close the open window: account its answered requests in the ledger (telemetry feed)
/// and return what the next decision records about it.
fn close_window(
    s: &mut ScheduleState,
    forecasts: &BTreeMap<String, Forecast>,
) -> Option<TelemetryWindow> {
    let w = s.window.take()?;
    // No config (never created, or deleted): no flavour precisions to account against.
    let config = s.config.as_ref()?;
    let (mut served, mut weighted) = (0_i64, 0.0);
    let mut by_energy = Vec::with_capacity(w.served.len());
    let mut delivered = DeliveredWindow {
        start_ms: w.start_ms,
        end_ms: w.end_ms,
        served: BTreeMap::new(),
    };
    for (name, count) in &w.served {
        if let Some(f) = config.flavours.iter().find(|f| &f.name == name) {
            served += count;
            weighted += *count as f64 * f.precision;
            by_energy.push((f.relative_energy, *count as f64));
            delivered.served.insert(name.clone(), *count);
        }
    }
    // Full precision is the most precise flavour's energy (1.0 in every sample config).
    let full_energy = config
        .flavours
        .iter()
        .max_by(|a, b| a.precision.total_cmp(&b.precision))
        .map_or(1.0, |f| f.relative_energy);
    let intensity = forecasts
        .get(&config.zone)
        .and_then(|f| ForecastSnapshot::at(f, w.end_ms).intensity_now);
    if let Some(g) = intensity {
        s.emissions = s
            .emissions
            .plus(&EmissionsAccount::of(g, full_energy, by_energy));
    }
    s.last_window = Some(delivered);
    let realised = if served > 0 {
        weighted / served as f64
    } else {
        0.0
    };
    if served > 0 && config.precision_feed == PrecisionFeed::Telemetry {
        s.ledger
            .update(&ledger_params(config), realised, w.end_ms.max(0));
    }
    s.quality
        .record(w.start_ms, served, realised, config.target_error);
    s.requests_accounted += served;
    s.observed_rate = Some(w.requests as f64 * 1000.0 / (w.end_ms - w.start_ms) as f64);
    Some(TelemetryWindow {
        start_ms: w.start_ms,
        end_ms: w.end_ms,
        requests: served,
        realised_precision: realised,
    })
}

/// The forecast provenance a decision records.
impl ForecastSnapshot {
    /// Provenance of this view of `forecast`.
    pub fn used(&self, forecast: &Forecast) -> ForecastUsed {
        ForecastUsed {
            issuer: forecast.issuer.clone(),
            issued_at_ms: forecast.issued_at_ms,
            intensity_now: self.intensity_now,
            intensity_next: self.intensity_next,
            slots: self.slots.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Given / when / then over the pure state machine.

    use super::*;
    use carbonflow_schemas::records::{FlavourWeight, OutcomeCount, ScheduleDeletion};
    use carbonflow_schemas::testing::samples;

    const T0: i64 = 1_763_467_200_000;

    struct Given {
        state: PartitionState,
        offset: i64,
    }

    /// Given a partition whose clock a tick set to `T0`.
    fn given() -> Given {
        let mut g = Given {
            state: PartitionState::new(0),
            offset: 0,
        };
        g.tick(T0);
        g
    }

    impl Given {
        fn when(&mut self, topic: &str, input: Input) -> Vec<Output> {
            self.offset += 1;
            let pos = InputPosition {
                topic: topic.into(),
                partition: 0,
                offset: self.offset,
            };
            assert!(!self.state.already_applied(&pos));
            self.state.apply(&input, &pos)
        }
        fn config(&mut self, c: ScheduleConfig) -> Vec<Output> {
            self.when(
                "schedule.config",
                Input::Config(ConfigCommand::Config(Box::new(c))),
            )
        }
        fn tick(&mut self, at_ms: i64) -> Vec<Output> {
            self.when(
                "processor.ticks",
                Input::Tick(Tick {
                    at_ms,
                    source: "test".into(),
                }),
            )
        }
        fn bucket(&mut self, start_ms: i64, counts: &[(&str, Outcome, i64)]) -> Vec<Output> {
            let mut b = samples::telemetry_bucket();
            b.bucket_start_ms = start_ms;
            b.counts = counts
                .iter()
                .map(|(f, o, c)| OutcomeCount {
                    flavour: (*f).into(),
                    outcome: *o,
                    count: *c,
                })
                .collect();
            self.when("request.telemetry", Input::Telemetry(b))
        }
        fn schedule(&self) -> &ScheduleState {
            &self.state.schedules["default/demo"]
        }
    }

    fn config(version: i64, at_ms: i64) -> ScheduleConfig {
        let mut c = samples::schedule_config();
        c.config_version = version;
        c.published_at_ms = at_ms;
        c.precision_feed = PrecisionFeed::Telemetry;
        c
    }

    fn decision(out: &[Output]) -> &ScheduleDecision {
        match out {
            [Output::Decision { decision, .. }] => decision,
            other => panic!("expected one decision, got {other:?}"),
        }
    }

    #[test]
    fn a_fan_out_drawn_in_batches_gives_what_apply_gives() {
        // Given five schedules of the forecast's zone
        let mut g = given();
        for i in 0..5 {
            let mut c = config(1, T0);
            c.schedule = format!("default/s{i}");
            g.config(c);
        }
        let mut staged = g.state.clone();
        let mut f = samples::forecast();
        f.issued_at_ms = T0 + 1000;
        let input = Input::Forecast(f);
        // When one copy applies the forecast whole and the other draws its fan-out two
        // decisions at a time
        let whole = g.when("carbon.forecasts", input.clone());
        let pos = InputPosition {
            topic: "carbon.forecasts".into(),
            partition: 0,
            offset: g.offset,
        };
        let (mut drawn, mut fanout) = staged.apply_staged(&input, &pos);
        let mut batches = 0;
        while !fanout.is_done() {
            drawn.extend(fanout.decide(&mut staged, 2));
            batches += 1;
        }
        // Then the decisions and the states are the same
        assert_eq!(batches, 3);
        assert_eq!(whole.len(), 5);
        assert_eq!(drawn, whole);
        assert_eq!(staged, g.state);
    }

    #[test]
    fn config_then_forecast_each_decide_with_increasing_versions() {
        let mut g = given();
        let d1 = decision(&g.config(config(1, T0))).clone();
        assert_eq!((d1.version, d1.provenance.cause.as_str()), (1, "config"));
        assert!(d1.provenance.forecast.is_none());
        let mut f = samples::forecast();
        f.issued_at_ms = T0 + 1000;
        let out = g.when("carbon.forecasts", Input::Forecast(f));
        let d2 = decision(&out);
        assert_eq!((d2.version, d2.provenance.cause.as_str()), (2, "forecast"));
        assert_eq!(
            d2.provenance
                .forecast
                .as_ref()
                .and_then(|u| u.intensity_now),
            Some(180.0)
        );
        assert_eq!(
            d2.provenance.input.offset, 3,
            "after the tick and the config"
        );
    }

    #[test]
    fn invalid_config_is_rejected_and_the_previous_stays() {
        let mut g = given();
        g.config(config(1, T0));
        let mut bad = config(2, T0 + 1);
        bad.credit_min = 5.0;
        let out = g.config(bad);
        let [Output::Rejection(r)] = out.as_slice() else {
            panic!("expected a rejection, got {out:?}")
        };
        assert!(r.reasons.iter().any(|p| p.field == "credit_min"), "{r:?}");
        assert_eq!(
            g.schedule().config.as_ref().map(|c| c.config_version),
            Some(1)
        );
        // A stale version is refused too.
        let out = g.config(config(1, T0 + 2));
        assert!(
            matches!(out.as_slice(), [Output::Rejection(r)] if r.reasons[0].field == "config_version")
        );
        assert_eq!(g.schedule().version, 1);
    }

    #[test]
    fn a_window_closes_on_a_later_bucket_and_accounts_exact_counts() {
        let mut g = given();
        g.config(config(1, T0));
        let s = T0 + 10_000; // a window boundary
        assert!(
            g.bucket(s, &[("precision-100", Outcome::Success, 30)])
                .is_empty()
        );
        assert!(
            g.bucket(
                s + 1000,
                &[
                    ("precision-30", Outcome::Success, 10),
                    ("precision-50", Outcome::ServerError, 5)
                ]
            )
            .is_empty()
        );
        let out = g.bucket(
            s + TELEMETRY_WINDOW_MS,
            &[("precision-50", Outcome::Success, 1)],
        );
        let d = decision(&out);
        let w = d.provenance.telemetry_window.as_ref().expect("window");
        assert_eq!((w.start_ms, w.end_ms, w.requests), (s, s + 5000, 40));
        let p = (30.0 * 1.0 + 10.0 * 0.3) / 40.0;
        assert!((w.realised_precision - p).abs() < 1e-12);
        let st = g.schedule();
        assert_eq!((st.requests_seen, st.requests_accounted), (46, 40));
        let expected = CreditLedger::delta(&ledger_params(&config(1, T0)), p);
        assert!((st.ledger.balance() - expected).abs() < 1e-12);
        assert_eq!(d.provenance.ledger_after.balance, st.ledger.balance());
    }

    #[test]
    fn closed_windows_record_delivered_shares_and_emissions_against_full_precision() {
        let mut g = given();
        g.config(config(1, T0));
        // No forecast yet: shares are known, emissions are not accounted.
        g.bucket(T0, &[("precision-100", Outcome::Success, 3)]);
        g.tick(T0 + TELEMETRY_WINDOW_MS + LATE_GRACE_MS);
        assert_eq!(g.schedule().emissions, EmissionsAccount::default());
        assert_eq!(g.schedule().emissions.saved_fraction(), None);

        let mut f = samples::forecast(); // 180 g/kWh from T0
        f.issued_at_ms = T0 + 6_000;
        g.when("carbon.forecasts", Input::Forecast(f));
        let s = T0 + 2 * TELEMETRY_WINDOW_MS;
        g.bucket(
            s,
            &[
                ("precision-100", Outcome::Success, 30),
                ("precision-50", Outcome::Success, 10),
                ("precision-50", Outcome::ServerError, 5),
            ],
        );
        g.tick(s + TELEMETRY_WINDOW_MS + LATE_GRACE_MS);
        let st = g.schedule();
        let w = st.last_window.as_ref().expect("closed window");
        assert_eq!((w.start_ms, w.end_ms), (s, s + TELEMETRY_WINDOW_MS));
        assert_eq!(w.shares()["precision-100"], 0.75);
        assert_eq!(w.shares()["precision-50"], 0.25);
        let energy_50 = config(1, T0).flavours[1].relative_energy;
        let delivered = 180.0 * (30.0 + 10.0 * energy_50);
        assert!((st.emissions.delivered - delivered).abs() < 1e-9);
        assert!((st.emissions.full_precision - 180.0 * 40.0).abs() < 1e-9);
        let saved = st.emissions.saved_fraction().expect("accounted");
        assert!((saved - (1.0 - delivered / 7200.0)).abs() < 1e-12);
    }

    #[test]
    fn telemetry_read_before_its_config_is_still_accounted() {
        let mut g = given();
        assert!(
            g.bucket(T0, &[("precision-50", Outcome::Success, 8)])
                .is_empty()
        );
        g.config(config(1, T0 + 100));
        let d = decision(&g.tick(T0 + TELEMETRY_WINDOW_MS + LATE_GRACE_MS)).clone();
        let w = d.provenance.telemetry_window.expect("window");
        assert_eq!((w.requests, w.realised_precision), (8, 0.5));
        assert_eq!(g.schedule().requests_seen, 8);
    }

    /// Given a schedule with one bucket in its open window and its config's decision.
    fn given_a_window_and_a_decision() -> (Given, ScheduleDecision) {
        let mut g = given();
        let mut c = config(1, T0);
        c.valid_for_seconds = 60;
        g.config(c);
        g.bucket(T0, &[("precision-100", Outcome::Success, 3)]);
        let d = g
            .schedule()
            .last_decision
            .as_ref()
            .expect("config decision")
            .decode()
            .expect("decodes");
        (g, d)
    }

    #[test]
    fn a_tick_past_the_late_grace_closes_the_window() {
        let (mut g, _) = given_a_window_and_a_decision();
        assert!(
            g.tick(T0 + TELEMETRY_WINDOW_MS).is_empty(),
            "grace not over"
        );
        let d = decision(&g.tick(T0 + TELEMETRY_WINDOW_MS + LATE_GRACE_MS)).clone();
        assert_eq!(d.provenance.cause, "telemetry");
    }

    #[test]
    fn a_tick_near_expiry_refreshes_the_decision() {
        let (mut g, _) = given_a_window_and_a_decision();
        let d = decision(&g.tick(T0 + TELEMETRY_WINDOW_MS + LATE_GRACE_MS)).clone();
        assert!(g.tick(T0 + 50_000).is_empty());
        let d = decision(&g.tick(d.valid_until_ms - REFRESH_LEAD_MS)).clone();
        assert_eq!(d.provenance.cause, "refresh");
    }

    #[test]
    fn a_tick_at_the_slot_boundary_re_decides_with_the_next_slot() {
        let (mut g, _) = given_a_window_and_a_decision();
        let d = decision(&g.tick(T0 + TELEMETRY_WINDOW_MS + LATE_GRACE_MS)).clone();
        // With a forecast, validity ends at the slot end and the boundary re-decides.
        let mut f = samples::forecast();
        f.issued_at_ms = d.decided_at_ms;
        f.points[0].start_ms = T0;
        f.points[0].end_ms = d.decided_at_ms + 20_000;
        f.points[1].start_ms = f.points[0].end_ms;
        let boundary = f.points[0].end_ms;
        let d = decision(&g.when("carbon.forecasts", Input::Forecast(f))).clone();
        assert_eq!(d.valid_until_ms, boundary.div_euclid(1000) * 1000);
        assert!(
            g.tick(boundary - 1).is_empty(),
            "no refresh inside the slot"
        );
        let out = g.tick(boundary);
        let d = decision(&out);
        assert_eq!(d.provenance.cause, "slot");
        assert_eq!(
            d.provenance.forecast.as_ref().and_then(|u| u.intensity_now),
            Some(200.5)
        );
    }

    #[test]
    fn an_override_whose_weights_sum_to_infinity_is_rejected_and_changes_nothing() {
        let mut g = given();
        g.config(config(1, T0));
        let mut o = samples::manual_override();
        o.issued_at_ms = T0;
        for w in &mut o.weights {
            w.weight = 1e308;
        }
        let out = g.when("schedule.config", Input::Config(ConfigCommand::Override(o)));
        assert!(
            matches!(out.as_slice(), [Output::Rejection(r)] if r.reasons[0].field == "weights"),
            "{out:?}"
        );
        assert!(g.schedule().manual.is_none());
    }

    #[test]
    fn a_cancellation_ends_the_override_at_once() {
        let mut g = given();
        g.config(config(1, T0));
        let mut o = samples::manual_override();
        o.issued_at_ms = T0;
        o.ttl_seconds = 3600;
        assert!(
            decision(&g.when("schedule.config", Input::Config(ConfigCommand::Override(o)))).manual
        );
        let cancel = OverrideCancellation {
            schedule: "default/demo".into(),
            issued_at_ms: T0 + 5000,
            reason: None,
        };
        let input = Input::Config(ConfigCommand::CancelOverride(cancel));
        let d = decision(&g.when("schedule.config", input.clone())).clone();
        assert_eq!(
            (d.manual, d.provenance.cause.as_str()),
            (false, "override-end")
        );
        assert!(g.schedule().manual.is_none());
        assert!(
            g.when("schedule.config", input).is_empty(),
            "cancelling again changes nothing"
        );
    }

    #[test]
    fn override_starts_and_ends_with_decisions() {
        let mut g = given();
        g.config(config(1, T0));
        let o = ManualOverride {
            schedule: "default/demo".into(),
            issued_at_ms: T0 + 1000,
            ttl_seconds: 30,
            weights: vec![FlavourWeight {
                flavour: "precision-30".into(),
                weight: 2.0,
            }],
            reason: None,
        };
        let out = g.when(
            "schedule.config",
            Input::Config(ConfigCommand::Override(o.clone())),
        );
        let d = decision(&out);
        assert!(d.manual);
        assert_eq!(d.valid_until_ms, T0 + 31_000);
        assert!(
            g.tick(T0 + 29_000).is_empty(),
            "no refresh before the override ends"
        );
        let w: Vec<i32> = d.flavours.iter().map(|f| f.weight_percent).collect();
        assert_eq!(w, vec![0, 0, 100]);
        let d = decision(&g.tick(T0 + 31_000)).clone();
        assert_eq!(d.provenance.cause, "override-end");
        assert!(!d.manual);
        // An override naming an unknown flavour is refused.
        let mut bad = o;
        bad.weights[0].flavour = "nope".into();
        bad.issued_at_ms = T0 + 40_000;
        let out = g.when(
            "schedule.config",
            Input::Config(ConfigCommand::Override(bad)),
        );
        assert!(
            matches!(out.as_slice(), [Output::Rejection(r)] if r.reasons[0].field == "weights[0].flavour")
        );
    }

    #[test]
    fn deletion_keeps_the_version_and_adoption_raises_it() {
        let mut g = given();
        g.config(config(1, T0));
        let out = g.when(
            "schedule.config",
            Input::Config(ConfigCommand::Delete(ScheduleDeletion {
                schedule: "default/demo".into(),
                issued_at_ms: T0 + 1,
            })),
        );
        assert!(matches!(out.as_slice(), [Output::Removed { .. }]));
        let mut orphan = samples::schedule_decision();
        orphan.schedule = "default/demo".into();
        orphan.version = 9;
        g.when("schedule.decisions", Input::Adopted(Box::new(orphan)));
        assert_eq!(decision(&g.config(config(2, T0 + 2))).version, 10);
    }

    /// A journal batch of `epoch` holding `inputs` (topic, offset, record).
    fn batch(epoch: i64, inputs: &[(&str, i64, Vec<u8>)]) -> JournalRecord {
        JournalRecord::Entries {
            epoch,
            entries: inputs
                .iter()
                .map(|(topic, offset, record)| JournalEntry {
                    partition: 0,
                    input: InputPosition {
                        topic: (*topic).into(),
                        partition: 0,
                        offset: *offset,
                    },
                    record: record.clone(),
                    decisions: vec![],
                })
                .collect(),
        }
    }

    fn encoded<T: AvroRecord>(record: &T) -> Vec<u8> {
        carbonflow_schemas::encode(record).expect("the sample encodes")
    }

    fn claim() -> JournalRecord {
        JournalRecord::Claim(samples::ownership_claim())
    }

    /// Fold `journal` (records at offsets 0, 1, ...) from an empty state.
    fn fold(journal: &[JournalRecord]) -> (PartitionState, Vec<Output>, usize) {
        let mut state = PartitionState::new(0);
        let (mut outputs, mut fenced) = (vec![], 0);
        for (offset, record) in journal.iter().enumerate() {
            match state.admit(offset as i64, record) {
                Admission::Entries(entries) => {
                    for e in entries {
                        outputs.extend(state.replay(e));
                    }
                }
                Admission::Fenced { entries, .. } => fenced += entries,
                Admission::Claimed { .. } => {}
            }
        }
        (state, outputs, fenced)
    }

    #[test]
    fn the_fold_ignores_what_a_superseded_owner_wrote_after_a_newer_claim() {
        let tick = encoded(&Tick {
            at_ms: T0,
            source: "test".into(),
        });
        let config = ConfigCommand::Config(Box::new(config(1, T0)))
            .encode()
            .expect("encodes");
        let mut b = samples::telemetry_bucket();
        b.bucket_start_ms = T0;
        let requests: i64 = b.counts.iter().map(|c| c.count).sum();
        let bucket = encoded(&b);
        // Given owner A (claim at offset 0: epoch 1) applied a tick and a config, then B
        // claimed (offset 2: epoch 3); when A, not yet aware, journals the bucket at
        // telemetry offset 0 and B, restored from before it, applies it too,
        let journal = [
            claim(),
            batch(
                1,
                &[("processor.ticks", 0, tick), ("schedule.config", 0, config)],
            ),
            claim(),
            batch(1, &[("request.telemetry", 0, bucket.clone())]),
            batch(3, &[("request.telemetry", 0, bucket)]),
        ];
        let (state, outputs, fenced) = fold(&journal);
        // then the bucket is counted once, A's late entry is passed over, and the state's
        // decisions carry B's epoch.
        assert_eq!(fenced, 1);
        assert_eq!(state.epoch, 3);
        assert_eq!(state.schedules["default/demo"].requests_seen, requests);
        assert!(
            matches!(outputs.as_slice(), [Output::Decision { decision, .. }] if decision.epoch == 1)
        );
        // The same journal without B's claim and entry: A's entry counts (nothing fenced).
        let (state, _, fenced) = fold(&journal[..2]);
        assert_eq!((fenced, state.epoch), (0, 1));
    }

    #[test]
    fn journals_written_before_claims_fold_at_epoch_0_and_a_claim_fences_them() {
        let mut b = samples::telemetry_bucket();
        b.bucket_start_ms = T0;
        let bucket = encoded(&b);
        let (state, _, fenced) = fold(&[batch(0, &[("request.telemetry", 0, bucket.clone())])]);
        assert_eq!((fenced, state.epoch), (0, 0));
        assert!(state.schedules["default/demo"].requests_seen > 0);
        // A batch of an owner whose claim was lost (a journal gap) still folds, at its epoch.
        let (state, _, fenced) = fold(&[
            claim(),
            batch(0, &[("request.telemetry", 0, bucket.clone())]),
            batch(9, &[("request.telemetry", 0, bucket)]),
        ]);
        assert_eq!((fenced, state.epoch), (1, 9));
        assert!(state.schedules["default/demo"].requests_seen > 0);
    }

    #[test]
    fn positions_are_next_offsets_and_state_round_trips_through_json() {
        let mut g = given();
        g.config(config(1, T0));
        g.bucket(T0, &[("precision-100", Outcome::Success, 3)]);
        // Offsets 1 (the given tick), 2 (the config), 3 (the bucket).
        assert_eq!(g.state.next_offset("request.telemetry", 0), 4);
        assert!(g.state.already_applied(&InputPosition {
            topic: "request.telemetry".into(),
            partition: 0,
            offset: 3
        }));
        let json = serde_json::to_vec(&g.state).expect("encode");
        let back: PartitionState = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back, g.state);
    }
}
