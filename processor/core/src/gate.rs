//! The plausibility gate: what every decoded input must satisfy before the fold sees it.
//!
//! Records reach the topics from many writers (third-party forecast publishers, routers,
//! any Kafka client with our schemas), so decoding is not enough: a `NaN` intensity, a
//! forecast from 2030, a TTL of a billion years or a telemetry bucket on the wrong
//! partition decode fine and would each damage state. The gate refuses them, naming the
//! field, the value and the rule, and the shell journals the refused input as skipped
//! (so restore and audit replay the refusal, whatever limits a later run is given) and
//! sends it to `deadletters`, or `schedule.rejections` for configs and overrides.
//!
//! Time: the partition clock moves only by ticks, which the processor writes. An input
//! more than [`Limits::max_future_skew_ms`] ahead of it is `future_dated`; a forecast
//! whose every slot has ended, or a telemetry bucket a day old, is `too_old`. Every time
//! an input carries must lie in `[0, MAX_TIME_MS]` and every version in
//! `[0, MAX_VERSION]`, so that the arithmetic done with them later (expiry = issue + TTL,
//! version + 1, bucket end) is exact.

use std::fmt;

use carbonflow_schemas::records::{ConfigCommand, Forecast, TelemetryBucket};
use carbonflow_schemas::topics::partition_of;
use carbonflow_schemas::upstream::AllowList;
use carbonflow_schemas::vocabulary::ScheduleId;

use crate::state::Input;

/// Latest time an input may carry, epoch ms: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Largest version (config or decision) an input may carry: 2^53, so versions stay exact
/// as JSON numbers and `+ 1` never overflows.
pub const MAX_VERSION: i64 = 1 << 53;
/// Longest name (zone, router id) an input may carry, bytes.
const MAX_NAME_BYTES: usize = 256;
/// Most latency buckets a telemetry bucket may carry.
const MAX_LATENCY_BOUNDS: usize = 64;

/// The configurable bounds (processor flags); the defaults are the documented ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Where flavour upstreams may be (`--allowed-upstreams`; empty: any host but
    /// link-local and metadata addresses).
    pub upstreams: AllowList,
    /// Highest plausible carbon intensity, g/kWh (`--max-intensity`).
    pub max_intensity: f64,
    /// Most slots a forecast (and its demand forecast) may hold.
    pub max_forecast_points: usize,
    /// How far ahead of the partition clock an input's event time may be, ms
    /// (`--max-future-skew`).
    pub max_future_skew_ms: i64,
    /// Longest manual override, s (`--max-override-ttl`).
    pub max_override_ttl_s: i64,
    /// Longest decision validity a config may ask for, s (`--max-valid-for`).
    pub max_valid_for_s: i64,
    /// How far behind the partition clock a telemetry bucket may end, ms: older requests
    /// would be accounted in a window they were not served in.
    pub max_telemetry_age_ms: i64,
    /// Most requests one telemetry count may report.
    pub max_bucket_requests: i64,
    /// Longest telemetry bucket, ms.
    pub max_bucket_length_ms: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            upstreams: AllowList::default(),
            max_intensity: 2000.0,
            max_forecast_points: 5000,
            max_future_skew_ms: 5 * 60 * 1000,
            max_override_ttl_s: 24 * 3600,
            max_valid_for_s: 3600,
            max_telemetry_age_ms: 24 * 3600 * 1000,
            max_bucket_requests: 1_000_000_000,
            max_bucket_length_ms: 60_000,
        }
    }
}

/// What kind of rule an input broke (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A value outside what the field can mean.
    Implausible,
    /// An event time too far ahead of the partition clock.
    FutureDated,
    /// Nothing in it is still current.
    TooOld,
    /// A schedule-keyed record on a partition its schedule does not hash to.
    WrongPartition,
    /// A config whose upstream is outside the allowed upstreams.
    NotAllowed,
}

impl RefusalKind {
    /// Every kind, for metrics that start at zero.
    pub const ALL: [Self; 5] = [
        Self::Implausible,
        Self::FutureDated,
        Self::TooOld,
        Self::WrongPartition,
        Self::NotAllowed,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Implausible => "implausible",
            Self::FutureDated => "future_dated",
            Self::TooOld => "too_old",
            Self::WrongPartition => "wrong_partition",
            Self::NotAllowed => "not_allowed",
        }
    }
}

