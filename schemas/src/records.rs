//! Rust types of every record that crosses a topic.
//!
//! Each type mirrors the newest `.avsc` of its folder under `schemas/avro/` field by field
//! (names in snake_case, times as epoch milliseconds UTC in `*_ms` fields). Maps are
//! written as arrays of named pairs so that encoding is deterministic and order-preserving.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::codec::AvroRecord;

/// Position of an input record: the topic, partition and offset it was read at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputPosition {
    /// Full topic name (prefix included).
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Offset of the record itself (not the next one to read).
    pub offset: i64,
}

/// One forecast slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastPoint {
    /// Slot start, epoch ms UTC (inclusive).
    pub start_ms: i64,
    /// Slot end, epoch ms UTC (exclusive).
    pub end_ms: i64,
    /// Forecast carbon intensity, gCO2eq/kWh.
    pub g_per_kwh: f64,
    /// Provider's label ("low", "very high", ...).
    pub index: Option<String>,
}

/// Expected request rate over a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandPoint {
    /// Slot start, epoch ms UTC.
    pub start_ms: i64,
    /// Slot end, epoch ms UTC.
    pub end_ms: i64,
    /// Requests per second.
    pub requests_per_second: f64,
}

/// A carbon-intensity forecast for one zone (`carbon.forecasts`, key = zone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Grid zone, e.g. `GB`.
    pub zone: String,
    /// Producer of the forecast.
    pub issuer: String,
    /// Issue time, epoch ms UTC.
    pub issued_at_ms: i64,
    /// Slots, sorted by start.
    pub points: Vec<ForecastPoint>,
    /// Optional demand forecast (added in v2; absent in v1 records).
    pub demand: Option<Vec<DemandPoint>>,
}

/// Which signal updates the credit ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PrecisionFeed {
    /// Exact delivered request counts from `request.telemetry` (carbonflow's default).
    #[default]
    Telemetry,
    /// The policy's commanded average precision per decision (the reference's feed).
    Commanded,
}

/// What a router does once a decision has expired without a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExpiryBehaviour {
    /// Send all traffic to the highest-precision enabled flavour.
    #[default]
    HighestPrecision,
    /// Keep routing on the last weights.
    KeepLastWeights,
}

/// Replica bounds of one autoscaled component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentBounds {
    /// Component name (`router`, `consumer`, `target`, ...).
    pub component: String,
    /// Lower bound, if set.
    pub min_replicas: Option<i32>,
    /// Upper bound, if set.
    pub max_replicas: Option<i32>,
}

/// A key/value pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    /// Annotation name, free-form.
    pub key: String,
    /// Annotation value, free-form.
    pub value: String,
}

/// One precision variant of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flavour {
    /// Unique name within the schedule.
    pub name: String,
    /// Quality relative to the exact answer, fraction in (0, 1].
    pub precision: f64,
    /// Energy per request relative to full precision.
    pub relative_energy: f64,
    /// Disabled flavours receive no traffic.
    pub enabled: bool,
    /// Base URL requests for this flavour go to.
    pub upstream_url: String,
    /// Service-mesh mode: header set to the precision percent.
    pub upstream_header: Option<String>,
    /// Free-form labels.
    pub annotations: Vec<Annotation>,
    /// carbon-optimal: the largest share of a slot's requests this flavour may get,
    /// fraction in (0, 1]; `None` = no cap.
    #[serde(default)]
    pub max_share: Option<f64>,
}

/// An ordered fallback rule (seed 003: the first matching rule wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackRule {
    /// Conditions: `timeout`, `connect_error`, `5xx`, `4xx` or an exact status code.
    pub when_status: Vec<String>,
    /// Flavour to retry on.
    pub to: String,
}

