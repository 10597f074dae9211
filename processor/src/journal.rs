//! The journal and snapshots on Kafka: how a partition's state is written down and how it
//! is restored.
//!
//! Journal (`processor.journal`, partition p): one [`JournalEntry`] per input applied to
//! partition p's state, in the order applied, carrying the input record as consumed and
//! its position. Entries are written in [`JournalBatch`] records stamped with the
//! writer's ownership epoch, after the [`OwnershipClaim`] that gave it that epoch (older
//! journals hold one entry per record; [`journal_record`] reads all three). State = fold
//! of [`PartitionState::replay`] over the entries [`PartitionState::admit`] lets in.
//!
//! Snapshots (`processor.snapshots`, partition p, compacted): the state after a journal
//! prefix, with `journal_next_offset` = offset of the last *record* folded in **+ 1**
//! (a batch is folded whole), so restore never re-applies that record and never skips
//! the one after it.
//!
//! Restore of partition p = latest readable snapshot + the journal from its
//! `journal_next_offset` to the end, then a scan of `schedule.decisions` written since the
//! snapshot. What the two disagree on, and what to write about it, is decided by the pure
//! [`Reconciliation`]: this module only reads.

use std::io::Read;
use std::time::{Duration, Instant};

use carbonflow_core::reconcile::{Divergence, Reconciliation, Repairs};
use carbonflow_core::state::{Admission, PartitionState, STATE_FORMAT, STATE_FORMATS_READ};
use carbonflow_schemas::bus::{BusError, KafkaArgs, RangeReader, Topic, TopicLayout};
use carbonflow_schemas::records::{PartitionSnapshot, journal_record};
use carbonflow_schemas::{CodecError, decode};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Why a partition could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The broker refused, timed out, or a topic is missing.
    #[error("restoring partition {partition}: {source}")]
    Bus {
        /// Partition being restored.
        partition: i32,
        /// The failed broker read: client error, stalled read or missing topic.
        #[source]
        source: BusError,
    },
    /// A journal entry cannot be read: the journal is the truth, so restore stops.
    #[error("journal {topic} partition {partition} offset {offset} is unreadable: {source}")]
    Journal {
        /// Journal topic.
        topic: String,
        /// Journal partition, the same number as the schedule partition being restored.
        partition: i32,
        /// Offset of the unreadable journal record.
        offset: i64,
        /// Decode error.
        #[source]
        source: CodecError,
    },
    /// Journal entries between the snapshot (or offset 0) and the oldest entry left are
    /// gone: folding what is left would silently drop inputs.
    #[error(
        "journal {topic} partition {partition} is missing offsets {expected}..{first}: retention deleted them or the journal has a gap; the state would lack their inputs. Restore from a snapshot that covers them, or start with --accept-journal-gap to fold what is left"
    )]
    JournalGap {
        /// Journal topic.
        topic: String,
        /// Journal partition, the same number as the schedule partition being restored.
        partition: i32,
        /// First offset the state needs (the snapshot's `journal_next_offset`, or 0).
        expected: i64,
        /// Oldest offset the journal still holds.
        first: i64,
    },
    /// An input topic ends before the position the state records: it was recreated or
    /// truncated, and reading on would skip or re-read inputs by accident.
    #[error(
        "input {topic} partition {partition} ends at offset {end}, but the state has read up to {saved}: the topic was recreated or truncated. Restore the topic, or reset this partition's state deliberately"
    )]
    InputTruncated {
        /// Input topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The next offset the state would read.
        saved: i64,
        /// The topic's high watermark (next offset to be written).
        end: i64,
    },
    /// The state inside the snapshot could not be encoded.
    #[error("encoding the state of partition {partition}: {source}")]
    Encode {
        /// Partition whose state was being snapshotted.
        partition: i32,
        /// The JSON encoder's error (a gzip I/O failure is wrapped in one too).
        #[source]
        source: serde_json::Error,
    },
}

/// Why reading the journal tail stopped, before the error names the partition.
enum TailError {
    Bus(BusError),
    Unreadable { offset: i64, source: CodecError },
}

impl From<BusError> for TailError {
    fn from(e: BusError) -> Self {
        Self::Bus(e)
    }
}

