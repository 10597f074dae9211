//! Restore's reconciliation: what the journal and `schedule.decisions` disagree on after
//! a crash, and what the shell must write to make them agree again.
//!
//! The journal and the decisions are written without transactions. After a crash either
//! may be ahead of the other, and these rules make the outputs exactly-once in effect:
//!
//! * a decision on the topic newer than any the journal records is an **orphan**: its
//!   journal entry was lost, so the shell journals it as [`Input::Adopted`] before
//!   anything else and its version is never issued again with other content;
//! * a decision the journal tail produced that never reached the topic is **unsent**: the
//!   shell sends it again (routers ignore versions they already hold);
//! * a schedule the journal tail deleted gets its **tombstone** sent again, which is
//!   harmless if it was already written;
//! * a journal entry whose replay produces other decision versions than it recorded is
//!   **divergent**: the fold is not deterministic, which is a bug to report, not a state
//!   to repair.
//!
//! An orphan is found by version alone, whatever its epoch, so that versions keep rising
//! across owners; whether a decision reached the topic is judged by
//! [`ScheduleDecision::precedence`], epoch then version, as routers order decisions (a
//! superseded owner's higher version does not stand for the new owner's decision).
//!
//! [`Reconciliation`] is fed the journal tail entry by entry ([`Reconciliation::replay`])
//! and the decisions written since the snapshot ([`Reconciliation::seen_on_topic`]), then
//! [`Reconciliation::conclude`]s. No Kafka: the shell reads, this decides.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use carbonflow_schemas::decode;
use carbonflow_schemas::records::{InputPosition, JournalEntry, ScheduleDecision};

use crate::state::{Output, PartitionState};

/// A journal entry whose replay produced other decision versions than it recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Decisions the replay produced, `(schedule, version)`.
    pub produced: Vec<(String, i64)>,
    /// Decisions the entry recorded when it was first applied.
    pub recorded: Vec<(String, i64)>,
}

/// What the shell must write before it takes new inputs.
#[derive(Debug, Default, PartialEq)]
pub struct Repairs {
    /// Decisions on the topic missing from the journal, with their position and bytes as
    /// read, oldest schedule first: journal them as adopted inputs.
    pub orphans: Vec<(InputPosition, Vec<u8>)>,
    /// Journaled decisions that never reached the topic: send them again.
    pub unsent: Vec<ScheduleDecision>,
    /// Schedules deleted by the replayed journal tail: send their tombstones again.
    pub removed: Vec<String>,
}

/// The highest-versioned decision of one schedule found on the topic.
#[derive(Debug)]
struct OnTopic {
    version: i64,
    offset: i64,
    bytes: Vec<u8>,
}

/// The input replayed last, while its replay produced decisions that no entry of it has
/// recorded yet (continuation entries may follow).
#[derive(Debug)]
struct OpenInput {
    input: InputPosition,
    unrecorded: VecDeque<(String, i64)>,
}

/// Reconciliation of one partition (see the module doc).
#[derive(Debug, Default)]
pub struct Reconciliation {
    /// The newest decision the replayed tail produced per schedule (still existing).
    last_decision: BTreeMap<String, Arc<ScheduleDecision>>,
    removed: Vec<String>,
    on_topic: BTreeMap<String, OnTopic>,
    /// The highest precedence found on the topic per schedule.
    newest_on_topic: BTreeMap<String, (i64, i64)>,
    open: Option<OpenInput>,
    /// Journal entries replayed.
    pub replayed: u64,
}

