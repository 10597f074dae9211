//! The processor's Kafka shell around [`PartitionState::apply`]: restore the owned
//! partitions, then consume inputs, apply each one, and write its journal entry and its
//! outputs at once. No timer sits between an input and its decision.
//!
//! Ownership is explicit (DESIGN, Kafka conventions): instance `i` of `N` owns the
//! schedule partitions `p` with `p mod N = i` and reads `config`, `telemetry` and `ticks`
//! partition `p` plus the single forecast partition. No group membership is needed, so a
//! SIGKILLed instance that restarts resumes its own partitions at once.
//!
//! Write order and crash safety: an input's outputs are queued at once on one idempotent
//! producer without waiting (decisions are latency-critical); its journal entry joins the
//! partition's unwritten batch, written as one [`JournalBatch`] record as soon as no input
//! is waiting, or when the batch is full. Deliveries are checked as they complete and any
//! failure stops the processor. A crash loses at most the unwritten batch: its inputs are
//! read again from the journaled positions and applied once, and a decision they had
//! already produced is adopted (see [`crate::journal`]). Snapshots are taken only after
//! every batch is written and every queued record acknowledged, so a snapshot's journal
//! offset is exact.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::admin::check_partition_counts;
use carbonflow_schemas::bus::{
    BusError, Delivered, KafkaArgs, LagMetrics, RecordProducer, Topic, TopicLayout, add_position,
    assigned_consumer,
};
use carbonflow_schemas::records::{
    DeadLetter, DecisionRef, InputPosition, JournalBatch, JournalEntry, ScheduleDecision, Tick,
};
use carbonflow_schemas::{AvroRecord, encode};
use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::journal::{RestoreError, restore, snapshot_of};
use crate::status::RecentDecision;
use carbonflow_core::state::{
    DeliveredWindow, EmissionsAccount, Input, Output, PartitionState, ScheduleState,
};

/// A partition's journal batch is written once it holds this many entries, or
/// [`JOURNAL_BATCH_BYTES`] of input records, if inputs keep arriving; otherwise as soon as
/// none is waiting. The byte bound keeps a batch well under the broker's default 1 MB
/// record limit.
const JOURNAL_BATCH_ENTRIES: usize = 1000;
/// See [`JOURNAL_BATCH_ENTRIES`].
const JOURNAL_BATCH_BYTES: usize = 256 * 1024;

/// Consumer group name reported in lag metrics (no group commits are made).
pub const GROUP: &str = "carbonflow-processor";

/// How the processor runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This instance's index, `0..instances`.
    pub instance: i32,
    /// Number of instances sharing the partitions.
    pub instances: i32,
    /// How often ticks are written to each owned partition.
    pub tick_interval: Duration,
    /// Take a snapshot after this many journal entries of a partition.
    pub snapshot_every: u64,
    /// ... or after this long, whichever comes first (if anything changed).
    pub snapshot_interval: Duration,
    /// Kafka client id.
    pub client_id: String,
}

impl Settings {
    /// Partitions this instance owns among `partitions`.
    pub fn owned(&self, partitions: i32) -> Vec<i32> {
        (0..partitions)
            .filter(|p| p % self.instances == self.instance)
            .collect()
    }
}

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Kafka client plumbing failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A partition could not be restored.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A record could not be written; the state may be ahead of the log, so we stop and
    /// let restore rebuild it from what was written.
    #[error(
        "writing {what} for partition {partition} failed, stopping so that restore rebuilds from the log: {source}"
    )]
    Delivery {
        /// Journal entry, decision, snapshot...
        what: &'static str,
        /// Schedule partition.
        partition: i32,
        /// Cause.
        #[source]
        source: BusError,
    },
    /// `--instance` is not below `--instances`.
    #[error(
        "instance {instance} of {instances} is out of range: expected 0 ≤ instance < instances"
    )]
    BadInstance {
        /// Given instance.
        instance: i32,
        /// Given count.
        instances: i32,
    },
    /// A worker thread died.
    #[error("restore worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the admin API and metrics see of one schedule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSummary {
    /// Owning partition.
    pub partition: i32,
    /// Config version in force (0 when deleted).
    pub config_version: i64,
    /// Last decision version.
    pub version: i64,
    /// Ledger balance.
    pub credit_balance: f64,
    /// Ledger velocity.
    pub credit_velocity: f64,
    /// Requests of every telemetry bucket applied.
    pub requests_seen: i64,
    /// Answered requests accounted in the ledger.
    pub requests_accounted: i64,
    /// A manual override is set.
    pub manual: bool,
    /// Share of answered requests per flavour in the last closed telemetry window.
    pub delivered_shares: BTreeMap<String, f64>,
    /// End of that window, epoch ms.
    pub delivered_window_end_ms: Option<i64>,
    /// Emissions index of every closed window, delivered and at full precision.
    pub emissions: EmissionsAccount,
    /// Fraction of emissions saved against always-full-precision.
    pub carbon_saved: Option<f64>,
    /// Forecast zone the schedule follows.
    pub zone: String,
    /// Intensities of the forecast slots from the current one, as the last decision saw
    /// them, g/kWh.
    pub forecast_slots: Vec<f64>,
}