/// A partition restored from the log.
#[derive(Debug)]
pub struct Restored {
    /// The state.
    pub state: PartitionState,
    /// Next journal offset to write (entries end here).
    pub journal_next: i64,
    /// Decisions offset from which later decisions are known delivered only by scanning.
    pub decisions_next: i64,
    /// Whether a snapshot was used.
    pub from_snapshot: bool,
    /// The key set of the snapshot used, if it was written under one: the next snapshot
    /// goes to the other.
    pub snapshot_space: Option<SnapshotSpace>,
    /// Journal entries replayed after the snapshot.
    pub replayed: u64,
    /// Entries whose recorded decision versions differ from the replay (should be 0).
    pub divergent: u64,
    /// Entries a superseded owner wrote after a newer claim, not folded.
    pub fenced: u64,
    /// What the caller writes before taking new inputs: orphans to adopt, decisions to
    /// resend, tombstones to resend.
    pub repairs: Repairs,
    /// Time the restore took.
    pub took: Duration,
}

/// Most state bytes one snapshot record carries: a record stays well under the broker's
/// default 1 MB limit, so a partition of any size snapshots in as many records as needed.
pub const SNAPSHOT_CHUNK_BYTES: usize = 512 * 1024;

/// The snapshot of `state` after journal offset `journal_next - 1`, as the records that
/// carry it: its encoded state split into chunks of at most [`SNAPSHOT_CHUNK_BYTES`],
/// written in order to the partition (restore uses a snapshot only once it has read all
/// of its chunks).
pub fn snapshot_of(
    state: &PartitionState,
    journal_next: i64,
    decisions_next: i64,
) -> Result<Vec<PartitionSnapshot>, RestoreError> {
    let encoded = encode_state(state)?;
    let pieces: Vec<&[u8]> = if encoded.is_empty() {
        vec![&[]]
    } else {
        encoded.chunks(SNAPSHOT_CHUNK_BYTES).collect()
    };
    let chunks = i32::try_from(pieces.len()).unwrap_or(i32::MAX);
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| PartitionSnapshot {
            partition: state.partition,
            journal_next_offset: journal_next,
            decisions_next_offset: decisions_next,
            clock_ms: state.clock_ms,
            state_format: STATE_FORMAT,
            state: piece.to_vec(),
            chunk: i32::try_from(i).unwrap_or(i32::MAX),
            chunks,
        })
        .collect())
}

/// Which of a partition's two sets of snapshot keys a snapshot is written under
/// (`p:a:i` or `p:b:i`). Snapshots alternate between them, so that compaction of the
/// topic (latest record per key) never removes a chunk of the last whole snapshot while
/// the next one is being written: only a snapshot written whole moves on to the other set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSpace {
    /// Keys `p:a:i`.
    A,
    /// Keys `p:b:i`.
    B,
}

impl SnapshotSpace {
    /// The other set.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// The key of chunk `chunk` of partition `partition`'s snapshot in this set.
    pub fn key(self, partition: i32, chunk: i32) -> String {
        let space = match self {
            Self::A => 'a',
            Self::B => 'b',
        };
        format!("{partition}:{space}:{chunk}")
    }

    /// The set a record key belongs to, if it is one of these keys.
    fn of_key(key: &[u8]) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?;
        match key.split(':').nth(1)? {
            "a" => Some(Self::A),
            "b" => Some(Self::B),
            _ => None,
        }
    }
}

/// Snapshot records read back, assembled into whole snapshots.
#[derive(Default)]
struct Assembly {
    /// The snapshot being read: its first chunk (header), the state bytes so far and the
    /// index of the chunk expected next.
    open: Option<(PartitionSnapshot, Vec<u8>, i32)>,
}

impl Assembly {
    /// Add the next record of the partition; the snapshot it completes, if any. A chunk
    /// that does not continue the open snapshot (a write that stopped half-way, or chunks
    /// compaction left from an older snapshot) abandons it.
    fn push(&mut self, snap: PartitionSnapshot) -> Option<(PartitionSnapshot, Vec<u8>)> {
        if snap.chunk == 0 {
            let bytes = snap.state.clone();
            self.open = Some((snap, bytes, 1));
        } else {
            match &mut self.open {
                Some((head, bytes, next))
                    if head.journal_next_offset == snap.journal_next_offset
                        && head.chunks == snap.chunks
                        && *next == snap.chunk =>
                {
                    bytes.extend_from_slice(&snap.state);
                    *next += 1;
                }
                _ => {
                    self.open = None;
                    return None;
                }
            }
        }
        if self
            .open
            .as_ref()
            .is_some_and(|(head, _, next)| *next >= head.chunks)
        {
            self.open.take().map(|(head, bytes, _)| (head, bytes))
        } else {
            None
        }
    }
}

