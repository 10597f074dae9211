//! Typed meanings of the records' string fields: a schedule id, a decision's cause and a
//! fallback rule's condition. The wire keeps strings (the Avro schemas do not change);
//! code that reads or writes these fields goes through the types here, so each rule is
//! written once — the processor validates with the same parser the router matches with.

use std::fmt;
use std::str::FromStr;

/// A schedule's identity, `namespace/name`: both parts non-empty, no further `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleId {
    /// The whole id; `slash` is the index of its one `/`.
    id: String,
    slash: usize,
}

/// Why a string is not a [`ScheduleId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule id must be namespace/name (both non-empty, one '/'), got {0:?}")]
pub struct ScheduleIdError(pub String);

impl ScheduleId {
    /// The id of schedule `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Result<Self, ScheduleIdError> {
        format!("{namespace}/{name}").parse()
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        &self.id[..self.slash]
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.id[self.slash + 1..]
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl FromStr for ScheduleId {
    type Err = ScheduleIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    id: s.to_string(),
                    slash: ns.len(),
                })
            }
            _ => Err(ScheduleIdError(s.to_string())),
        }
    }
}

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// What made the processor decide (`provenance.cause` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionCause {
    /// A new or changed config.
    Config,
    /// A forecast for the schedule's zone.
    Forecast,
    /// A telemetry window closed.
    Telemetry,
    /// A manual override was set.
    Override,
    /// A manual override expired.
    OverrideEnd,
    /// The forecast slot in force changed.
    Slot,
    /// The decision in force neared its expiry and was re-issued.
    Refresh,
    /// `processor decide`, outside the pipeline.
    DryRun,
}

impl DecisionCause {
    /// Every cause, for metrics that start at zero.
    pub const ALL: [Self; 8] = [
        Self::Config,
        Self::Forecast,
        Self::Telemetry,
        Self::Override,
        Self::OverrideEnd,
        Self::Slot,
        Self::Refresh,
        Self::DryRun,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Forecast => "forecast",
            Self::Telemetry => "telemetry",
            Self::Override => "override",
            Self::OverrideEnd => "override-end",
            Self::Slot => "slot",
            Self::Refresh => "refresh",
            Self::DryRun => "dry-run",
        }
    }

    /// The cause spelled `s`, if it is one (records from other writers may hold anything).
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for DecisionCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a fallback rule applies (`fallbacks[].when_status` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackCondition {
    /// The upstream did not answer in time (`timeout`).
    Timeout,
    /// No connection could be made (`connect_error`).
    ConnectError,
    /// Any 5xx answer (`5xx`).
    ServerError,
    /// Any 4xx answer (`4xx`).
    ClientError,
    /// Exactly this status code, 100–599.
    Status(u16),
}

/// How one attempt at an upstream ended, as fallback conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The upstream answered with this status.
    Answered(u16),
    /// It did not answer in time.
    TimedOut,
    /// No connection could be made.
    Unreachable,
    /// Some other transport error (matches no condition).
    Failed,
}

/// Why a string is not a [`FallbackCondition`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a condition: use timeout, connect_error, 5xx, 4xx or a status code 100-599")]
pub struct FallbackConditionError(pub String);

impl FallbackCondition {
    /// Whether an attempt that ended as `result` meets this condition.
    pub fn matches(self, result: AttemptResult) -> bool {
        match (self, result) {
            (Self::Timeout, AttemptResult::TimedOut) => true,
            (Self::ConnectError, AttemptResult::Unreachable) => true,
            (Self::ServerError, AttemptResult::Answered(s)) => (500..600).contains(&s),
            (Self::ClientError, AttemptResult::Answered(s)) => (400..500).contains(&s),
            (Self::Status(code), AttemptResult::Answered(s)) => code == s,
            _ => false,
        }
    }
}

impl FromStr for FallbackCondition {
    type Err = FallbackConditionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "timeout" => Ok(Self::Timeout),
            "connect_error" => Ok(Self::ConnectError),
            "5xx" => Ok(Self::ServerError),
            "4xx" => Ok(Self::ClientError),
            code => match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(Self::Status(c)),
                _ => Err(FallbackConditionError(s.to_string())),
            },
        }
    }
}

impl fmt::Display for FallbackCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timeout"),
            Self::ConnectError => f.write_str("connect_error"),
            Self::ServerError => f.write_str("5xx"),
            Self::ClientError => f.write_str("4xx"),
            Self::Status(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ids_need_one_slash_between_two_nonempty_parts() {
        let id: ScheduleId = "shop/checkout".parse().expect("valid id");
        assert_eq!((id.namespace(), id.name()), ("shop", "checkout"));
        assert_eq!(ScheduleId::new("shop", "checkout"), Ok(id));
        for bad in ["", "shop", "/checkout", "shop/", "a/b/c"] {
            assert!(bad.parse::<ScheduleId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn causes_round_trip_through_their_wire_spelling() {
        for c in DecisionCause::ALL {
            assert_eq!(DecisionCause::from_wire(c.as_str()), Some(c));
        }
        assert_eq!(DecisionCause::from_wire("tick"), None);
    }

    #[test]
    fn conditions_round_trip_and_refuse_what_routers_cannot_match() {
        for s in ["timeout", "connect_error", "5xx", "4xx", "503"] {
            let c: FallbackCondition = s.parse().expect("valid condition");
            assert_eq!(c.to_string(), s);
        }
        for bad in ["600", "99", "5XX", "error", ""] {
            assert!(
                bad.parse::<FallbackCondition>().is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn conditions_match_the_attempts_they_name() {
        use AttemptResult::*;
        assert!(FallbackCondition::ServerError.matches(Answered(502)));
        assert!(!FallbackCondition::ServerError.matches(Answered(404)));
        assert!(FallbackCondition::Status(404).matches(Answered(404)));
        assert!(FallbackCondition::Timeout.matches(TimedOut));
        assert!(!FallbackCondition::Timeout.matches(Unreachable));
        assert!(!FallbackCondition::ConnectError.matches(Failed));
    }
}