impl ScheduleSummary {
    fn of(partition: i32, s: &ScheduleState) -> Self {
        Self {
            partition,
            config_version: s.config.as_ref().map_or(0, |c| c.config_version),
            version: s.version,
            credit_balance: s.ledger.balance(),
            credit_velocity: s.ledger.velocity(),
            requests_seen: s.requests_seen,
            requests_accounted: s.requests_accounted,
            manual: s.manual.is_some(),
            delivered_shares: s
                .last_window
                .as_ref()
                .map(DeliveredWindow::shares)
                .unwrap_or_default(),
            delivered_window_end_ms: s.last_window.as_ref().map(|w| w.end_ms),
            emissions: s.emissions,
            carbon_saved: s.emissions.saved_fraction(),
            zone: s
                .config
                .as_ref()
                .map(|c| c.zone.clone())
                .unwrap_or_default(),
            forecast_slots: s
                .last_decision
                .as_ref()
                .and_then(|d| d.provenance.forecast.as_ref())
                .map(|f| f.slots.clone())
                .unwrap_or_default(),
        }
    }
}

/// How many recent decisions per schedule the view keeps for the status page.
pub const RECENT_DECISIONS: usize = 8;

/// State shared between the pipeline and the admin API.
#[derive(Debug)]
pub struct ProcessorView {
    /// Restore finished and inputs are being consumed.
    pub ready: AtomicBool,
    /// This instance and the instance count.
    pub settings: Settings,
    /// Total schedule partitions.
    pub partitions: i32,
    /// Latest decision per owned schedule.
    pub decisions: DashMap<String, ScheduleDecision>,
    /// Summary per owned schedule.
    pub schedules: DashMap<String, ScheduleSummary>,
    /// The last [`RECENT_DECISIONS`] decisions per owned schedule, newest last.
    pub recent: DashMap<String, VecDeque<RecentDecision>>,
    /// Consumer lag gauges.
    pub lag: LagMetrics,
}

impl ProcessorView {
    /// A view for `settings` over `partitions` schedule partitions.
    pub fn new(settings: Settings, partitions: i32) -> Self {
        Self {
            ready: AtomicBool::new(false),
            settings,
            partitions,
            decisions: DashMap::new(),
            schedules: DashMap::new(),
            recent: DashMap::new(),
            lag: LagMetrics::new(),
        }
    }

    fn refresh(&self, partition: i32, id: &str, s: &ScheduleState) {
        if s.config.is_none() {
            if self.schedules.remove(id).is_some() {
                crate::metrics::removed(id);
            }
            self.decisions.remove(id);
            self.recent.remove(id);
            return;
        }
        let summary = ScheduleSummary::of(partition, s);
        {
            let previous = self.schedules.get(id);
            crate::metrics::summary(id, &summary, previous.as_deref());
        }
        self.schedules.insert(id.to_string(), summary);
        if let Some(d) = &s.last_decision {
            self.decisions.insert(id.to_string(), d.clone());
            let mut recent = self.recent.entry(id.to_string()).or_default();
            if recent.back().is_none_or(|last| last.version < d.version) {
                if recent.len() == RECENT_DECISIONS {
                    recent.pop_front();
                }
                recent.push_back(RecentDecision::of(d));
            }
        }
    }
}