/// Full configuration of one schedule (`schedule.config`, key = schedule id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// `namespace/name`.
    pub schedule: String,
    /// Increases with every change.
    pub config_version: i64,
    /// Publication time, epoch ms UTC.
    pub published_at_ms: i64,
    /// Policy name.
    pub policy: String,
    /// Forecast zone.
    pub zone: String,
    /// Allowed mean error, fraction.
    pub target_error: f64,
    /// Ledger lower bound.
    pub credit_min: f64,
    /// Ledger upper bound.
    pub credit_max: f64,
    /// Scale of one ledger delta.
    pub credit_sensitivity: f64,
    /// Velocity window, event-time seconds.
    pub credit_window_seconds: i64,
    /// Decision validity, seconds.
    pub valid_for_seconds: i64,
    /// Kept for compatibility with the reference.
    pub discovery_interval_seconds: i64,
    /// Forecast adapter timeout, seconds.
    pub carbon_timeout_seconds: f64,
    /// Forecast adapter poll interval, seconds.
    pub carbon_cache_ttl_seconds: f64,
    /// Lowest throttle factor.
    pub throttle_min: f64,
    /// gCO2/kWh at or below which throttling stops.
    pub throttle_intensity_floor: f64,
    /// gCO2/kWh at or above which throttling is strongest.
    pub throttle_intensity_ceiling: f64,
    /// Blend factor towards the intensity ratio.
    pub throttle_green_blend: f64,
    /// Intensity ratio at which throttling is switched off.
    pub throttle_green_override_threshold: f64,
    /// `router` (or `consumer`, kept for compatibility).
    pub evaluator: String,
    /// What updates the ledger.
    pub precision_feed: PrecisionFeed,
    /// Router behaviour on expiry.
    pub on_expiry: ExpiryBehaviour,
    /// Autoscaling bounds.
    pub components: Vec<ComponentBounds>,
    /// Precision variants in registry order; names unique, at least one enabled.
    pub flavours: Vec<Flavour>,
    /// Ordered fallback rules.
    pub fallbacks: Vec<FallbackRule>,
    /// carbon-optimal: the lowest mean precision planned for any one forecast slot,
    /// fraction in (0, 1]; `None` = no floor.
    #[serde(default)]
    pub min_slot_precision: Option<f64>,
    /// Routers forward the client's `Authorization` and `Cookie` headers to the
    /// flavours' upstreams (`false`: they are stripped).
    #[serde(default = "forwarded")]
    pub forward_credentials: bool,
}

/// Credentials are forwarded unless a config says otherwise (what v1 records mean).
fn forwarded() -> bool {
    true
}

/// A weight for one flavour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlavourWeight {
    /// Flavour name.
    pub flavour: String,
    /// Weight (proportional, not necessarily normalised).
    pub weight: f64,
}

/// Operator-set weights for a time to live (`schedule.config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualOverride {
    /// `namespace/name`.
    pub schedule: String,
    /// Issue time, epoch ms UTC.
    pub issued_at_ms: i64,
    /// Lifetime in seconds.
    pub ttl_seconds: i64,
    /// Weights to apply.
    pub weights: Vec<FlavourWeight>,
    /// Operator's free-text reason, kept for audit; `None` when not given.
    pub reason: Option<String>,
}

impl ManualOverride {
    /// End of the override's life, epoch ms. Saturating: a lifetime too large to add is
    /// "forever", never a wrapped time in the past.
    pub fn expires_at_ms(&self) -> i64 {
        self.issued_at_ms
            .saturating_add(self.ttl_seconds.saturating_mul(1000))
    }
}

/// Removal of a schedule (`schedule.config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleDeletion {
    /// `namespace/name`.
    pub schedule: String,
    /// Issue time, epoch ms UTC.
    pub issued_at_ms: i64,
}

/// End of a schedule's manual override before its TTL (`schedule.config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideCancellation {
    /// `namespace/name`.
    pub schedule: String,
    /// Issue time, epoch ms UTC.
    pub issued_at_ms: i64,
    /// Operator's free text, kept for audit.
    pub reason: Option<String>,
}

/// Outcome class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// 2xx or 3xx.
    Success,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// Upstream timed out.
    Timeout,
    /// Served by a fallback flavour.
    Fallback,
}

/// Count of requests for one flavour and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    /// Flavour name.
    pub flavour: String,
    /// Outcome class.
    pub outcome: Outcome,
    /// Number of requests.
    pub count: i64,
}

/// Latency histogram of a telemetry bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Upper bounds, ascending, in ms; an implicit +Inf bucket follows.
    pub upper_bounds_ms: Vec<f64>,
    /// `upper_bounds_ms.len() + 1` counts.
    pub counts: Vec<i64>,
    /// Sum of all latencies, ms.
    pub sum_ms: f64,
}

/// Requests one router served for one schedule in one bucket (`request.telemetry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBucket {
    /// Router instance id.
    pub router_id: String,
    /// `namespace/name`.
    pub schedule: String,
    /// Bucket start, epoch ms UTC.
    pub bucket_start_ms: i64,
    /// Bucket length, ms.
    pub bucket_length_ms: i32,
    /// Decision version in force when the bucket opened.
    pub decision_version: Option<i64>,
    /// Counts per flavour and outcome.
    pub counts: Vec<OutcomeCount>,
    /// Latency histogram.
    pub latency: LatencyHistogram,
}