/// Why the gate refused an input: the field, the value found, the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which rule kind.
    pub kind: RefusalKind,
    /// Path of the field, e.g. `points[3].g_per_kwh`.
    pub field: String,
    /// The value found, as text.
    pub value: String,
    /// The rule, e.g. `must be in [0, 2000] g/kWh`.
    pub rule: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, got {} ({})",
            self.field,
            self.rule,
            self.value,
            self.kind.as_str()
        )
    }
}

/// Where an input is being applied.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The partition applying it (its own partition for schedule-keyed records).
    pub partition: i32,
    /// The schedule partition count.
    pub partitions: i32,
    /// The partition's clock, epoch ms (0 before its first tick).
    pub clock_ms: i64,
    /// The processor's wall clock, epoch ms: ticks, which move the partition clock, may
    /// be at most the future skew ahead of it. Passed in, not read, so the gate stays
    /// pure; its verdict is journaled, so replay does not depend on it.
    pub wall_clock_ms: i64,
}

fn refuse(kind: RefusalKind, field: &str, value: impl fmt::Display, rule: &str) -> Refusal {
    Refusal {
        kind,
        field: field.to_string(),
        value: value.to_string(),
        rule: rule.to_string(),
    }
}

fn implausible(field: &str, value: impl fmt::Display, rule: &str) -> Refusal {
    refuse(RefusalKind::Implausible, field, value, rule)
}

/// Check `input` for application at `at` under `limits`.
pub fn check(input: &Input, at: Placement, limits: &Limits) -> Result<(), Refusal> {
    let gate = Gate { at, limits };
    match input {
        Input::Forecast(f) => gate.forecast(f),
        Input::Telemetry(b) => gate.telemetry(b),
        Input::Config(c) => gate.command(c),
        Input::Tick(t) => gate.tick(t.at_ms),
        Input::Adopted(d) => version("version", d.version),
    }
}

struct Gate<'a> {
    at: Placement,
    limits: &'a Limits,
}

/// A time every later sum stays exact with.
fn time(field: &str, ms: i64) -> Result<(), Refusal> {
    if (0..=MAX_TIME_MS).contains(&ms) {
        Ok(())
    } else {
        Err(implausible(
            field,
            ms,
            "must be an epoch-ms time between 1970 and 9999",
        ))
    }
}

fn version(field: &str, v: i64) -> Result<(), Refusal> {
    if (0..=MAX_VERSION).contains(&v) {
        Ok(())
    } else {
        Err(implausible(field, v, "must be in [0, 2^53]"))
    }
}

fn name(field: &str, s: &str) -> Result<(), Refusal> {
    if s.trim().is_empty() || s.len() > MAX_NAME_BYTES {
        Err(implausible(
            field,
            format!("{s:?}"),
            "must be non-empty and at most 256 bytes",
        ))
    } else {
        Ok(())
    }
}

/// A request count in `[0, most]`.
fn requests(field: &str, count: i64, most: i64) -> Result<(), Refusal> {
    if (0..=most).contains(&count) {
        Ok(())
    } else {
        Err(implausible(
            field,
            count,
            &format!("must be in [0, {most}] requests"),
        ))
    }
}

fn non_negative(field: &str, v: f64, max: f64, unit: &str) -> Result<(), Refusal> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        Ok(())
    } else {
        Err(implausible(
            field,
            v,
            &format!("must be a finite number in [0, {max}] {unit}"),
        ))
    }
}

/// Slots `(start, end, value)` of list `list`: each non-empty, ordered by start, not
/// overlapping, with its value (`(name, max, unit)`) finite in `[0, max]`. Returns the
/// end of the last slot (0 for none).
fn slots_in_order(
    list: &str,
    slots: impl Iterator<Item = (i64, i64, f64)>,
    (value_name, max, unit): (&str, f64, &str),
) -> Result<i64, Refusal> {
    let mut previous_end = 0;
    for (i, (start, end, value)) in slots.enumerate() {
        let field = |n: &str| format!("{list}[{i}].{n}");
        time(&field("start_ms"), start)?;
        time(&field("end_ms"), end)?;
        if end <= start || start < previous_end {
            return Err(implausible(
                &field("start_ms"),
                format!("[{start}, {end})"),
                "slots must be non-empty, ordered by start and must not overlap",
            ));
        }
        previous_end = end;
        non_negative(&field(value_name), value, max, unit)?;
    }
    Ok(previous_end)
}