/// Wall clock, epoch ms: only for ticks and latency metrics, never for deciding.
pub use carbonflow_schemas::service::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Journal,
    Decision,
    Other,
}

struct Delivery {
    partition: i32,
    written: Written,
    /// Kafka timestamp of the input that caused a decision (latency metric).
    input_ts_ms: Option<i64>,
    result: Result<Delivered, BusError>,
}

struct Owned {
    state: PartitionState,
    /// Next journal offset once everything queued is delivered (last delivered + 1).
    journal_next: i64,
    /// Decisions offset after the last delivered decision (+1).
    decisions_next: i64,
    since_snapshot: u64,
    last_snapshot: Instant,
    /// Entries applied to `state` but not yet queued for the journal, oldest first.
    unwritten: Vec<JournalEntry>,
    /// Input bytes held by `unwritten`.
    unwritten_bytes: usize,
    /// Schedules whose state changed since the view last showed them.
    view_behind: BTreeSet<String>,
}

/// Show schedule `id` of partition `p` as `state` holds it (or drop it if it is gone).
fn refresh_view(view: &ProcessorView, p: i32, state: &PartitionState, id: &str) {
    match state.schedules.get(id) {
        Some(s) => view.refresh(p, id, s),
        None => {
            view.schedules.remove(id);
        }
    }
}

struct Shell {
    layout: TopicLayout,
    producer: RecordProducer,
    view: Arc<ProcessorView>,
    owned: BTreeMap<i32, Owned>,
    pending: FuturesUnordered<BoxFuture<'static, Delivery>>,
    client_id: String,
}

