//! A schedule's latest decision as the state and the read model keep it between
//! decisions: the record written to `schedule.decisions` (Avro, single-object encoding),
//! with the few fields the fold reads kept decoded.
//!
//! Why encoded: at 100,000 schedules the decoded decision (strings, vectors, diagnostics,
//! provenance: about 1.5 KB) was the largest part of a schedule's memory, and its record
//! is about a third of that. It is decoded only when asked for: the admin API, a restore
//! checking a snapshot's records and rebuilding the read model. Snapshots hold the
//! record. The same bytes are what the shell writes, so a decision is encoded once.

use std::sync::Arc;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use carbonflow_schemas::records::ScheduleDecision;
use carbonflow_schemas::{CodecError, decode, encode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An issued decision: its record and the fields the fold reads. Cloning shares the
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedDecision {
    version: i64,
    decided_at_ms: i64,
    valid_until_ms: i64,
    record: Arc<[u8]>,
}

impl IssuedDecision {
    /// `decision` encoded as its record.
    pub fn encode(decision: &ScheduleDecision) -> Result<Self, CodecError> {
        Ok(Self::of(decision, encode(decision)?.into()))
    }

    /// `decision` kept as `record`, its encoding.
    fn of(decision: &ScheduleDecision, record: Arc<[u8]>) -> Self {
        Self {
            version: decision.version,
            decided_at_ms: decision.decided_at_ms,
            valid_until_ms: decision.valid_until_ms,
            record,
        }
    }

    /// The decision, decoded from its record.
    pub fn decode(&self) -> Result<ScheduleDecision, CodecError> {
        decode(&self.record)
    }

    /// The record as written to `schedule.decisions`.
    pub fn record(&self) -> &[u8] {
        &self.record
    }

    /// Its per-schedule version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Event time it was decided at, epoch ms.
    pub fn decided_at_ms(&self) -> i64 {
        self.decided_at_ms
    }

    /// End of its validity, epoch ms.
    pub fn valid_until_ms(&self) -> i64 {
        self.valid_until_ms
    }
}

/// Serialized as its record, base64: a snapshot holds each schedule's decision as the
/// bytes the state keeps, with no decoding and no 2 KB of JSON per schedule.
impl Serialize for IssuedDecision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64_STANDARD.encode(&self.record))
    }
}

/// The two forms a snapshot may hold: the record (state format 5 on), or the decision
/// itself (format 4).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Record(String),
    Decision(Box<ScheduleDecision>),
}

/// Reads either form. A record is decoded to check it and to take the fields the fold
/// reads from it: snapshots are records on a topic, and what a writer put there is not
/// trusted to be a decision.
impl<'de> Deserialize<'de> for IssuedDecision {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Stored::deserialize(deserializer)? {
            Stored::Record(text) => {
                let record = BASE64_STANDARD.decode(text).map_err(|e| {
                    serde::de::Error::custom(format!("a decision record that is not base64: {e}"))
                })?;
                let decision: ScheduleDecision = decode(&record).map_err(|e| {
                    serde::de::Error::custom(format!("a decision record that does not decode: {e}"))
                })?;
                Ok(Self::of(&decision, record.into()))
            }
            Stored::Decision(decision) => Self::encode(&decision).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbonflow_schemas::testing::samples;

    #[test]
    fn the_record_decodes_to_the_decision_it_was_made_of() {
        let d = samples::schedule_decision();
        let issued = IssuedDecision::encode(&d).expect("encodes");
        assert_eq!(issued.decode().expect("decodes"), d);
        assert_eq!(issued.record(), encode(&d).expect("encodes").as_slice());
        assert_eq!(
            (
                issued.version(),
                issued.decided_at_ms(),
                issued.valid_until_ms()
            ),
            (d.version, d.decided_at_ms, d.valid_until_ms)
        );
    }

    #[test]
    fn it_serializes_as_its_record_and_back() {
        let d = samples::schedule_decision();
        let issued = IssuedDecision::encode(&d).expect("encodes");
        let json = serde_json::to_value(&issued).expect("serializes");
        assert_eq!(
            json,
            serde_json::Value::String(BASE64_STANDARD.encode(issued.record()))
        );
        let back: IssuedDecision = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, issued);
    }

    #[test]
    fn the_decision_form_of_older_snapshots_is_read_as_the_same_record() {
        let d = samples::schedule_decision();
        let older = serde_json::to_value(&d).expect("serializes");
        let read: IssuedDecision = serde_json::from_value(older).expect("deserializes");
        assert_eq!(read, IssuedDecision::encode(&d).expect("encodes"));
    }

    #[test]
    fn a_stored_record_that_is_not_a_decision_is_refused() {
        for text in ["not base64!", "AAAA", ""] {
            let read = serde_json::from_value::<IssuedDecision>(serde_json::json!(text));
            assert!(read.is_err(), "{text:?} was read as a decision");
        }
    }
}