/// A flavour as decided: integer and exact weight plus routing data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionFlavour {
    /// Flavour name.
    pub name: String,
    /// round(precision × 100).
    pub precision_percent: i32,
    /// Integer percentage (sums to 100 over the decision).
    pub weight_percent: i32,
    /// Exact fractional weight.
    pub weight: f64,
    /// Energy relative to full precision.
    pub relative_energy: f64,
    /// Enabled flag.
    pub enabled: bool,
    /// Upstream base URL.
    pub upstream_url: String,
    /// Service-mesh header name, if any.
    pub upstream_header: Option<String>,
}

/// Ledger figures of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credits {
    /// Balance after this decision's ledger update.
    pub balance: f64,
    /// Velocity after the update.
    pub velocity: f64,
    /// Target error.
    pub target: f64,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
    /// Allowance (credit-greedy family).
    pub allowance: Option<f64>,
}

/// A named diagnostic value (null when unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Diagnostic name, set by the policy (e.g. `allowance`, `num_flavours`). Most are
    /// the policies' static names, borrowed rather than allocated for each decision.
    pub name: Cow<'static, str>,
    /// Its value; `None` when the policy does not know it.
    pub value: Option<f64>,
}

/// Replica ceiling of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCeiling {
    /// Component name.
    pub component: String,
    /// Most replicas allowed: max_replicas × throttle, rounded, kept within the bounds.
    pub replicas: i32,
}

/// Throttle and ceilings of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Processing {
    /// Throttle factor in [throttle_min, 1].
    pub throttle: f64,
    /// Credit ratio.
    pub credits_ratio: f64,
    /// Intensity ratio.
    pub intensity_ratio: f64,
    /// Replica ceilings.
    pub ceilings: Vec<ReplicaCeiling>,
}

/// Forecast used for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastUsed {
    /// Issuer of the forecast record.
    pub issuer: String,
    /// Its issue time.
    pub issued_at_ms: i64,
    /// Intensity of the current slot.
    pub intensity_now: Option<f64>,
    /// Intensity of the next slot.
    pub intensity_next: Option<f64>,
    /// Values from the current slot on.
    pub slots: Vec<f64>,
}

/// Ledger balance and velocity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerState {
    /// Credit balance, clamped to [credit_min, credit_max].
    pub balance: f64,
    /// Mean of the unclamped ledger deltas in the velocity window (0 when empty).
    pub velocity: f64,
}

/// Telemetry window accounted by a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryWindow {
    /// Window start, epoch ms UTC.
    pub start_ms: i64,
    /// Window end, epoch ms UTC.
    pub end_ms: i64,
    /// Requests counted.
    pub requests: i64,
    /// Delivered mean precision.
    pub realised_precision: f64,
}

/// Inputs a decision was derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// What caused it (config, forecast, telemetry, tick, override, ...).
    pub cause: String,
    /// The input record that caused it.
    pub input: InputPosition,
    /// Config version in force.
    pub config_version: i64,
    /// Forecast used, if any.
    pub forecast: Option<ForecastUsed>,
    /// Ledger before.
    pub ledger_before: LedgerState,
    /// Ledger after.
    pub ledger_after: LedgerState,
    /// Telemetry window accounted, if any.
    pub telemetry_window: Option<TelemetryWindow>,
}

/// The weights routers apply (`schedule.decisions`, key = schedule id, compacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDecision {
    /// `namespace/name`.
    pub schedule: String,
    /// Per-schedule version.
    pub version: i64,
    /// Event time of the causing input, epoch ms UTC.
    pub decided_at_ms: i64,
    /// Expiry, epoch ms UTC.
    pub valid_until_ms: i64,
    /// Policy name.
    pub policy: String,
    /// Weights come from a manual override.
    pub manual: bool,
    /// Commanded average precision, Σ weight · precision of the weights emitted (the
    /// `avg_precision` diagnostic, as in the reference, is the base policy's before a
    /// forecast adjustment).
    pub avg_precision: f64,
    /// Flavours in registry order.
    pub flavours: Vec<DecisionFlavour>,
    /// Ledger figures.
    pub credits: Credits,
    /// Policy diagnostics.
    pub diagnostics: Vec<Diagnostic>,
    /// Throttle and ceilings.
    pub processing: Processing,
    /// Fallback rules in force.
    pub fallbacks: Vec<FallbackRule>,
    /// Router behaviour on expiry.
    pub on_expiry: ExpiryBehaviour,
    /// Inputs it was derived from.
    pub provenance: Provenance,
    /// Routers forward the client's `Authorization` and `Cookie` headers to the
    /// flavours' upstreams (`false`: they are stripped).
    #[serde(default = "forwarded")]
    pub forward_credentials: bool,
    /// Ownership epoch of the processor that wrote it (see [`OwnershipClaim`]; 0 = written
    /// before ownership claims). Routers order decisions by `(epoch, version)`.
    #[serde(default)]
    pub epoch: i64,
}