/// A partition state as snapshots hold it: JSON, gzip-compressed. JSON of many schedules
/// repeats the same keys, so it shrinks about tenfold, which keeps a partition of 10,000
/// schedules under the broker's default 1 MB record limit.
fn encode_state(state: &PartitionState) -> Result<Vec<u8>, RestoreError> {
    let encode = |source| RestoreError::Encode {
        partition: state.partition,
        source,
    };
    // The JSON goes to the compressor through a buffer: fed serde's many small writes,
    // flate2 zero-fills its output buffer on each, which made a 10,000-schedule snapshot
    // take most of a second; written whole first, a 100,000-schedule partition's JSON
    // held 150 MB at once.
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut out = std::io::BufWriter::with_capacity(1 << 16, gz);
    serde_json::to_writer(&mut out, state).map_err(encode)?;
    out.into_inner()
        .map_err(|e| encode(serde_json::Error::io(e.into_error())))?
        .finish()
        .map_err(|e| encode(serde_json::Error::io(e)))
}

/// The state of a snapshot, `None` if it does not decode (restore then replays the journal).
fn decode_state(bytes: &[u8]) -> Option<PartitionState> {
    // Decompressed whole, then parsed from the slice: serde_json reading through the
    // decoder takes its input byte by byte, which made a 100,000-schedule snapshot take
    // 9 s to read instead of under one.
    let mut json = Vec::with_capacity(bytes.len() * 8);
    GzDecoder::new(bytes).read_to_end(&mut json).ok()?;
    serde_json::from_slice(&json).ok()
}

/// How a restore reads the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Start from the latest readable snapshot (else fold the whole journal).
    pub use_snapshot: bool,
    /// Fold what is left when journal entries the state needs are gone, instead of
    /// failing (`--accept-journal-gap`).
    pub accept_journal_gap: bool,
}

impl RestoreOptions {
    /// Latest snapshot plus the journal after it; a gap fails the restore.
    pub const LATEST: Self = Self {
        use_snapshot: true,
        accept_journal_gap: false,
    };
    /// The whole journal from offset 0, no snapshot (audits and tests).
    pub const WHOLE_JOURNAL: Self = Self {
        use_snapshot: false,
        accept_journal_gap: false,
    };
}

/// Restore `partition` from the journal as `options` say. Blocking; call from a blocking
/// thread.
pub fn restore(
    args: &KafkaArgs,
    partition: i32,
    options: RestoreOptions,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let layout = args.layout();
    let reader = RangeReader::new(args, &format!("carbonflow-restore-{partition}"))
        .map_err(|source| RestoreError::Bus { partition, source })?;
    let replica = Replica::start(&reader, &layout, partition, options)?;
    let mut restored = replica.finish(&reader, &layout, options)?;
    restored.took = started.elapsed();
    Ok(restored)
}

/// A partition's state folded from its journal: what a restore builds from the latest
/// snapshot, and what a standby keeps warm by folding the owner's journal as it is
/// written (and noting the decisions it sends), so that taking the partition over folds
/// only what the standby has not read yet.
#[derive(Debug)]
pub struct Replica {
    partition: i32,
    state: PartitionState,
    reconciliation: Reconciliation,
    /// Next journal offset to fold (last folded + 1).
    journal_next: i64,
    /// Next decisions offset to note (last noted + 1).
    decisions_next: i64,
    from_snapshot: bool,
    snapshot_space: Option<SnapshotSpace>,
    divergent: u64,
    fenced: u64,
}

impl Replica {
    /// Partition `partition` as its latest readable snapshot holds it (as `options` say),
    /// or empty, before any journal is folded.
    pub fn start(
        reader: &RangeReader,
        layout: &TopicLayout,
        partition: i32,
        options: RestoreOptions,
    ) -> Result<Self, RestoreError> {
        let mut replica = Self {
            partition,
            state: PartitionState::new(partition),
            reconciliation: Reconciliation::new(),
            journal_next: 0,
            decisions_next: 0,
            from_snapshot: false,
            snapshot_space: None,
            divergent: 0,
            fenced: 0,
        };
        if options.use_snapshot
            && let Some((snap, state, space)) =
                latest_snapshot(reader, &layout.name(Topic::Snapshots), partition)
                    .map_err(|source| RestoreError::Bus { partition, source })?
        {
            replica.state = state;
            replica.journal_next = snap.journal_next_offset;
            replica.decisions_next = snap.decisions_next_offset;
            replica.from_snapshot = true;
            replica.snapshot_space = space;
        }
        Ok(replica)
    }