impl Reconciliation {
    /// Nothing replayed, nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replay one journal entry into `state`, remembering what it produced. Returns the
    /// divergences found: this entry's, when its replay does not produce the decision
    /// versions it recorded, and the previous input's, when its replay produced more
    /// decisions than its entries recorded.
    ///
    /// A fan-out's refs are spread over its entry and the continuation entries after it
    /// (same input position, no record): each recorded chunk is compared with the next
    /// decisions its input's replay produced.
    pub fn replay(&mut self, state: &mut PartitionState, entry: &JournalEntry) -> Vec<Divergence> {
        self.replayed += 1;
        let recorded: Vec<(String, i64)> = entry
            .decisions
            .iter()
            .map(|d| (d.schedule.clone(), d.version))
            .collect();
        if let Some(open) = self.open.as_mut().filter(|o| o.input == entry.input) {
            let n = recorded.len().min(open.unrecorded.len());
            let produced: Vec<(String, i64)> = open.unrecorded.drain(..n).collect();
            return Vec::from_iter(
                (produced != recorded).then_some(Divergence { produced, recorded }),
            );
        }
        let mut divergences = Vec::from_iter(self.end_of_input());
        if entry.record.is_empty() && state.already_applied(&entry.input) {
            // The continuation of an input folded before this replay began (a snapshot
            // holds it): its refs cannot be compared with anything.
            return divergences;
        }
        let outputs = state.replay(entry);
        let mut produced: Vec<(String, i64)> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Decision { decision: d, .. } => Some((d.schedule.clone(), d.version)),
                _ => None,
            })
            .collect();
        for o in outputs {
            match o {
                Output::Decision { decision: d, .. } => {
                    self.removed.retain(|s| s != &d.schedule);
                    self.last_decision.insert(d.schedule.clone(), d);
                }
                Output::Removed { schedule } => {
                    self.last_decision.remove(&schedule);
                    self.removed.push(schedule);
                }
                Output::Rejection(_) | Output::Refused { .. } => {}
            }
        }
        let unrecorded = produced.split_off(recorded.len().min(produced.len()));
        if produced != recorded {
            divergences.push(Divergence { produced, recorded });
        }
        if !unrecorded.is_empty() {
            self.open = Some(OpenInput {
                input: entry.input.clone(),
                unrecorded: unrecorded.into(),
            });
        }
        divergences
    }

    /// No more entries of the input replayed last will come (the next input began, or the
    /// journal tail ended): its divergence, if its replay produced decisions that none of
    /// its entries recorded.
    pub fn end_of_input(&mut self) -> Option<Divergence> {
        let open = self.open.take()?;
        (!open.unrecorded.is_empty()).then(|| Divergence {
            produced: open.unrecorded.into(),
            recorded: vec![],
        })
    }

    /// A record read from the decisions topic at `offset`. Tombstones and records that do
    /// not decode say nothing about versions and are passed over.
    pub fn seen_on_topic(&mut self, offset: i64, payload: Option<&[u8]>) {
        let Some(bytes) = payload else { return };
        let Ok(d) = decode::<ScheduleDecision>(bytes) else {
            return;
        };
        let newest = self.newest_on_topic.entry(d.schedule.clone()).or_default();
        *newest = (*newest).max(d.precedence());
        if self
            .on_topic
            .get(&d.schedule)
            .is_none_or(|held| d.version > held.version)
        {
            self.on_topic.insert(
                d.schedule,
                OnTopic {
                    version: d.version,
                    offset,
                    bytes: bytes.to_vec(),
                },
            );
        }
    }

    /// What to write, given the state after the whole journal tail. `decisions` and
    /// `partition` name where the orphans were read, for their input positions.
    pub fn conclude(self, state: &PartitionState, decisions: &str, partition: i32) -> Repairs {
        let orphans = self
            .on_topic
            .iter()
            .filter(|(schedule, seen)| {
                seen.version > state.schedules.get(*schedule).map_or(0, |s| s.version)
            })
            .map(|(_, seen)| {
                let position = InputPosition {
                    topic: decisions.to_string(),
                    partition,
                    offset: seen.offset,
                };
                (position, seen.bytes.clone())
            })
            .collect();
        let unsent = self
            .last_decision
            .into_values()
            .filter(|d| {
                self.newest_on_topic
                    .get(&d.schedule)
                    .is_none_or(|seen| *seen < d.precedence())
            })
            .map(Arc::unwrap_or_clone)
            .collect();
        Repairs {
            orphans,
            unsent,
            removed: self.removed,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Given a journal tail and what the decisions topic holds, when reconciled, then the
    //! repairs are exactly what restores agreement.

    use super::*;
    use carbonflow_schemas::encode;
    use carbonflow_schemas::records::{ConfigCommand, DecisionRef, ScheduleDeletion};
    use carbonflow_schemas::testing::samples;

    const DECISIONS: &str = "schedule.decisions";

    fn entry(offset: i64, command: &ConfigCommand, decided: &[(String, i64)]) -> JournalEntry {
        JournalEntry {
            partition: 0,
            input: InputPosition {
                topic: "schedule.config".into(),
                partition: 0,
                offset,
            },
            record: command.encode().expect("encodes"),
            decisions: decided
                .iter()
                .map(|(schedule, version)| DecisionRef {
                    schedule: schedule.clone(),
                    version: *version,
                })
                .collect(),
        }
    }

    /// A journal tail holding one accepted config: its schedule decided version 1.
    fn given_a_config_journaled() -> (PartitionState, Reconciliation, ScheduleDecision) {
        let config = samples::schedule_config();
        let id = config.schedule.clone();
        let mut state = PartitionState::new(0);
        let mut reconciliation = Reconciliation::new();
        let e = entry(
            0,
            &ConfigCommand::Config(Box::new(config)),
            &[(id.clone(), 1)],
        );
        assert_eq!(reconciliation.replay(&mut state, &e), [], "replay agrees");
        let decision = state.schedules[&id]
            .last_decision
            .as_ref()
            .expect("a decision")
            .decode()
            .expect("decodes");
        (state, reconciliation, decision)
    }

    #[test]
    fn a_decision_on_the_topic_newer_than_the_journal_is_adopted() {
        let (state, mut reconciliation, mut decision) = given_a_config_journaled();
        decision.version = 2;
        let bytes = encode(&decision).expect("encodes");
        reconciliation.seen_on_topic(7, Some(&bytes));
        let repairs = reconciliation.conclude(&state, DECISIONS, 0);
        assert_eq!(repairs.orphans.len(), 1);
        assert_eq!(repairs.orphans[0].0.offset, 7);
        assert_eq!(repairs.orphans[0].1, bytes);
        assert!(
            repairs.unsent.is_empty(),
            "version 2 supersedes 1 on the topic"
        );
    }

    #[test]
    fn a_journaled_decision_missing_from_the_topic_is_resent() {
        let (state, reconciliation, decision) = given_a_config_journaled();
        let repairs = reconciliation.conclude(&state, DECISIONS, 0);
        assert_eq!(repairs.unsent, vec![decision]);
        assert!(repairs.orphans.is_empty());
    }

    #[test]
    fn a_journaled_decision_already_on_the_topic_needs_nothing() {
        let (state, mut reconciliation, decision) = given_a_config_journaled();
        reconciliation.seen_on_topic(3, Some(&encode(&decision).expect("encodes")));
        reconciliation.seen_on_topic(4, None);
        assert_eq!(
            reconciliation.conclude(&state, DECISIONS, 0),
            Repairs::default()
        );
    }

    #[test]
    fn a_superseded_owners_higher_version_does_not_hide_an_unsent_decision() {
        // Given the owner of epoch 5 journaled a config and its decision (version 1),
        let config = samples::schedule_config();
        let mut state = PartitionState::new(0);
        state.epoch = 5;
        let mut reconciliation = Reconciliation::new();
        let e = entry(
            0,
            &ConfigCommand::Config(Box::new(config.clone())),
            &[(config.schedule.clone(), 1)],
        );
        assert_eq!(reconciliation.replay(&mut state, &e), []);
        let decision = (*reconciliation.last_decision[&config.schedule]).clone();
        assert_eq!(decision.precedence(), (5, 1));
        // when the topic holds only a superseded owner's version 9, of epoch 2,
        let mut superseded = decision.clone();
        (superseded.epoch, superseded.version) = (2, 9);
        reconciliation.seen_on_topic(3, Some(&encode(&superseded).expect("encodes")));
        // then the owner's own decision is still resent (routers order by epoch first),
        // and the higher version is adopted, so that versions keep rising across owners.
        let repairs = reconciliation.conclude(&state, DECISIONS, 0);
        assert_eq!(repairs.unsent, vec![decision]);
        assert_eq!(repairs.orphans.len(), 1);
    }

    #[test]
    fn a_deletion_resends_the_tombstone() {
        let (mut state, mut reconciliation, decision) = given_a_config_journaled();
        let delete = ConfigCommand::Delete(ScheduleDeletion {
            schedule: decision.schedule.clone(),
            issued_at_ms: decision.decided_at_ms + 1,
        });
        assert_eq!(
            reconciliation.replay(&mut state, &entry(1, &delete, &[])),
            []
        );
        let repairs = reconciliation.conclude(&state, DECISIONS, 0);
        assert_eq!(repairs.removed, vec![decision.schedule]);
        assert!(
            repairs.unsent.is_empty(),
            "a deleted schedule's decision is not resent"
        );
    }

    #[test]
    fn a_replay_that_decides_other_versions_than_recorded_is_divergent() {
        let config = samples::schedule_config();
        let id = config.schedule.clone();
        let mut state = PartitionState::new(0);
        let e = entry(
            0,
            &ConfigCommand::Config(Box::new(config)),
            &[(id.clone(), 5)],
        );
        let d = Reconciliation::new().replay(&mut state, &e);
        assert_eq!(
            d,
            [Divergence {
                produced: vec![(id.clone(), 1)],
                recorded: vec![(id, 5)],
            }]
        );
    }

    /// A config's entry recording `first` of its decision refs, followed by continuation
    /// entries (same position, no record) recording the rest in chunks of `chunk`.
    fn split_entry(refs: &[(String, i64)], first: usize, chunk: usize) -> Vec<JournalEntry> {
        let config = ConfigCommand::Config(Box::new(samples::schedule_config()));
        let mut entries = vec![entry(0, &config, &refs[..first])];
        for part in refs[first..].chunks(chunk) {
            let mut continuation = entry(0, &config, part);
            continuation.record.clear();
            entries.push(continuation);
        }
        entries
    }

    #[test]
    fn refs_continued_over_several_entries_are_compared_in_order() {
        // Given a config whose one decision is recorded on a continuation entry
        let id = samples::schedule_config().schedule;
        let mut state = PartitionState::new(0);
        let mut reconciliation = Reconciliation::new();
        // When its entry and the continuation are replayed
        for e in split_entry(&[(id.clone(), 1)], 0, 1) {
            // Then neither diverges
            assert_eq!(reconciliation.replay(&mut state, &e), []);
        }
        assert_eq!(reconciliation.end_of_input(), None);
        assert_eq!(state.schedules[&id].version, 1);
    }

    #[test]
    fn a_continuation_recording_other_versions_is_divergent() {
        let id = samples::schedule_config().schedule;
        let mut state = PartitionState::new(0);
        let mut reconciliation = Reconciliation::new();
        let entries = split_entry(&[(id.clone(), 4)], 0, 1);
        assert_eq!(reconciliation.replay(&mut state, &entries[0]), []);
        assert_eq!(
            reconciliation.replay(&mut state, &entries[1]),
            [Divergence {
                produced: vec![(id.clone(), 1)],
                recorded: vec![(id, 4)],
            }]
        );
    }

    #[test]
    fn decisions_no_entry_recorded_are_divergent_once_the_input_ends() {
        let id = samples::schedule_config().schedule;
        let mut state = PartitionState::new(0);
        let mut reconciliation = Reconciliation::new();
        let entries = split_entry(&[], 0, 1);
        assert_eq!(reconciliation.replay(&mut state, &entries[0]), []);
        assert_eq!(
            reconciliation.end_of_input(),
            Some(Divergence {
                produced: vec![(id, 1)],
                recorded: vec![],
            })
        );
    }

    #[test]
    fn a_continuation_of_an_input_folded_before_the_replay_is_passed_over() {
        // Given a state that already holds the config (restored from a snapshot)
        let id = samples::schedule_config().schedule;
        let mut state = PartitionState::new(0);
        let entries = split_entry(&[(id.clone(), 1)], 0, 1);
        let _ = Reconciliation::new().replay(&mut state, &entries[0]);
        // When the replay starts at its continuation
        let mut reconciliation = Reconciliation::new();
        // Then the continuation is not compared with anything
        assert_eq!(reconciliation.replay(&mut state, &entries[1]), []);
        assert_eq!(reconciliation.end_of_input(), None);
    }
}