impl ScheduleDecision {
    /// The order in which decisions of one schedule supersede each other: by owner epoch,
    /// then version. A superseded owner's late decisions therefore never replace the new
    /// owner's, whatever their versions; within an epoch, versions only move forward.
    pub fn precedence(&self) -> (i64, i64) {
        (self.epoch, self.version)
    }
}

/// Time written to the log (`processor.ticks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// Epoch ms UTC.
    pub at_ms: i64,
    /// Who wrote it, e.g. `ticker@host` (the processor writes its client id).
    pub source: String,
}

/// A field and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    /// Field path, e.g. `flavours[1].precision`.
    pub field: String,
    /// The rule, e.g. `must be in (0, 1]`.
    pub rule: String,
}

/// Why a config was refused (`schedule.rejections`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRejection {
    /// `namespace/name`.
    pub schedule: String,
    /// Version refused.
    pub config_version: i64,
    /// Event time, epoch ms UTC.
    pub rejected_at_ms: i64,
    /// Position of the refused record.
    pub input: InputPosition,
    /// Every problem found.
    pub reasons: Vec<FieldProblem>,
}

/// An undecodable record kept with its reason (`deadletters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Original key bytes.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub key: Option<Vec<u8>>,
    /// Original payload bytes.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub payload: Option<Vec<u8>>,
    /// Human-readable reason.
    pub reason: String,
    /// Bounded error class.
    pub error_kind: String,
    /// Component that gave up.
    pub consumer: String,
    /// Event time of the original record.
    pub at_ms: i64,
}

/// A decision produced by a journaled input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRef {
    /// `namespace/name`.
    pub schedule: String,
    /// Its version.
    pub version: i64,
}

/// One input applied to one partition's state (`processor.journal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Schedule partition whose state changed.
    pub partition: i32,
    /// Where the input was read.
    pub input: InputPosition,
    /// The input record as consumed.
    #[serde(with = "apache_avro::serde::bytes")]
    pub record: Vec<u8>,
    /// Decisions it produced.
    pub decisions: Vec<DecisionRef>,
}

/// Consecutive journal entries of one partition written as one record
/// (`processor.journal`). Why: one record per input made the broker's per-record cost the
/// processor's ceiling; a batch keeps every entry (and its input position) while writing
/// one record per poll batch. Read with [`journal_record`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalBatch {
    /// Schedule partition whose state changed.
    pub partition: i32,
    /// Ownership epoch of the writer (see [`OwnershipClaim`]; 0 = written before claims).
    #[serde(default)]
    pub epoch: i64,
    /// The entries, oldest first.
    pub entries: Vec<JournalEntry>,
}

/// An instance taking ownership of a schedule partition, written to that partition's
/// journal before it restores and decides (DESIGN invariant 4).
///
/// Its epoch is [`OwnershipClaim::epoch_at`] its own journal offset: the log orders
/// claims, so no two claimers ever share an epoch, and a later claim always has a higher
/// one. The fold ignores every batch of an older epoch written after it; the owner it
/// supersedes stops writing when it reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipClaim {
    /// Schedule partition claimed.
    pub partition: i32,
    /// The claiming instance (its Kafka client id, host and process id), for logs and audit.
    pub owner: String,
    /// Wall-clock time of the claim, epoch ms (for operators; the fold never reads it).
    pub claimed_at_ms: i64,
}

impl OwnershipClaim {
    /// The epoch of a claim written at journal offset `offset`: `offset + 1`, so that
    /// epoch 0 is left for what was written before claims existed (the default of every
    /// record that carries an epoch).
    pub fn epoch_at(offset: i64) -> i64 {
        offset + 1
    }
}

/// One `processor.journal` record, read.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalRecord {
    /// Entries written by an owner of `epoch`, oldest first: a [`JournalBatch`], or a
    /// single [`JournalEntry`] (written before batching, epoch 0).
    Entries {
        /// The writer's ownership epoch.
        epoch: i64,
        /// The entries.
        entries: Vec<JournalEntry>,
    },
    /// An ownership claim.
    Claim(OwnershipClaim),
}

impl JournalRecord {
    /// The entries it holds (none for a claim).
    pub fn entries(&self) -> &[JournalEntry] {
        match self {
            JournalRecord::Entries { entries, .. } => entries,
            JournalRecord::Claim(_) => &[],
        }
    }
}