    /// The schedule partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Next journal offset to fold.
    pub fn journal_next(&self) -> i64 {
        self.journal_next
    }

    /// Next decisions offset to note.
    pub fn decisions_next(&self) -> i64 {
        self.decisions_next
    }

    /// Fold the journal record at `offset` through [`PartitionState::admit`], the one
    /// fencing rule: a claim sets the epoch, a superseded owner's late batch is passed
    /// over.
    pub fn fold(&mut self, offset: i64, payload: Option<&[u8]>) -> Result<(), CodecError> {
        let partition = self.partition;
        let record = journal_record(payload.unwrap_or_default())?;
        // +1: the next offset to fold.
        self.journal_next = offset + 1;
        let entries = match self.state.admit(offset, &record) {
            Admission::Entries(entries) => entries,
            Admission::Claimed { epoch } => {
                tracing::debug!(partition, offset, epoch, "ownership claim");
                return Ok(());
            }
            Admission::Fenced { epoch, entries } => {
                self.fenced += entries as u64;
                tracing::warn!(
                    partition,
                    offset,
                    epoch,
                    current = self.state.epoch,
                    entries,
                    "journal entries of a superseded owner, written after a newer claim, are not folded"
                );
                return Ok(());
            }
        };
        for (index, entry) in entries.iter().enumerate() {
            for d in self.reconciliation.replay(&mut self.state, entry) {
                self.diverged(offset, index, &d);
            }
        }
        Ok(())
    }

    fn diverged(&mut self, offset: i64, index: usize, d: &Divergence) {
        self.divergent += 1;
        tracing::error!(
            partition = self.partition,
            offset,
            index,
            produced = ?d.produced,
            recorded = ?d.recorded,
            "journal replay diverges from what was recorded"
        );
    }

    /// Note the decisions record at `offset`: which decisions reached the topic, and
    /// which are orphans.
    pub fn note_decision(&mut self, offset: i64, payload: Option<&[u8]>) {
        self.reconciliation.seen_on_topic(offset, payload);
        // +1: the next offset to note.
        self.decisions_next = offset + 1;
    }

    /// Fold the rest of the journal and note the rest of the decisions, up to their ends
    /// as measured now, check that the inputs still reach the state's positions, and
    /// conclude what must be written before new inputs are taken. `took` is the time
    /// this took.
    pub fn finish(
        mut self,
        reader: &RangeReader,
        layout: &TopicLayout,
        options: RestoreOptions,
    ) -> Result<Restored, RestoreError> {
        let started = Instant::now();
        let partition = self.partition;
        let bus = |source| RestoreError::Bus { partition, source };
        let (journal, decisions) = (layout.name(Topic::Journal), layout.name(Topic::Decisions));
        let ends = reader
            .watermarks_of(&[(&journal, partition), (&decisions, partition)])
            .map_err(bus)?;
        let ((low, journal_end), (decisions_low, decisions_end)) = (ends[0], ends[1]);
        // A snapshot past the journal's end belongs to a journal that is gone (recreated
        // or truncated): new entries would be written at offsets it claims to hold already.
        reaches(&journal, partition, self.journal_next, journal_end)?;
        if self.journal_next < low {
            let gap = RestoreError::JournalGap {
                topic: journal.clone(),
                partition,
                expected: self.journal_next,
                first: low,
            };
            if !options.accept_journal_gap {
                return Err(gap);
            }
            tracing::warn!(partition, error = %gap, "folding the journal that is left (--accept-journal-gap)");
        }
        reader
            .read(
                &journal,
                partition,
                self.journal_next.max(low),
                journal_end,
                |r| {
                    self.fold(r.offset, r.payload)
                        .map_err(|source| TailError::Unreadable {
                            offset: r.offset,
                            source,
                        })
                },
            )
            .map_err(|e| match e {
                TailError::Bus(source) => bus(source),
                TailError::Unreadable { offset, source } => RestoreError::Journal {
                    topic: journal.clone(),
                    partition,
                    offset,
                    source,
                },
            })?;
        if let Some(d) = self.reconciliation.end_of_input() {
            self.diverged(journal_end, 0, &d);
        }

        reaches(&decisions, partition, self.decisions_next, decisions_end)?;
        reader
            .read(
                &decisions,
                partition,
                self.decisions_next.max(decisions_low),
                decisions_end,
                |r| {
                    self.reconciliation.seen_on_topic(r.offset, r.payload);
                    Ok::<(), BusError>(())
                },
            )
            .map_err(bus)?;
        check_inputs_reach(reader, layout, &self.state, partition)?;
        let replayed = self.reconciliation.replayed;
        let repairs = self
            .reconciliation
            .conclude(&self.state, &decisions, partition);
        Ok(Restored {
            state: self.state,
            journal_next: journal_end,
            decisions_next: decisions_end,
            from_snapshot: self.from_snapshot,
            snapshot_space: self.snapshot_space,
            replayed,
            divergent: self.divergent,
            fenced: self.fenced,
            repairs,
            took: started.elapsed(),
        })
    }
}