impl Shell {
    async fn queue(
        &mut self,
        topic: Topic,
        partition: i32,
        key: &[u8],
        payload: Option<&[u8]>,
        written: Written,
        input_ts_ms: Option<i64>,
    ) -> Result<(), PipelineError> {
        let fut = self
            .producer
            .enqueue(
                &self.layout.name(topic),
                key,
                Some(partition),
                payload,
                None,
            )
            .await
            .map_err(|source| PipelineError::Delivery {
                what: "a record",
                partition,
                source,
            })?;
        self.pending.push(
            async move {
                Delivery {
                    partition,
                    written,
                    input_ts_ms,
                    result: fut.await,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    async fn queue_record<T: AvroRecord>(
        &mut self,
        topic: Topic,
        partition: i32,
        key: &str,
        record: &T,
        written: Written,
        input_ts_ms: Option<i64>,
    ) -> Result<(), PipelineError> {
        let bytes = encode(record).map_err(|e| PipelineError::Bus(e.into()))?;
        self.queue(
            topic,
            partition,
            key.as_bytes(),
            Some(&bytes),
            written,
            input_ts_ms,
        )
        .await
    }

    fn delivered(&mut self, d: Delivery) -> Result<(), PipelineError> {
        let what = match d.written {
            Written::Journal => "a journal entry",
            Written::Decision => "a decision",
            Written::Other => "a rejection, tombstone or dead letter",
        };
        let done = d.result.map_err(|source| PipelineError::Delivery {
            what,
            partition: d.partition,
            source,
        })?;
        let Some(o) = self.owned.get_mut(&d.partition) else {
            return Ok(());
        };
        match d.written {
            Written::Journal => o.journal_next = o.journal_next.max(done.offset + 1),
            Written::Decision => {
                o.decisions_next = o.decisions_next.max(done.offset + 1);
                if let Some(ts) = d.input_ts_ms {
                    metrics::histogram!("carbonflow_decision_latency_seconds")
                        .record((now_ms() - ts).max(0) as f64 / 1000.0);
                }
            }
            Written::Other => {}
        }
        Ok(())
    }

    /// True when some partition has applied entries not yet queued for the journal, or
    /// changes not yet shown by the view.
    fn behind(&self) -> bool {
        self.owned
            .values()
            .any(|o| !o.unwritten.is_empty() || !o.view_behind.is_empty())
    }

    /// Catch up once no input is waiting: queue the journal batches and refresh the view.
    async fn catch_up(&mut self) -> Result<(), PipelineError> {
        self.write_journals().await?;
        for (&p, o) in &mut self.owned {
            for id in std::mem::take(&mut o.view_behind) {
                refresh_view(&self.view, p, &o.state, &id);
            }
        }
        Ok(())
    }

    /// Queue partition `p`'s unwritten journal entries as one batch record.
    async fn write_journal(&mut self, p: i32) -> Result<(), PipelineError> {
        let Some(o) = self.owned.get_mut(&p) else {
            return Ok(());
        };
        if o.unwritten.is_empty() {
            return Ok(());
        }
        let batch = JournalBatch {
            partition: p,
            entries: std::mem::take(&mut o.unwritten),
        };
        o.unwritten_bytes = 0;
        let bytes = encode(&batch).map_err(|e| PipelineError::Bus(e.into()))?;
        metrics::counter!("carbonflow_journal_entries_total").increment(batch.entries.len() as u64);
        metrics::counter!("carbonflow_journal_records_total").increment(1);
        metrics::counter!("carbonflow_journal_bytes_total").increment(bytes.len() as u64);
        let key = p.to_string();
        self.queue(
            Topic::Journal,
            p,
            key.as_bytes(),
            Some(&bytes),
            Written::Journal,
            None,
        )
        .await
    }

    /// Queue every partition's unwritten journal entries.
    async fn write_journals(&mut self) -> Result<(), PipelineError> {
        let partitions: Vec<i32> = self.owned.keys().copied().collect();
        for p in partitions {
            self.write_journal(p).await?;
        }
        Ok(())
    }

    /// Write every unwritten journal entry and wait until everything queued has been
    /// acknowledged.
    async fn drain(&mut self) -> Result<(), PipelineError> {
        self.write_journals().await?;
        while let Some(d) = self.pending.next().await {
            self.delivered(d)?;
        }
        Ok(())
    }

    /// Write the outputs of one applied input.
    async fn emit(
        &mut self,
        partition: i32,
        outputs: Vec<Output>,
        input_ts_ms: Option<i64>,
    ) -> Result<(), PipelineError> {
        for o in outputs {
            match o {
                Output::Decision(d) => {
                    crate::metrics::decision(&d);
                    self.queue_record(
                        Topic::Decisions,
                        partition,
                        &d.schedule,
                        d.as_ref(),
                        Written::Decision,
                        input_ts_ms,
                    )
                    .await?;
                }
                Output::Rejection(r) => {
                    tracing::warn!(schedule = %r.schedule, config_version = r.config_version, reasons = ?r.reasons, "config refused; the previous config stays in force");
                    metrics::counter!("carbonflow_config_rejections_total").increment(1);
                    self.queue_record(
                        Topic::Rejections,
                        partition,
                        &r.schedule.clone(),
                        &r,
                        Written::Other,
                        None,
                    )
                    .await?;
                }
                Output::Removed { schedule } => {
                    tracing::info!(%schedule, "schedule deleted");
                    // A tombstone: compaction drops the schedule and routers forget it.
                    self.queue(
                        Topic::Decisions,
                        partition,
                        schedule.as_bytes(),
                        None,
                        Written::Other,
                        None,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Apply one input (already decoded, or not) to partition `p` and write it down.
    async fn apply(
        &mut self,
        p: i32,
        pos: &InputPosition,
        raw: &[u8],
        input: Option<&Input>,
        input_ts_ms: Option<i64>,
    ) -> Result<(), PipelineError> {
        let Some(o) = self.owned.get_mut(&p) else {
            return Ok(());
        };
        if o.state.already_applied(pos) {
            return Ok(());
        }
        let outputs = match input {
            Some(i) => o.state.apply(i, pos),
            None => {
                o.state.skip(pos);
                vec![]
            }
        };
        o.since_snapshot += 1;
        let entry = JournalEntry {
            partition: p,
            input: pos.clone(),
            record: raw.to_vec(),
            decisions: outputs
                .iter()
                .filter_map(|out| match out {
                    Output::Decision(d) => Some(DecisionRef {
                        schedule: d.schedule.clone(),
                        version: d.version,
                    }),
                    _ => None,
                })
                .collect(),
        };
        // Refresh what the admin API shows for every schedule this input touched.
        let touched: Vec<String> = outputs
            .iter()
            .map(|out| match out {
                Output::Decision(d) => d.schedule.clone(),
                Output::Rejection(r) => r.schedule.clone(),
                Output::Removed { schedule } => schedule.clone(),
            })
            .collect();
        if let Some(Input::Telemetry(b)) = input
            && !touched.contains(&b.schedule)
        {
            // A bucket that closes no window changes only counters the view shows: they
            // are refreshed once no input is waiting, not for every bucket.
            o.view_behind.insert(b.schedule.clone());
        }
        for id in &touched {
            o.view_behind.remove(id);
            refresh_view(&self.view, p, &o.state, id);
        }
        o.unwritten_bytes += entry.record.len();
        o.unwritten.push(entry);
        let full =
            o.unwritten.len() >= JOURNAL_BATCH_ENTRIES || o.unwritten_bytes >= JOURNAL_BATCH_BYTES;
        self.emit(p, outputs, input_ts_ms).await?;
        if full {
            self.write_journal(p).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, m: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let Some(topic) = self.layout.topic_of(m.topic()) else {
            return Ok(());
        };
        let pos = InputPosition {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let raw = m.payload().unwrap_or_default();
        let ts = m.timestamp().to_millis();
        let decoded = Input::decode(topic, raw);
        metrics::counter!("carbonflow_inputs_total", "topic" => topic.base_name()).increment(1);
        if let Err(e) = &decoded {
            self.dead_letter(m, &pos, e).await?;
        }
        let input = decoded.ok();
        // Forecasts are global: every owned partition applies them (each remembers how far
        // it got, so partitions restored from different points each resume correctly).
        let targets: Vec<i32> = if topic == Topic::Forecasts {
            self.owned.keys().copied().collect()
        } else {
            vec![m.partition()]
        };
        for p in targets {
            self.apply(p, &pos, raw, input.as_ref(), ts).await?;
        }
        if let Some(lag) = self.view.lag.get(GROUP, m.topic(), m.partition()) {
            lag.processed(ts.unwrap_or_else(now_ms));
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        m: &BorrowedMessage<'_>,
        pos: &InputPosition,
        e: &carbonflow_schemas::CodecError,
    ) -> Result<(), PipelineError> {
        tracing::warn!(topic = %pos.topic, partition = pos.partition, offset = pos.offset, error = %e, "undecodable record sent to the dead-letter topic");
        metrics::counter!("carbonflow_dead_letters_total", "topic" => self.layout.topic_of(&pos.topic).map_or("unknown", |t| t.base_name()), "kind" => e.kind()).increment(1);
        let letter = DeadLetter {
            topic: pos.topic.clone(),
            partition: pos.partition,
            offset: pos.offset,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            reason: e.to_string(),
            error_kind: e.kind().to_string(),
            consumer: self.client_id.clone(),
            at_ms: m.timestamp().to_millis().unwrap_or_else(now_ms),
        };
        self.queue_record(
            Topic::DeadLetters,
            0,
            &pos.topic,
            &letter,
            Written::Other,
            None,
        )
        .await
    }

    /// Snapshot partition `p` (after draining every pending write, so offsets are exact).
    async fn snapshot(&mut self, p: i32) -> Result<(), PipelineError> {
        self.drain().await?;
        let Some(o) = self.owned.get_mut(&p) else {
            return Ok(());
        };
        let snap = snapshot_of(&o.state, o.journal_next, o.decisions_next)?;
        o.since_snapshot = 0;
        o.last_snapshot = Instant::now();
        let size = snap.state.len();
        let result = self
            .producer
            .send(
                &self.layout.name(Topic::Snapshots),
                &p.to_string(),
                Some(p),
                &snap,
            )
            .await;
        match result {
            Ok(_) => {}
            // A snapshot only shortens restores; one the broker refuses for its size must
            // not stop the processor (it would fail again on every restart). Restore then
            // replays the journal from the previous snapshot: slower, still exact.
            Err(e) if e.is_message_too_large() => {
                tracing::warn!(partition = p, bytes = size, error = %e, "snapshot larger than the broker accepts; skipped (raise message.max.bytes on the broker and with --kafka-option, or spread schedules over more partitions)");
                metrics::counter!("carbonflow_snapshots_skipped_total", "reason" => "too_large")
                    .increment(1);
                return Ok(());
            }
            Err(source) => {
                return Err(PipelineError::Delivery {
                    what: "a snapshot",
                    partition: p,
                    source,
                });
            }
        }
        metrics::gauge!("carbonflow_snapshot_bytes", "partition" => p.to_string()).set(size as f64);
        metrics::counter!("carbonflow_snapshots_total").increment(1);
        Ok(())
    }

    async fn snapshots_due(
        &mut self,
        settings: &Settings,
        force: bool,
    ) -> Result<(), PipelineError> {
        let due: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, o)| {
                o.since_snapshot > 0
                    && (force
                        || o.since_snapshot >= settings.snapshot_every
                        || o.last_snapshot.elapsed() >= settings.snapshot_interval)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.snapshot(p).await?;
        }
        Ok(())
    }
}

/// Restore the owned partitions, then process inputs until `shutdown`.
pub async fn run(
    args: KafkaArgs,
    settings: Settings,
    view: Arc<ProcessorView>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    if !(0..settings.instances).contains(&settings.instance) {
        return Err(PipelineError::BadInstance {
            instance: settings.instance,
            instances: settings.instances,
        });
    }
    crate::metrics::start_at_zero();
    let layout = args.layout();
    {
        let (args, layout) = (args.clone(), layout.clone());
        tokio::task::spawn_blocking(move || check_partition_counts(&args, &layout)).await??;
    }
    let owned = settings.owned(layout.schedule_partitions);
    tracing::info!(
        instance = settings.instance,
        instances = settings.instances,
        ?owned,
        "owning schedule partitions"
    );
    let mut shell = Shell {
        layout: layout.clone(),
        producer: RecordProducer::new(&args, &settings.client_id)?,
        view: view.clone(),
        owned: BTreeMap::new(),
        pending: FuturesUnordered::new(),
        client_id: settings.client_id.clone(),
    };

    // Restore before deciding anything.
    for &p in &owned {
        let a = args.clone();
        let r = tokio::task::spawn_blocking(move || restore(&a, p, true)).await??;
        tracing::info!(
            partition = p,
            from_snapshot = r.from_snapshot,
            replayed = r.replayed,
            orphans = r.repairs.orphans.len(),
            unsent = r.repairs.unsent.len(),
            took_ms = r.took.as_millis() as u64,
            "partition restored"
        );
        metrics::histogram!("carbonflow_restore_duration_seconds").record(r.took.as_secs_f64());
        metrics::counter!("carbonflow_restore_replayed_entries_total").increment(r.replayed);
        if r.divergent > 0 {
            metrics::counter!("carbonflow_restore_divergent_entries_total").increment(r.divergent);
        }
        for (id, s) in &r.state.schedules {
            view.refresh(p, id, s);
        }
        shell.owned.insert(
            p,
            Owned {
                state: r.state,
                journal_next: r.journal_next,
                decisions_next: r.decisions_next,
                since_snapshot: 0,
                last_snapshot: Instant::now(),
                unwritten: Vec::new(),
                unwritten_bytes: 0,
                view_behind: BTreeSet::new(),
            },
        );
        for (pos, bytes) in &r.repairs.orphans {
            let input = Input::decode(Topic::Decisions, bytes).ok();
            tracing::warn!(
                partition = p,
                offset = pos.offset,
                "adopting a decision whose journal entry was lost"
            );
            shell.apply(p, pos, bytes, input.as_ref(), None).await?;
        }
        for d in r.repairs.unsent {
            tracing::info!(schedule = %d.schedule, version = d.version, "re-sending a journaled decision that never reached the topic");
            shell
                .emit(p, vec![Output::Decision(Box::new(d))], None)
                .await?;
        }
        for schedule in r.repairs.removed {
            shell
                .emit(p, vec![Output::Removed { schedule }], None)
                .await?;
        }
    }
    shell.drain().await?;

    // Assign inputs at the positions the state records. Forecasts get a consumer of
    // their own: they are the latency-critical input (forecast → decision → routers), and
    // a fetch over one partition returns sooner than one over every schedule partition.
    let mut schedule_inputs = TopicPartitionList::new();
    for (&p, o) in &shell.owned {
        for t in [Topic::Config, Topic::Telemetry, Topic::Ticks] {
            let name = layout.name(t);
            let next = o.state.next_offset(&name, p);
            add_position(&mut schedule_inputs, &name, p, next)?;
        }
    }
    let forecasts = layout.name(Topic::Forecasts);
    let mut forecast_inputs = TopicPartitionList::new();
    if let Some(from) = shell
        .owned
        .values()
        .map(|o| o.state.next_offset(&forecasts, 0))
        .min()
    {
        add_position(&mut forecast_inputs, &forecasts, 0, from)?;
    }
    let consumer = assigned_consumer(
        &args,
        &settings.client_id,
        GROUP,
        view.lag.clone(),
        &schedule_inputs,
    )?;
    let forecast_consumer = assigned_consumer(
        &args,
        &format!("{}-forecasts", settings.client_id),
        GROUP,
        view.lag.clone(),
        &forecast_inputs,
    )?;
    view.ready.store(true, Ordering::SeqCst);
    metrics::gauge!("carbonflow_processor_ready").set(1.0);
    tracing::info!("restored; consuming inputs");

    let ticker = tokio::spawn(write_ticks(
        shell.producer.clone(),
        layout.clone(),
        owned.clone(),
        settings.tick_interval,
        settings.client_id.clone(),
        shutdown.clone(),
    ));
    let mut snapshot_check = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(d) = shell.pending.next() => {
                if let Err(e) = shell.delivered(d) { break Err(e) }
            }
            m = forecast_consumer.recv() => match m {
                Ok(m) => {
                    if let Err(e) = shell.on_message(&m).await { break Err(e) }
                }
                Err(e) => tracing::warn!(error = %e, "forecast consumer error (librdkafka retries)"),
            },
            m = consumer.recv() => match m {
                Ok(m) => {
                    if let Err(e) = shell.on_message(&m).await { break Err(e) }
                }
                Err(e) => tracing::warn!(error = %e, "consumer error (librdkafka retries)"),
            },
            _ = snapshot_check.tick() => {
                if let Err(e) = shell.snapshots_due(&settings, false).await { break Err(e) }
            }
            // Last in this biased select, so it runs only when no input is waiting: the
            // journal batch holds what was applied since the previous one.
            _ = std::future::ready(()), if shell.behind() => {
                if let Err(e) = shell.catch_up().await { break Err(e) }
            }
        }
    };
    ticker.abort();
    view.ready.store(false, Ordering::SeqCst);
    metrics::gauge!("carbonflow_processor_ready").set(0.0);
    consumer.context().revoked(&schedule_inputs);
    forecast_consumer.context().revoked(&forecast_inputs);
    if outcome.is_ok() {
        // Graceful stop: everything written, and a snapshot so the next start is quick.
        shell.snapshots_due(&settings, true).await?;
        shell.drain().await?;
        tracing::info!("stopped cleanly");
    }
    outcome
}

/// Write the wall clock to the log as ticks, one per owned partition per interval
/// (DESIGN invariant 2: deciding reads time only from records).
async fn write_ticks(
    producer: RecordProducer,
    layout: TopicLayout,
    owned: Vec<i32>,
    every: Duration,
    source: String,
    shutdown: CancellationToken,
) {
    let topic = layout.name(Topic::Ticks);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let tick = Tick {
            at_ms: now_ms(),
            source: source.clone(),
        };
        for &p in &owned {
            if let Err(e) = producer.send(&topic, "tick", Some(p), &tick).await {
                tracing::warn!(partition = p, error = %e, "could not write a tick; retrying next interval");
            }
        }
    }
}