/// Read one `processor.journal` record.
pub fn journal_record(bytes: &[u8]) -> Result<JournalRecord, crate::CodecError> {
    match crate::codec::record_name(bytes)? {
        JournalBatch::FULL_NAME => {
            let batch = crate::decode::<JournalBatch>(bytes)?;
            Ok(JournalRecord::Entries {
                epoch: batch.epoch,
                entries: batch.entries,
            })
        }
        OwnershipClaim::FULL_NAME => crate::decode(bytes).map(JournalRecord::Claim),
        _ => Ok(JournalRecord::Entries {
            epoch: 0,
            entries: vec![crate::decode::<JournalEntry>(bytes)?],
        }),
    }
}

/// Full state of one partition after a journal prefix (`processor.snapshots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Schedule partition.
    pub partition: i32,
    /// First journal offset not folded into `state` (last folded + 1).
    pub journal_next_offset: i64,
    /// First decisions offset written after the state was complete.
    pub decisions_next_offset: i64,
    /// Event-time clock of the state.
    pub clock_ms: i64,
    /// Version of the state encoding.
    pub state_format: i32,
    /// This chunk of the encoded state: the bytes of chunks `0..chunks`, concatenated in
    /// order, are the state.
    #[serde(with = "apache_avro::serde::bytes")]
    pub state: Vec<u8>,
    /// Index of this chunk, 0-based (v1 snapshots are one chunk).
    pub chunk: i32,
    /// Number of chunks of this snapshot, written consecutively on its partition.
    pub chunks: i32,
}

macro_rules! avro_record {
    ($($ty:ident => $name:literal),* $(,)?) => {
        $(impl AvroRecord for $ty { const FULL_NAME: &'static str = $name; })*
    };
}

avro_record! {
    Forecast => "carbonflow.Forecast",
    ScheduleConfig => "carbonflow.ScheduleConfig",
    ManualOverride => "carbonflow.ManualOverride",
    ScheduleDeletion => "carbonflow.ScheduleDeletion",
    OverrideCancellation => "carbonflow.OverrideCancellation",
    TelemetryBucket => "carbonflow.TelemetryBucket",
    ScheduleDecision => "carbonflow.ScheduleDecision",
    Tick => "carbonflow.Tick",
    ConfigRejection => "carbonflow.ConfigRejection",
    DeadLetter => "carbonflow.DeadLetter",
    JournalEntry => "carbonflow.JournalEntry",
    JournalBatch => "carbonflow.JournalBatch",
    OwnershipClaim => "carbonflow.OwnershipClaim",
    PartitionSnapshot => "carbonflow.PartitionSnapshot",
}

/// Everything that travels on `schedule.config`: configs, overrides and deletions share
/// the topic (and the schedule key) so that their order per schedule is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigCommand {
    /// A full config.
    Config(Box<ScheduleConfig>),
    /// A manual override.
    Override(ManualOverride),
    /// A deletion.
    Delete(ScheduleDeletion),
    /// The end of a manual override.
    CancelOverride(OverrideCancellation),
}

impl ConfigCommand {
    /// What [`decode`](Self::decode) accepts, for its error.
    const RECORDS: &'static str =
        "ScheduleConfig, ManualOverride, ScheduleDeletion or OverrideCancellation";

    /// Decode whichever of the four records `bytes` holds; any other record is
    /// [`WrongRecord`](crate::CodecError::WrongRecord).
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::CodecError> {
        match crate::codec::record_name(bytes)? {
            ScheduleConfig::FULL_NAME => crate::decode(bytes).map(|c| Self::Config(Box::new(c))),
            ManualOverride::FULL_NAME => crate::decode(bytes).map(Self::Override),
            ScheduleDeletion::FULL_NAME => crate::decode(bytes).map(Self::Delete),
            OverrideCancellation::FULL_NAME => crate::decode(bytes).map(Self::CancelOverride),
            _ => Err(crate::codec::wrong_record(Self::RECORDS, bytes)),
        }
    }

    /// Encode the record inside.
    pub fn encode(&self) -> Result<Vec<u8>, crate::CodecError> {
        match self {
            Self::Config(c) => crate::encode(c.as_ref()),
            Self::Override(o) => crate::encode(o),
            Self::Delete(d) => crate::encode(d),
            Self::CancelOverride(c) => crate::encode(c),
        }
    }

    /// The schedule id it concerns.
    pub fn schedule(&self) -> &str {
        match self {
            Self::Config(c) => &c.schedule,
            Self::Override(o) => &o.schedule,
            Self::Delete(d) => &d.schedule,
            Self::CancelOverride(c) => &c.schedule,
        }
    }
}