/// `topic` partition `partition` still reaches `saved`, the next offset the state holds
/// for it: `end` (its high watermark) is not below it.
fn reaches(topic: &str, partition: i32, saved: i64, end: i64) -> Result<(), RestoreError> {
    if end < saved {
        return Err(RestoreError::InputTruncated {
            topic: topic.to_string(),
            partition,
            saved,
            end,
        });
    }
    Ok(())
}

/// Every input partition the state has read still reaches the position it recorded.
fn check_inputs_reach(
    reader: &RangeReader,
    layout: &TopicLayout,
    state: &PartitionState,
    partition: i32,
) -> Result<(), RestoreError> {
    let inputs = [
        (layout.name(Topic::Config), partition),
        (layout.name(Topic::Telemetry), partition),
        (layout.name(Topic::Ticks), partition),
        (layout.name(Topic::Forecasts), 0),
    ];
    let named: Vec<(&str, i32)> = inputs.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    let ends = reader
        .watermarks_of(&named)
        .map_err(|source| RestoreError::Bus { partition, source })?;
    for ((name, p), (low, end)) in inputs.iter().zip(ends) {
        let (name, p) = (name.as_str(), *p);
        let saved = state.next_offset(name, p);
        reaches(name, p, saved, end)?;
        if low > saved {
            tracing::warn!(topic = %name, partition = p, saved, first = low, "inputs between the saved position and the oldest record left were deleted by retention before they were applied");
        }
    }
    Ok(())
}

/// Snapshot records read back from the end of a partition to find the latest whole
/// snapshot: enough for the last snapshots of a partition of several million schedules.
const SNAPSHOT_RECORDS_READ: i64 = 256;

/// The newest snapshot of `partition` that is whole and decodes, with its state.
fn latest_snapshot(
    reader: &RangeReader,
    topic: &str,
    partition: i32,
) -> Result<Option<(PartitionSnapshot, PartitionState, Option<SnapshotSpace>)>, BusError> {
    let (low, high) = reader.watermarks(topic, partition)?;
    if low >= high {
        return Ok(None);
    }
    // The newest snapshot ends the partition unless a write stopped half-way: its last
    // record says how many chunks to read back. Only if they do not make a snapshot that
    // decodes are the last SNAPSHOT_RECORDS_READ records read (a large partition's are
    // many megabytes).
    let mut last_chunk = 0;
    reader.read(topic, partition, high - 1, high, |r| {
        if let Some(snap) = r.payload.and_then(|p| decode::<PartitionSnapshot>(p).ok()) {
            last_chunk = i64::from(snap.chunk.max(0));
        }
        Ok::<(), BusError>(())
    })?;
    // The second pass reads only what lies before the first's records: a snapshot there
    // ends before them, since the first pass starts where the newest snapshot does.
    let mut upto = high;
    for from in [high - 1 - last_chunk, high - SNAPSHOT_RECORDS_READ] {
        let from = low.max(from);
        let started = Instant::now();
        let mut whole = whole_snapshots(reader, topic, partition, from, upto)?;
        let read = started.elapsed();
        while let Some((offset, head, bytes, space)) = whole.pop() {
            match decode_state(&bytes) {
                Some(state) => {
                    tracing::info!(
                        partition,
                        records = upto - from,
                        bytes = bytes.len(),
                        read_ms = read.as_millis() as u64,
                        decode_ms = (started.elapsed() - read).as_millis() as u64,
                        "snapshot read"
                    );
                    return Ok(Some((head, state, space)));
                }
                None => {
                    tracing::warn!(
                        partition,
                        offset,
                        "snapshot whose state does not decode passed over"
                    );
                    crate::metrics::snapshot_unreadable();
                }
            }
        }
        upto = from;
        if from == low {
            break;
        }
    }
    Ok(None)
}