impl Gate<'_> {
    /// An event time no further ahead of the partition clock than the skew allows. Before
    /// the partition's first tick there is no clock to compare with.
    fn not_future(&self, field: &str, ms: i64) -> Result<(), Refusal> {
        time(field, ms)?;
        let limit = self
            .at
            .clock_ms
            .saturating_add(self.limits.max_future_skew_ms);
        if self.at.clock_ms > 0 && ms > limit {
            return Err(refuse(
                RefusalKind::FutureDated,
                field,
                ms,
                &format!(
                    "must be at most {} ms ahead of the partition clock {}",
                    self.limits.max_future_skew_ms, self.at.clock_ms
                ),
            ));
        }
        Ok(())
    }

    /// A schedule id that hashes to the partition applying it.
    fn owned_schedule(&self, schedule: &str) -> Result<(), Refusal> {
        let id: ScheduleId =
            schedule
                .parse()
                .map_err(|e: carbonflow_schemas::vocabulary::ScheduleIdError| {
                    implausible("schedule", format!("{schedule:?}"), &e.to_string())
                })?;
        let home = partition_of(id.as_str().as_bytes(), self.at.partitions);
        if home != Some(self.at.partition) {
            return Err(refuse(
                RefusalKind::WrongPartition,
                "schedule",
                format!("{schedule:?} on partition {}", self.at.partition),
                &format!(
                    "must be on partition {} (murmur2 of the schedule id, as Kafka's default partitioner places it)",
                    home.unwrap_or(-1)
                ),
            ));
        }
        Ok(())
    }

    /// A tick, from any writer of the ticks topic, moves every schedule's time: one from
    /// the future would freeze the partition (every input too old), so it is bounded by
    /// the wall clock.
    fn tick(&self, at_ms: i64) -> Result<(), Refusal> {
        time("at_ms", at_ms)?;
        let limit = self
            .at
            .wall_clock_ms
            .saturating_add(self.limits.max_future_skew_ms);
        if at_ms > limit {
            return Err(refuse(
                RefusalKind::FutureDated,
                "at_ms",
                at_ms,
                &format!(
                    "must be at most {} ms ahead of the processor's wall clock {}",
                    self.limits.max_future_skew_ms, self.at.wall_clock_ms
                ),
            ));
        }
        Ok(())
    }

    fn forecast(&self, f: &Forecast) -> Result<(), Refusal> {
        name("zone", &f.zone)?;
        self.not_future("issued_at_ms", f.issued_at_ms)?;
        let most = self.limits.max_forecast_points;
        if f.points.is_empty() || f.points.len() > most {
            return Err(implausible(
                "points",
                format!("{} slots", f.points.len()),
                &format!("must hold 1 to {most} slots"),
            ));
        }
        let slots = f.points.iter().map(|p| (p.start_ms, p.end_ms, p.g_per_kwh));
        let previous_end = slots_in_order(
            "points",
            slots,
            ("g_per_kwh", self.limits.max_intensity, "g/kWh"),
        )?;
        if self.at.clock_ms > 0 && previous_end <= self.at.clock_ms {
            return Err(refuse(
                RefusalKind::TooOld,
                "points",
                format!("last slot ending at {previous_end}"),
                &format!("must reach past the partition clock {}", self.at.clock_ms),
            ));
        }
        let demand = f.demand.as_deref().unwrap_or_default();
        if demand.len() > most {
            return Err(implausible(
                "demand",
                format!("{} slots", demand.len()),
                &format!("must hold at most {most} slots"),
            ));
        }
        let slots = demand
            .iter()
            .map(|d| (d.start_ms, d.end_ms, d.requests_per_second));
        slots_in_order("demand", slots, ("requests_per_second", 1e9, "requests/s"))?;
        Ok(())
    }

    fn telemetry(&self, b: &TelemetryBucket) -> Result<(), Refusal> {
        self.owned_schedule(&b.schedule)?;
        name("router_id", &b.router_id)?;
        let longest = self.limits.max_bucket_length_ms;
        if !(1..=longest).contains(&b.bucket_length_ms) {
            return Err(implausible(
                "bucket_length_ms",
                b.bucket_length_ms,
                &format!("must be in [1, {longest}] ms"),
            ));
        }
        time("bucket_start_ms", b.bucket_start_ms)?;
        let end = b.bucket_start_ms + i64::from(b.bucket_length_ms);
        self.not_future("bucket_start_ms", end)?;
        let oldest = self
            .at
            .clock_ms
            .saturating_sub(self.limits.max_telemetry_age_ms);
        if self.at.clock_ms > 0 && end < oldest {
            return Err(refuse(
                RefusalKind::TooOld,
                "bucket_start_ms",
                format!("{} (ending at {end})", b.bucket_start_ms),
                &format!(
                    "must end at most {} ms before the partition clock {}",
                    self.limits.max_telemetry_age_ms, self.at.clock_ms
                ),
            ));
        }
        if let Some(v) = b.decision_version {
            version("decision_version", v)?;
        }
        let most = self.limits.max_bucket_requests;
        for (i, c) in b.counts.iter().enumerate() {
            name(&format!("counts[{i}].flavour"), &c.flavour)?;
            requests(&format!("counts[{i}].count"), c.count, most)?;
        }
        let h = &b.latency;
        if h.upper_bounds_ms.len() > MAX_LATENCY_BOUNDS
            || h.counts.len() != h.upper_bounds_ms.len() + 1
        {
            return Err(implausible(
                "latency.counts",
                format!(
                    "{} counts for {} bounds",
                    h.counts.len(),
                    h.upper_bounds_ms.len()
                ),
                "must hold one count per bound plus one, with at most 64 bounds",
            ));
        }
        let mut previous = 0.0;
        for (i, ub) in h.upper_bounds_ms.iter().enumerate() {
            non_negative(&format!("latency.upper_bounds_ms[{i}]"), *ub, 3.6e6, "ms")?;
            if *ub < previous {
                return Err(implausible(
                    &format!("latency.upper_bounds_ms[{i}]"),
                    ub,
                    "bounds must ascend",
                ));
            }
            previous = *ub;
        }
        for (i, c) in h.counts.iter().enumerate() {
            requests(&format!("latency.counts[{i}]"), *c, most)?;
        }
        non_negative("latency.sum_ms", h.sum_ms, 3.6e6 * most as f64, "ms")
    }

    fn command(&self, c: &ConfigCommand) -> Result<(), Refusal> {
        self.owned_schedule(c.schedule())?;
        match c {
            ConfigCommand::Config(c) => {
                self.not_future("published_at_ms", c.published_at_ms)?;
                version("config_version", c.config_version)?;
                for (i, f) in c.flavours.iter().enumerate() {
                    if let Err(r) = self.limits.upstreams.check_url(&f.upstream_url) {
                        return Err(refuse(
                            RefusalKind::NotAllowed,
                            &format!("flavours[{i}].upstream_url"),
                            format!("{:?}", f.upstream_url),
                            &format!("must be an allowed upstream: {}", r.rule),
                        ));
                    }
                }
                let longest = self.limits.max_valid_for_s;
                if c.valid_for_seconds > longest {
                    return Err(implausible(
                        "valid_for_seconds",
                        c.valid_for_seconds,
                        &format!("must be at most {longest} s"),
                    ));
                }
                Ok(())
            }
            ConfigCommand::Override(o) => {
                self.not_future("issued_at_ms", o.issued_at_ms)?;
                let longest = self.limits.max_override_ttl_s;
                if !(1..=longest).contains(&o.ttl_seconds) {
                    return Err(implausible(
                        "ttl_seconds",
                        o.ttl_seconds,
                        &format!("must be in [1, {longest}] s"),
                    ));
                }
                Ok(())
            }
            ConfigCommand::Delete(d) => self.not_future("issued_at_ms", d.issued_at_ms),
            ConfigCommand::CancelOverride(c) => self.not_future("issued_at_ms", c.issued_at_ms),
        }
    }
}