/// A whole snapshot read back: the offset of its last record, its first chunk (header),
/// its state bytes and the key space it was written in.
type WholeSnapshot = (i64, PartitionSnapshot, Vec<u8>, Option<SnapshotSpace>);

/// The whole snapshots among `partition`'s records from `from` to `high`, oldest first
/// (not decoded: only the newest that decodes is wanted).
fn whole_snapshots(
    reader: &RangeReader,
    topic: &str,
    partition: i32,
    from: i64,
    high: i64,
) -> Result<Vec<WholeSnapshot>, BusError> {
    let mut whole = Vec::new();
    let mut assembly = Assembly::default();
    reader.read(topic, partition, from, high, |r| {
        let Some(payload) = r.payload else {
            return Ok(());
        };
        let Ok(snap) = decode::<PartitionSnapshot>(payload) else {
            tracing::warn!(
                partition,
                offset = r.offset,
                "unreadable snapshot record passed over"
            );
            crate::metrics::snapshot_unreadable();
            return Ok(());
        };
        if !STATE_FORMATS_READ.contains(&snap.state_format) || snap.partition != partition {
            return Ok(());
        }
        if let Some((head, bytes)) = assembly.push(snap) {
            whole.push((r.offset, head, bytes, r.key.and_then(SnapshotSpace::of_key)));
        }
        Ok::<(), BusError>(())
    })?;
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbonflow_core::state::Input;
    use carbonflow_schemas::records::{ConfigCommand, InputPosition};
    use carbonflow_schemas::testing::samples;

    #[test]
    fn snapshot_state_round_trips_compressed() {
        let mut state = PartitionState::new(0);
        for i in 0..200 {
            let mut c = samples::schedule_config();
            c.schedule = format!("bench/s{i}");
            let pos = InputPosition {
                topic: "schedule.config".into(),
                partition: 0,
                offset: i,
            };
            state.apply(&Input::Config(ConfigCommand::Config(Box::new(c))), &pos);
        }
        let chunks = snapshot_of(&state, 200, 17).expect("encodes");
        let [snap] = chunks.as_slice() else {
            panic!("200 schedules fit one chunk, got {}", chunks.len())
        };
        assert_eq!(snap.state_format, STATE_FORMAT);
        assert_eq!(decode_state(&snap.state), Some(state.clone()));
        let json = serde_json::to_vec(&state).expect("json");
        assert!(
            snap.state.len() * 5 < json.len(),
            "compressed {} bytes vs {} of JSON",
            snap.state.len(),
            json.len()
        );
        assert_eq!(decode_state(b"not gzip"), None);
    }

    /// The chunks `snapshot_of` would write for encoded state `bytes`.
    fn chunks_of(journal_next: i64, bytes: &[u8]) -> Vec<PartitionSnapshot> {
        let pieces: Vec<&[u8]> = bytes.chunks(SNAPSHOT_CHUNK_BYTES).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionSnapshot {
                partition: 0,
                journal_next_offset: journal_next,
                decisions_next_offset: 0,
                clock_ms: 0,
                state_format: STATE_FORMAT,
                state: p.to_vec(),
                chunk: i as i32,
                chunks: pieces.len() as i32,
            })
            .collect()
    }

    #[test]
    fn a_snapshot_in_chunks_is_assembled_once_every_chunk_is_read() {
        let bytes: Vec<u8> = (0..SNAPSHOT_CHUNK_BYTES * 2 + 10)
            .map(|i| i as u8)
            .collect();
        let mut a = Assembly::default();
        let mut chunks = chunks_of(7, &bytes).into_iter();
        assert!(a.push(chunks.next().expect("0")).is_none());
        assert!(a.push(chunks.next().expect("1")).is_none());
        let (head, whole) = a.push(chunks.next().expect("2")).expect("complete");
        assert_eq!((head.journal_next_offset, whole), (7, bytes));
    }

    #[test]
    fn a_snapshot_missing_a_chunk_is_never_used() {
        let bytes = vec![1_u8; SNAPSHOT_CHUNK_BYTES * 2 + 10];
        let mut a = Assembly::default();
        let mut older = chunks_of(7, &bytes);
        older.remove(1); // the write stopped, or compaction dropped it
        for c in older {
            assert!(a.push(c).is_none());
        }
        // A later whole one still assembles.
        let newer = chunks_of(9, &bytes[..10]);
        let (head, _) = a.push(newer[0].clone()).expect("one chunk");
        assert_eq!(head.journal_next_offset, 9);
    }
}
