//! The processor's event loop around the core's fold ([`PartitionState::apply`]): restore
//! the owned partitions, assign the inputs at the positions the state records, then
//! consume inputs, apply each one, and write its journal entry and its outputs at once.
//! No timer sits between an input and its decision.
//!
//! Ownership (DESIGN, Kafka conventions) is explicit or by consumer group. Explicit:
//! instance `i` of `N` owns the schedule partitions `p` with `p mod N = i`; no group
//! membership is involved, so a SIGKILLed instance that restarts resumes its own
//! partitions at once (the local broker never evicts a dead member). Group: the
//! consumer group assigns them ([`crate::membership`]); partitions taken are claimed,
//! restored and consumed, partitions revoked are written out, snapshotted and released.
//! Either way, owning `p` means reading `config`, `telemetry` and `ticks` partition `p`
//! plus the single forecast partition, at the positions the state records.
//!
//! Fencing (DESIGN invariant 4): taking partition `p` first writes an [`OwnershipClaim`]
//! to journal partition `p`; its offset gives the instance its epoch, and the restore
//! that follows reads up to and past the claim, so the state starts from everything the
//! previous owner wrote before it. The owner then keeps reading its own journal
//! partitions back: a newer claim there means another instance took the partition, and
//! this one stops writing it at once, with [`PipelineError::Fenced`]: in explicit mode a
//! second owner is a misconfiguration and exiting non-zero makes it loud; in group mode
//! the partition is dropped and the others go on (the group moved it). Whatever it wrote
//! after the claim is ignored by every fold ([`PartitionState::admit`]). A snapshot is
//! written only once the journal it covers has been read back without a newer claim, so
//! no snapshot ever holds a fenced owner's entries.
//!
//! Write order and crash safety: an input's outputs are queued at once on the
//! [`Outbox`] without waiting (decisions are latency-critical); its journal entry joins the
//! partition's [`UnwrittenBatch`], written as one record as soon as no input is waiting,
//! or when the batch is full. Deliveries are checked as they complete and any failure
//! stops the processor. A crash loses at most the unwritten batch: its inputs are read
//! again from the journaled positions and applied once, and a decision they had already
//! produced is adopted (see [`crate::journal`]). Snapshots are taken only after every
//! batch is written and every queued record acknowledged, so a snapshot's journal offset
//! is exact.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carbonflow_core::gate::{self, Limits, Placement, Refusal};
use carbonflow_core::issued::IssuedDecision;
use carbonflow_core::state::{Fanout, Input, Output, PartitionState};
use carbonflow_schemas::bus::admin::check_partition_counts;
use carbonflow_schemas::bus::{
    BusError, GroupMember, KafkaArgs, LagContext, LagMetrics, RangeReader, RecordProducer, Topic,
    TopicLayout, add_position, assigned_consumer,
};
use carbonflow_schemas::codec::record_name;
use carbonflow_schemas::records::{
    ConfigRejection, DeadLetter, DecisionRef, FieldProblem, InputPosition, JournalEntry,
    OwnershipClaim, PartitionSnapshot, ScheduleDecision, Tick,
};
use carbonflow_schemas::service::now_ms;
use carbonflow_schemas::topics::partition_of;
use carbonflow_schemas::{AvroRecord, decode, encode};
use futures_util::future::{join_all, try_join_all};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::journal::{
    Replica, RestoreError, RestoreOptions, Restored, SnapshotSpace, restore, snapshot_of,
};
use crate::log_budget::LogBudget;
use crate::membership::{Change, Membership, MembershipError};
use crate::metrics::{self, Released, SnapshotSkipped};
use crate::outbox::{Delivery, Outbox, UnwrittenBatch, WriteFailed, Written};
use crate::ticks::write_ticks;
use crate::view::{ProcessorView, ScheduleSummary};

/// Largest input record applied, bytes: a journal batch holding one must stay well under
/// the broker's default 1 MB record limit.
const MAX_INPUT_BYTES: usize = 256 * 1024;
/// Decisions of a fan-out made before they are queued and the next are made: small
/// enough that the first reach the broker within milliseconds, large enough that the
/// queueing is not per decision.
const FANOUT_BATCH: usize = 256;
/// How much of a dead-lettered record's key and payload its dead letter copies, bytes.
const DEAD_LETTER_COPY_BYTES: usize = 64 * 1024;

/// How long a snapshot waits for the journal it covers to be read back.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumer group name reported in lag metrics (no group commits are made).
const GROUP: &str = "carbonflow-processor";
/// The same, for what standbys read: their lag is how far each is behind its owner.
const STANDBY_GROUP: &str = "carbonflow-processor-standby";

/// Who decides which schedule partitions an instance owns.
#[derive(Debug, Clone)]
pub enum Ownership {
    /// Instance `instance` of `instances` owns the partitions `p` with
    /// `p mod instances = instance`.
    Explicit {
        /// This instance's index, `0..instances`.
        instance: i32,
        /// Number of instances sharing the partitions.
        instances: i32,
    },
    /// The consumer group `group` assigns them.
    Group {
        /// The group's id.
        group: String,
        /// How this instance joins it.
        member: GroupMember,
    },
}

impl Ownership {
    /// What the logs, the status page and the admin API say of it.
    pub fn describe(&self) -> String {
        match self {
            Self::Explicit {
                instance,
                instances,
            } => format!("instance {instance} of {instances}"),
            Self::Group { group, .. } => format!("a member of consumer group {group}"),
        }
    }
}

/// How the processor runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Who decides which schedule partitions this instance owns.
    pub ownership: Ownership,
    /// Above 0 (group ownership only), this instance keeps every partition it does not
    /// own warm: it folds their journals as their owners write them, so that taking one
    /// over folds only the entries since.
    pub standby_replicas: u32,
    /// How often ticks are written to each owned partition.
    pub tick_interval: Duration,
    /// Take a snapshot after this many journal entries of a partition...
    pub snapshot_every: u64,
    /// ... or after this long, whichever comes first (if anything changed).
    pub snapshot_interval: Duration,
    /// Kafka client id.
    pub client_id: String,
    /// What an input may hold (the plausibility gate's bounds).
    pub limits: Limits,
    /// Restore folds what is left of a journal with missing entries instead of failing.
    pub accept_journal_gap: bool,
    /// On a stop, how long the processor keeps consuming while unready.
    pub drain_delay: Duration,
}

/// The partitions instance `instance` of `instances` owns among `partitions`.
fn explicitly_owned(instance: i32, instances: i32, partitions: i32) -> Vec<i32> {
    (0..partitions)
        .filter(|p| p % instances == instance)
        .collect()
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
    /// A record could not be written; the state may be ahead of the log, so the processor
    /// stops and restore rebuilds from what was written.
    #[error("{0}; stopping so that restore rebuilds from the log")]
    Write(#[from] WriteFailed),
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
    /// The consumer group could not be joined.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// Standbys were asked for without group ownership.
    #[error(
        "--standby-replicas {replicas} needs --ownership group: in explicit mode no instance ever takes another's partitions over"
    )]
    StandbyNeedsGroup {
        /// The standbys asked for.
        replicas: u32,
    },
    /// The restore of a claimed partition ended before this instance's own claim.
    #[error(
        "partition {partition}: the restore ended at epoch {restored}, before this instance's own claim (epoch {epoch}): the journal was recreated or truncated while it was being claimed, or the latest snapshot was written past the claim by a processor too old to read claims (stop old processors before new ones start)"
    )]
    ClaimNotRestored {
        /// The partition.
        partition: i32,
        /// This instance's claim's epoch.
        epoch: i64,
        /// The epoch the restored state ended at.
        restored: i64,
    },
    /// Another instance claimed a partition this one owns: this one stopped writing it.
    /// In explicit mode it stops the instance; in group mode only the partition is dropped.
    #[error(
        "partition {partition} was claimed by {claimed_by} (epoch {claim_epoch}) while this instance owned it at epoch {epoch}: stopped writing. Two instances were given the same partition; check --instance and --instances of every processor"
    )]
    Fenced {
        /// The partition.
        partition: i32,
        /// This instance's epoch for it.
        epoch: i64,
        /// The newer claim's epoch.
        claim_epoch: i64,
        /// Who claimed it (client id, host and process id).
        claimed_by: String,
    },
}

/// One owned partition: its state and how far its writes got.
struct Owned {
    /// The state; its `epoch` is this instance's claim's (it never changes while owned).
    state: PartitionState,
    /// Journal offset up to which this instance has read its journal back and found no
    /// newer claim (next offset to read: last read + 1).
    journal_verified: i64,
    /// Next journal offset once everything queued is delivered (last delivered + 1).
    journal_next: i64,
    /// Decisions offset after the last delivered decision (+1).
    decisions_next: i64,
    since_snapshot: u64,
    last_snapshot: Instant,
    unwritten: UnwrittenBatch,
    /// Schedules whose state changed since the view last showed them.
    view_behind: BTreeSet<String>,
    /// The key set the next snapshot is written under (never the last whole one's).
    snapshot_space: SnapshotSpace,
}

impl Owned {
    /// Ownership of what restore returned (its repairs are written separately).
    fn restored(r: Restored) -> Self {
        Self {
            // Restore read the journal to its end and the claim was the latest in it.
            journal_verified: r.journal_next,
            state: r.state,
            journal_next: r.journal_next,
            decisions_next: r.decisions_next,
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            unwritten: UnwrittenBatch::default(),
            view_behind: BTreeSet::new(),
            snapshot_space: r
                .snapshot_space
                .map_or(SnapshotSpace::A, SnapshotSpace::other),
        }
    }
}

/// One input consumer and the partitions it reads, each from the position its state
/// records.
struct InputConsumer {
    consumer: StreamConsumer<LagContext>,
    partitions: TopicPartitionList,
}

impl InputConsumer {
    /// A consumer assigned nothing yet, reporting lag under `group`.
    fn new(
        args: &KafkaArgs,
        client_id: &str,
        group: &str,
        lag: &LagMetrics,
    ) -> Result<Self, BusError> {
        let partitions = TopicPartitionList::new();
        let consumer = assigned_consumer(args, client_id, group, lag.clone(), &partitions)?;
        Ok(Self {
            consumer,
            partitions,
        })
    }

    /// Read `partitions` from the positions they carry (what was fetched for the others
    /// is dropped and fetched again from there); stop reporting lag for what is no
    /// longer read.
    fn assign(&mut self, partitions: TopicPartitionList) -> Result<(), BusError> {
        self.consumer
            .assign(&partitions)
            .map_err(|e| BusError::kafka("assign the owned input partitions", e))?;
        let mut gone = TopicPartitionList::new();
        for e in self.partitions.elements() {
            if partitions
                .find_partition(e.topic(), e.partition())
                .is_none()
            {
                gone.add_partition(e.topic(), e.partition());
            }
        }
        self.consumer.context().revoked(&gone);
        self.consumer.context().assigned(&partitions);
        self.partitions = partitions;
        Ok(())
    }

    /// Stop reporting lag for everything (the consumer is about to stop).
    fn unassigned(&self) {
        self.consumer.context().revoked(&self.partitions);
    }
}

/// The inputs' consumers.
struct Inputs {
    /// `config`, `telemetry` and `ticks` of the owned partitions.
    schedules: InputConsumer,
    /// The forecast partition, from the least advanced owned partition's position.
    /// Forecasts get a consumer of their own: they are the latency-critical input
    /// (forecast → decision → routers), and a fetch over one partition returns sooner
    /// than one over every schedule partition.
    forecasts: InputConsumer,
    /// The owned journal partitions, read back from where restore ended: the fence.
    journal: InputConsumer,
    /// The journal and decisions partitions of the standby partitions, from where each
    /// replica has read them; only when standbys are kept.
    standby: Option<InputConsumer>,
}

impl Inputs {
    fn new(
        args: &KafkaArgs,
        client_id: &str,
        lag: &LagMetrics,
        standbys: bool,
    ) -> Result<Self, BusError> {
        let input = |suffix: &str, group: &str| {
            InputConsumer::new(args, &format!("{client_id}{suffix}"), group, lag)
        };
        Ok(Self {
            schedules: input("", GROUP)?,
            forecasts: input("-forecasts", GROUP)?,
            journal: input("-fence", GROUP)?,
            standby: standbys
                .then(|| input("-standby", STANDBY_GROUP))
                .transpose()?,
        })
    }
}

/// The next record for the standbys; never, when none are kept.
async fn next_standby_record(
    standby: Option<&InputConsumer>,
) -> rdkafka::error::KafkaResult<BorrowedMessage<'_>> {
    match standby {
        Some(s) => s.consumer.recv().await,
        None => std::future::pending().await,
    }
}

struct Shell {
    kafka: KafkaArgs,
    layout: TopicLayout,
    outbox: Outbox,
    /// Snapshots have a producer of their own: a snapshot may fail (it only shortens
    /// restores) without making the journal's gapless producer fatal.
    snapshots: RecordProducer,
    view: Arc<ProcessorView>,
    owned: BTreeMap<i32, Owned>,
    /// The owned partitions, for the tick writer.
    owned_partitions: watch::Sender<Vec<i32>>,
    /// Partitions this instance keeps warm for a takeover, not owned.
    standbys: BTreeMap<i32, Replica>,
    /// Whether it keeps standbys (group ownership with --standby-replicas above 0).
    keep_standbys: bool,
    client_id: String,
    limits: Limits,
    restore_options: RestoreOptions,
    /// In group mode a fenced partition is dropped; in explicit mode it stops the instance.
    group: bool,
    /// The stop signal: once given, the instance never turns ready again.
    shutdown: CancellationToken,
    /// Rate limits of the log lines about refused and dead-lettered records.
    log_budget: LogBudget,
}

/// Restore the owned partitions, then process inputs until `shutdown`.
pub async fn run(
    args: KafkaArgs,
    settings: Settings,
    view: Arc<ProcessorView>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    if let Ownership::Explicit {
        instance,
        instances,
    } = settings.ownership
        && !(0..instances).contains(&instance)
    {
        return Err(PipelineError::BadInstance {
            instance,
            instances,
        });
    }
    let group = matches!(settings.ownership, Ownership::Group { .. });
    if settings.standby_replicas > 0 && !group {
        return Err(PipelineError::StandbyNeedsGroup {
            replicas: settings.standby_replicas,
        });
    }
    metrics::start_at_zero();
    let layout = args.layout();
    // Journal entries and decisions share one producer; with the gapless guarantee a
    // record that could leave a gap in a partition is a fatal error, which stops the
    // processor (restore then rebuilds from what was written). Created first, so that
    // it connects and acquires its producer id (which the first claim waits for) while
    // the topics are checked.
    let producer = RecordProducer::gapless(&args, &settings.client_id)?;
    {
        let (args, layout) = (args.clone(), layout.clone());
        tokio::task::spawn_blocking(move || check_partition_counts(&args, &layout)).await??;
    }
    let (owned_partitions, owned_for_ticks) = watch::channel(Vec::new());
    let mut shell = Shell {
        kafka: args.clone(),
        layout: layout.clone(),
        outbox: Outbox::new(producer, layout.clone()),
        snapshots: RecordProducer::new(&args, &format!("{}-snapshots", settings.client_id))?,
        view: view.clone(),
        owned: BTreeMap::new(),
        owned_partitions,
        standbys: BTreeMap::new(),
        keep_standbys: settings.standby_replicas > 0,
        client_id: settings.client_id.clone(),
        limits: settings.limits.clone(),
        restore_options: RestoreOptions {
            accept_journal_gap: settings.accept_journal_gap,
            ..RestoreOptions::LATEST
        },
        group,
        shutdown: shutdown.clone(),
        log_budget: LogBudget::default(),
    };
    let mut inputs = Inputs::new(
        &args,
        &settings.client_id,
        view.lag(),
        settings.standby_replicas > 0,
    )?;
    let mut membership = None;
    match &settings.ownership {
        Ownership::Explicit {
            instance,
            instances,
        } => {
            let owned = explicitly_owned(*instance, *instances, layout.schedule_partitions);
            tracing::info!(instance, instances, ?owned, "owning schedule partitions");
            shell.take(&owned, &mut inputs).await?;
            shell.ready();
        }
        // Ready once the group's first assignment is restored (`Shell::on_change`).
        Ownership::Group { group, member } => {
            membership = Some(Membership::join(
                &args,
                &settings.client_id,
                group,
                member,
                &layout.name(Topic::Config),
            )?);
        }
    }

    // A stop turns the processor unready at once and keeps it consuming (and ticking) for
    // the drain delay, so whatever routes to its admin API can notice, then stops.
    let stop_consuming = CancellationToken::new();
    {
        let (view, stop, delay) = (view.clone(), stop_consuming.clone(), settings.drain_delay);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            view.set_ready(false);
            metrics::ready(false);
            tracing::info!(
                drain_delay_ms = delay.as_millis() as u64,
                "stopping: unready, draining"
            );
            tokio::time::sleep(delay).await;
            stop.cancel();
        });
    }
    // Ticks have a producer of their own: a tick that fails is simply written again at
    // the next interval, and must not make the journal's producer fatal.
    let tick_producer = RecordProducer::new(&args, &format!("{}-ticks", settings.client_id))?;
    let ticker = tokio::spawn(write_ticks(
        args.clone(),
        tick_producer,
        layout,
        owned_for_ticks,
        settings.tick_interval,
        settings.client_id.clone(),
        stop_consuming.clone(),
    ));
    let outcome = shell
        .consume(&mut inputs, &mut membership, &settings, &stop_consuming)
        .await;
    ticker.abort();
    shell
        .stop(&mut inputs, membership, &settings, outcome)
        .await
}

/// The next change of the group's assignment; never, in explicit mode.
async fn next_change(membership: &mut Option<Membership>) -> Option<Change> {
    match membership {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

impl Shell {
    /// Take `partitions`: claim and restore each one not owned yet, start its clock, write
    /// what restore repaired, then read its inputs.
    async fn take(&mut self, partitions: &[i32], inputs: &mut Inputs) -> Result<(), PipelineError> {
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.owned.contains_key(p))
            .collect();
        // The claims, then the restores, of several partitions run side by side: each
        // mostly waits on the broker, and a takeover waits for the slowest, not the sum.
        let epochs = try_join_all(new.iter().map(|&p| self.claim(p))).await?;
        let restores: Vec<_> = new.iter().map(|&p| self.restore(p)).collect();
        let restored = join_all(
            restores
                .into_iter()
                .map(|(task, from_standby)| async move { (task.await, from_standby) }),
        )
        .await;
        let mut taken = Vec::new();
        for ((p, epoch), (result, from_standby)) in new.into_iter().zip(epochs).zip(restored) {
            let installed = match result {
                Ok(Ok(r)) => self.install(p, epoch, r, from_standby).await,
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
            self.outlive_fence(installed, inputs).await?;
            if self.owned.contains_key(&p) {
                taken.push(p);
            }
        }
        self.start_clocks(&taken).await?;
        self.drain().await?;
        self.ownership_changed(inputs).await
    }

    /// Release `partitions`, revoked by the group. Handed over (not `lost`): everything in
    /// flight is written and a final snapshot taken first, so the next owner restores
    /// from it. Lost (the group already gave them to another member): nothing more is
    /// written for them; the next owner replays what the journal holds.
    async fn release(
        &mut self,
        partitions: &[i32],
        lost: bool,
        inputs: &mut Inputs,
    ) -> Result<(), PipelineError> {
        for &p in partitions {
            if lost {
                self.forget_partition(p, Released::Lost);
                continue;
            }
            if self.owned.get(&p).is_some_and(|o| o.since_snapshot > 0) {
                let snapshot = self.snapshot(inputs, p).await;
                self.outlive_fence(snapshot, inputs).await?;
            } else {
                self.drain().await?;
            }
            self.forget_partition(p, Released::HandedOver);
        }
        self.assign_inputs(inputs)?;
        Ok(())
    }

    /// Act on a change of the group's assignment.
    async fn on_change(
        &mut self,
        change: Change,
        inputs: &mut Inputs,
    ) -> Result<(), PipelineError> {
        match change {
            Change::Assigned(partitions) => {
                self.take(&partitions, inputs).await?;
                self.ready();
            }
            Change::Revoked {
                partitions,
                lost,
                released,
            } => {
                self.release(&partitions, lost, inputs).await?;
                // The group waits for this answer before it moves the partitions; keeping
                // them warm can wait.
                let _ = released.try_send(());
                self.warm_standbys(inputs).await?;
            }
        }
        Ok(())
    }

    /// In group mode a fenced partition is dropped and the others go on (the group gave
    /// it to another member); in explicit mode the fence stops the instance, since a
    /// second owner there is a misconfiguration.
    async fn outlive_fence(
        &mut self,
        step: Result<(), PipelineError>,
        inputs: &mut Inputs,
    ) -> Result<(), PipelineError> {
        match step {
            Err(PipelineError::Fenced { partition, .. }) if self.group => {
                self.forget_partition(partition, Released::Fenced);
                self.ownership_changed(inputs).await
            }
            other => other,
        }
    }

    /// The owned partitions changed: read their inputs, and keep the others warm.
    async fn ownership_changed(&mut self, inputs: &mut Inputs) -> Result<(), PipelineError> {
        self.assign_inputs(inputs)?;
        self.warm_standbys(inputs).await
    }

    /// Keep a replica of every partition not owned (when standbys are kept): start the
    /// missing ones from their latest snapshots, drop those now owned, and read the
    /// journals and decisions of the rest from where each replica is.
    async fn warm_standbys(&mut self, inputs: &mut Inputs) -> Result<(), PipelineError> {
        if !self.keep_standbys {
            return Ok(());
        }
        let wanted: Vec<i32> = (0..self.layout.schedule_partitions)
            .filter(|p| !self.owned.contains_key(p))
            .collect();
        self.standbys.retain(|p, _| wanted.contains(p));
        for p in wanted {
            if self.standbys.contains_key(&p) {
                continue;
            }
            let (args, layout, options) = (
                self.kafka.clone(),
                self.layout.clone(),
                self.restore_options,
            );
            let started = tokio::task::spawn_blocking(move || {
                let reader = RangeReader::new(&args, &format!("carbonflow-standby-{p}")).map_err(
                    |source| RestoreError::Bus {
                        partition: p,
                        source,
                    },
                )?;
                Replica::start(&reader, &layout, p, options)
            })
            .await?;
            match started {
                Ok(replica) => {
                    tracing::info!(
                        partition = p,
                        journal_from = replica.journal_next(),
                        "standby started"
                    );
                    self.standbys.insert(p, replica);
                }
                // Only a takeover is slower: it restores from the snapshot instead.
                Err(e) => tracing::warn!(partition = p, error = %e, "could not start a standby"),
            }
        }
        let (journal, decisions) = (
            self.layout.name(Topic::Journal),
            self.layout.name(Topic::Decisions),
        );
        let mut tpl = TopicPartitionList::new();
        for (&p, r) in &self.standbys {
            add_position(&mut tpl, &journal, p, r.journal_next())?;
            add_position(&mut tpl, &decisions, p, r.decisions_next())?;
        }
        if let Some(standby) = &mut inputs.standby {
            standby.assign(tpl)?;
        }
        metrics::standby_partitions(self.standbys.len());
        Ok(())
    }

    /// A journal or decisions record of a standby partition: folded into its replica.
    fn on_standby(&mut self, m: &BorrowedMessage<'_>) {
        let p = m.partition();
        let Some(r) = self.standbys.get_mut(&p) else {
            return; // taken over since it was fetched
        };
        match self.layout.topic_of(m.topic()) {
            Some(Topic::Journal) if m.offset() >= r.journal_next() => {
                if let Err(e) = r.fold(m.offset(), m.payload()) {
                    // A takeover restores from the snapshot, and meets the same record.
                    tracing::warn!(partition = p, offset = m.offset(), error = %e, "unreadable journal record; standby dropped");
                    self.standbys.remove(&p);
                }
            }
            Some(Topic::Decisions) if m.offset() >= r.decisions_next() => {
                r.note_decision(m.offset(), m.payload());
            }
            _ => {}
        }
        if let Some(lag) = self.view.lag().get(STANDBY_GROUP, m.topic(), p) {
            lag.processed(m.timestamp().to_millis().unwrap_or_else(now_ms));
        }
    }

    /// Drop partition `p` and everything this instance shows of it. Unwritten journal
    /// entries go with it: its next owner applies their inputs again.
    fn forget_partition(&mut self, p: i32, why: Released) {
        let Some(o) = self.owned.remove(&p) else {
            return;
        };
        for id in o.state.schedules.keys() {
            self.forget_schedule(id);
        }
        tracing::info!(partition = p, reason = why.label(), "partition released");
        metrics::partition_released(p, why);
    }

    /// Turn ready, unless a stop was asked for (a stop during a restore keeps the
    /// processor unready).
    fn ready(&self) {
        if !self.shutdown.is_cancelled() && !self.view.is_ready() {
            self.view.set_ready(true);
            metrics::ready(true);
            tracing::info!(partitions = ?self.view.partitions(), "restored; consuming inputs");
        }
    }

    /// Start restoring partition `p` (claimed) on a blocking thread; true when it
    /// finishes a standby's replica, which has folded the journal up to the last record it
    /// read, so that only the rest is folded now.
    fn restore(&mut self, p: i32) -> (JoinHandle<Result<Restored, RestoreError>>, bool) {
        let (a, layout, options) = (
            self.kafka.clone(),
            self.layout.clone(),
            self.restore_options,
        );
        let standby = self.standbys.remove(&p);
        let from_standby = standby.is_some();
        let task = tokio::task::spawn_blocking(move || match standby {
            Some(replica) => {
                let reader =
                    RangeReader::new(&a, &format!("carbonflow-restore-{p}")).map_err(|source| {
                        RestoreError::Bus {
                            partition: p,
                            source,
                        }
                    })?;
                replica.finish(&reader, &layout, options)
            }
            None => restore(&a, p, options),
        });
        (task, from_standby)
    }

    /// Own partition `p`, claimed at `epoch` and restored as `r`, and write the repairs
    /// restore found (adopted orphans, unsent decisions, tombstones).
    async fn install(
        &mut self,
        p: i32,
        epoch: i64,
        mut r: Restored,
        from_standby: bool,
    ) -> Result<(), PipelineError> {
        if r.state.epoch < epoch {
            // Restore reads to the journal's end measured after the claim was acknowledged,
            // so the claim was lost (journal recreated or truncated), or the snapshot used
            // covers it without its epoch (written past it by a processor that predates
            // claims).
            return Err(PipelineError::ClaimNotRestored {
                partition: p,
                epoch,
                restored: r.state.epoch,
            });
        }
        if r.state.epoch > epoch {
            // A newer claim was written between ours and the end of the restore.
            return Err(self.fenced(
                p,
                epoch,
                r.state.epoch,
                "another instance (claim read during restore)",
            ));
        }
        tracing::info!(
            partition = p,
            epoch,
            fenced = r.fenced,
            from_standby,
            from_snapshot = r.from_snapshot,
            replayed = r.replayed,
            orphans = r.repairs.orphans.len(),
            unsent = r.repairs.unsent.len(),
            took_ms = r.took.as_millis() as u64,
            "partition restored"
        );
        metrics::partition_restored(r.took, r.replayed, r.divergent, r.fenced);
        let ids: Vec<String> = r.state.schedules.keys().cloned().collect();
        let repairs = std::mem::take(&mut r.repairs);
        self.owned.insert(p, Owned::restored(r));
        for id in &ids {
            self.show(p, id, None);
        }
        for (pos, bytes) in &repairs.orphans {
            let input = Input::decode(Topic::Decisions, bytes).ok();
            tracing::warn!(
                partition = p,
                offset = pos.offset,
                "adopting a decision whose journal entry was lost"
            );
            if let Some(r) = self
                .apply_and_journal(p, pos, bytes, input.as_ref(), None)
                .await?
            {
                tracing::warn!(partition = p, offset = pos.offset, refusal = %r, "an orphan decision was refused; not adopted");
            }
        }
        for d in repairs.unsent {
            tracing::info!(schedule = %d.schedule, version = d.version, "re-sending a journaled decision that never reached the topic");
            let issued = IssuedDecision::encode(&d)
                .map_err(|e| WriteFailed::new(Written::Decision.describe(), p, e.into()))?;
            let decision = Arc::new(d);
            self.emit(p, vec![Output::Decision { decision, issued }], None)
                .await?;
        }
        for schedule in repairs.removed {
            self.emit(p, vec![Output::Removed { schedule }], None)
                .await?;
        }
        Ok(())
    }

    /// Claim partition `p`: write an ownership claim to its journal partition and return
    /// the epoch its offset gives.
    async fn claim(&self, p: i32) -> Result<i64, PipelineError> {
        // The client id is the same for every instance given the same --instance, which
        // is exactly the misconfiguration fencing catches: the host and pid tell them apart.
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let claim = OwnershipClaim {
            partition: p,
            owner: format!("{} on {host} (pid {})", self.client_id, std::process::id()),
            claimed_at_ms: now_ms(),
        };
        let bytes = encode(&claim).map_err(BusError::from)?;
        let topic = self.layout.name(Topic::Journal);
        let written = self
            .outbox
            .producer()
            .send_bytes(&topic, p.to_string().as_bytes(), Some(p), &bytes, None)
            .await
            .map_err(|source| WriteFailed::new("an ownership claim", p, source))?;
        let epoch = OwnershipClaim::epoch_at(written.offset);
        tracing::info!(
            partition = p,
            epoch,
            offset = written.offset,
            "ownership claimed"
        );
        metrics::ownership_claimed(p, epoch);
        Ok(epoch)
    }

    /// Partition `p`, owned at `epoch`, was claimed at `claim_epoch` by `claimed_by`:
    /// logged and counted, and the error that stops this instance.
    fn fenced(&self, p: i32, epoch: i64, claim_epoch: i64, claimed_by: &str) -> PipelineError {
        tracing::error!(
            partition = p,
            epoch,
            claim_epoch,
            claimed_by,
            "fenced: another instance claimed this partition; writing it no more"
        );
        metrics::fenced(p);
        PipelineError::Fenced {
            partition: p,
            epoch,
            claim_epoch,
            claimed_by: claimed_by.to_string(),
        }
    }

    /// A record read back from an owned journal partition (the fence): a newer claim
    /// stops this instance; anything else is this instance's own writes (or, briefly, a
    /// superseded owner's), and moves how far the journal is known unclaimed.
    fn on_own_journal(&mut self, m: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let p = m.partition();
        let Some(o) = self.owned.get_mut(&p) else {
            return Ok(());
        };
        let payload = m.payload().unwrap_or_default();
        if record_name(payload).is_ok_and(|n| n == OwnershipClaim::FULL_NAME)
            && OwnershipClaim::epoch_at(m.offset()) > o.state.epoch
        {
            let by = decode::<OwnershipClaim>(payload)
                .map_or_else(|_| "an unreadable claim".to_string(), |c| c.owner);
            let epoch = o.state.epoch;
            return Err(self.fenced(p, epoch, OwnershipClaim::epoch_at(m.offset()), &by));
        }
        // +1: verified is the next offset to read back.
        o.journal_verified = o.journal_verified.max(m.offset() + 1);
        Ok(())
    }

    /// Write a tick to each of `partitions` and apply it at once, before any input is
    /// read: the gate compares event times with the partition clock, so after a restart
    /// the clock must be now, not the time of the last tick before the stop (inputs
    /// written while the processor was down would all look future-dated). Ticks written
    /// before this one and not yet applied are passed over; they could only move the
    /// clock less.
    async fn start_clocks(&mut self, partitions: &[i32]) -> Result<(), PipelineError> {
        let tick = Tick {
            at_ms: now_ms(),
            source: self.client_id.clone(),
        };
        let bytes = encode(&tick).map_err(BusError::from)?;
        let topic = self.layout.name(Topic::Ticks);
        let producer = self.outbox.producer();
        let written = try_join_all(partitions.iter().map(|&p| {
            let (topic, bytes) = (&topic, &bytes);
            async move {
                producer
                    .send_bytes(topic, b"tick", Some(p), bytes, None)
                    .await
                    .map_err(|source| WriteFailed::new("a tick", p, source))
            }
        }))
        .await?;
        for (&p, written) in partitions.iter().zip(written) {
            let pos = InputPosition {
                topic: topic.clone(),
                partition: p,
                offset: written.offset,
            };
            let input = Input::Tick(tick.clone());
            self.apply_and_journal(p, &pos, &bytes, Some(&input), None)
                .await?;
        }
        Ok(())
    }

    /// Read every owned partition's inputs from the positions its state records, and
    /// tell the tick writer and the view which partitions are owned.
    fn assign_inputs(&self, inputs: &mut Inputs) -> Result<(), BusError> {
        let mut schedule_partitions = TopicPartitionList::new();
        for (&p, o) in &self.owned {
            for t in [Topic::Config, Topic::Telemetry, Topic::Ticks] {
                let name = self.layout.name(t);
                let next = o.state.next_offset(&name, p);
                add_position(&mut schedule_partitions, &name, p, next)?;
            }
        }
        let forecasts = self.layout.name(Topic::Forecasts);
        let mut forecast_partitions = TopicPartitionList::new();
        // Each partition remembers how far it got in the forecasts; reading from the
        // least advanced serves all (the others skip what they already applied).
        if let Some(from) = self
            .owned
            .values()
            .map(|o| o.state.next_offset(&forecasts, 0))
            .min()
        {
            add_position(&mut forecast_partitions, &forecasts, 0, from)?;
        }
        let journal = self.layout.name(Topic::Journal);
        let mut journal_partitions = TopicPartitionList::new();
        for (&p, o) in &self.owned {
            add_position(&mut journal_partitions, &journal, p, o.journal_verified)?;
        }
        inputs.schedules.assign(schedule_partitions)?;
        inputs.forecasts.assign(forecast_partitions)?;
        inputs.journal.assign(journal_partitions)?;
        let owned: Vec<i32> = self.owned.keys().copied().collect();
        metrics::partitions_owned(owned.len());
        self.view.set_partitions(owned.clone());
        self.owned_partitions.send_replace(owned);
        Ok(())
    }

    /// The loop: deliveries, group changes, inputs and snapshots until `shutdown` or the
    /// first failure.
    async fn consume(
        &mut self,
        inputs: &mut Inputs,
        membership: &mut Option<Membership>,
        settings: &Settings,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut snapshot_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(d) = self.outbox.next() => self.delivered(d).map_err(PipelineError::from),
                Some(change) = next_change(membership) => self.on_change(change, inputs).await,
                m = inputs.journal.consumer.recv() => match m {
                    Ok(m) => self.on_own_journal(&m),
                    Err(e) => {
                        tracing::warn!(error = %e, "journal read-back error (librdkafka retries)");
                        Ok(())
                    }
                },
                m = inputs.forecasts.consumer.recv() => match m {
                    Ok(m) => self.on_message(&m).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "forecast consumer error (librdkafka retries)");
                        Ok(())
                    }
                },
                m = inputs.schedules.consumer.recv() => match m {
                    Ok(m) => self.on_message(&m).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                        Ok(())
                    }
                },
                m = next_standby_record(inputs.standby.as_ref()) => {
                    match m {
                        Ok(m) => self.on_standby(&m),
                        Err(e) => tracing::warn!(error = %e, "standby consumer error (librdkafka retries)"),
                    }
                    Ok(())
                },
                _ = snapshot_check.tick() => self.snapshots_due(inputs, settings, false).await,
                // Last in this biased select, so it runs only when no input is waiting: the
                // journal batch holds what was applied since the previous one.
                _ = std::future::ready(()), if self.behind() => self.catch_up().await,
            };
            self.outlive_fence(step, inputs).await?;
        }
    }

    /// Stop consuming; after a graceful stop, write everything and a snapshot of every
    /// changed partition, so the next start (or the next owner) restores quickly; then
    /// leave the group, if in one.
    async fn stop(
        mut self,
        inputs: &mut Inputs,
        membership: Option<Membership>,
        settings: &Settings,
        outcome: Result<(), PipelineError>,
    ) -> Result<(), PipelineError> {
        self.view.set_ready(false);
        metrics::ready(false);
        let written = match outcome {
            Ok(()) => self.write_out(inputs, settings).await,
            Err(e) => Err(e),
        };
        inputs.schedules.unassigned();
        inputs.forecasts.unassigned();
        inputs.journal.unassigned();
        if let Some(standby) = &inputs.standby {
            standby.unassigned();
        }
        // Leaving after the final snapshots: the next owners restore from them.
        if let Some(m) = membership {
            m.leave().await;
        }
        written?;
        tracing::info!("stopped cleanly");
        Ok(())
    }

    /// Write a snapshot of every changed partition and everything queued.
    async fn write_out(
        &mut self,
        inputs: &mut Inputs,
        settings: &Settings,
    ) -> Result<(), PipelineError> {
        self.snapshots_due(inputs, settings, true).await?;
        self.drain().await?;
        Ok(())
    }

    fn delivered(&mut self, d: Delivery) -> Result<(), WriteFailed> {
        let (partition, written, input_ts_ms) = (d.partition, d.written, d.input_ts_ms);
        let done = d.acknowledged()?;
        let Some(o) = self.owned.get_mut(&partition) else {
            return Ok(());
        };
        // Offsets here are "next to read": the delivered record's offset + 1.
        match written {
            Written::Journal => o.journal_next = o.journal_next.max(done.offset + 1),
            Written::Decision => {
                o.decisions_next = o.decisions_next.max(done.offset + 1);
                if let Some(ts) = input_ts_ms {
                    metrics::decision_delivered(now_ms() - ts);
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
        let behind: Vec<(i32, String)> = self
            .owned
            .iter_mut()
            .flat_map(|(&p, o)| {
                std::mem::take(&mut o.view_behind)
                    .into_iter()
                    .map(move |id| (p, id))
            })
            .collect();
        for (p, id) in behind {
            self.show(p, &id, None);
        }
        Ok(())
    }

    /// Show schedule `id` of partition `p` as its state holds it, or forget it if the
    /// state holds no config for it. `decided` is its decision just made, if any: the
    /// state holds it only as its record.
    fn show(&self, p: i32, id: &str, decided: Option<&ScheduleDecision>) {
        let Some(o) = self.owned.get(&p) else {
            return;
        };
        let shown = o
            .state
            .schedules
            .get(id)
            .and_then(|s| Some((ScheduleSummary::of(p, s)?, s.last_decision.as_ref())));
        match shown {
            Some((summary, decision)) => {
                let shown = self.view.show(id, summary.clone(), decision, decided);
                metrics::schedule_shown(id, &summary, &shown, self.view.with_series());
            }
            None => self.forget_schedule(id),
        }
    }

    /// Stop showing schedule `id` (deleted, or its partition released).
    fn forget_schedule(&self, id: &str) {
        if let Some(shown) = self.view.forget(id) {
            metrics::schedule_removed(id, &shown, self.view.with_series());
        }
    }

    /// Queue partition `p`'s unwritten journal entries, as few batch records as fit.
    async fn write_journal(&mut self, p: i32) -> Result<(), WriteFailed> {
        while let Some(batch) = self
            .owned
            .get_mut(&p)
            .and_then(|o| o.unwritten.take(p, o.state.epoch))
        {
            let bytes =
                encode(&batch).map_err(|e| WriteFailed::new("a journal entry", p, e.into()))?;
            metrics::journal_written(batch.entries.len(), bytes.len());
            let key = p.to_string();
            self.outbox
                .queue(
                    Topic::Journal,
                    p,
                    key.as_bytes(),
                    Some(&bytes),
                    Written::Journal,
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// Queue every partition's unwritten journal entries.
    async fn write_journals(&mut self) -> Result<(), WriteFailed> {
        let partitions: Vec<i32> = self.owned.keys().copied().collect();
        for p in partitions {
            self.write_journal(p).await?;
        }
        Ok(())
    }

    /// Write every unwritten journal entry and wait until everything queued has been
    /// acknowledged.
    async fn drain(&mut self) -> Result<(), WriteFailed> {
        self.write_journals().await?;
        while let Some(d) = self.outbox.next().await {
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
    ) -> Result<(), WriteFailed> {
        for o in outputs {
            match o {
                Output::Decision { decision, issued } => {
                    metrics::decision_emitted(&decision, self.view.has_series(&decision.schedule));
                    self.outbox
                        .queue(
                            Topic::Decisions,
                            partition,
                            decision.schedule.as_bytes(),
                            Some(issued.record()),
                            Written::Decision,
                            input_ts_ms,
                        )
                        .await?;
                }
                Output::Rejection(r) => {
                    tracing::warn!(schedule = %r.schedule, config_version = r.config_version, reasons = ?r.reasons, "config refused; the previous config stays in force");
                    metrics::config_rejected();
                    self.outbox
                        .queue_record(
                            Topic::Rejections,
                            partition,
                            &r.schedule,
                            &r,
                            Written::Other,
                            None,
                        )
                        .await?;
                }
                Output::Removed { schedule } => {
                    tracing::info!(%schedule, "schedule deleted");
                    // A tombstone: compaction drops the schedule and routers forget it.
                    self.outbox
                        .queue(
                            Topic::Decisions,
                            partition,
                            schedule.as_bytes(),
                            None,
                            Written::Other,
                            None,
                        )
                        .await?;
                }
                Output::Refused {
                    schedule,
                    cause,
                    error,
                } => {
                    tracing::error!(%schedule, %cause, %error, "decision refused; the previous decision stays in force");
                    metrics::decision_refused(&error);
                }
            }
        }
        Ok(())
    }

    /// Apply one input (already decoded, or not) to partition `p` through the core's fold,
    /// add its journal entry to the partition's batch and write its outputs. An input the
    /// plausibility gate refuses is journaled without its record, so replaying the journal
    /// skips it as this run did; the refusal is returned for the caller to report.
    async fn apply_and_journal(
        &mut self,
        p: i32,
        pos: &InputPosition,
        raw: &[u8],
        input: Option<&Input>,
        input_ts_ms: Option<i64>,
    ) -> Result<Option<Refusal>, PipelineError> {
        let partitions = self.layout.schedule_partitions;
        let Some(o) = self.owned.get_mut(&p) else {
            return Ok(None);
        };
        if o.state.already_applied(pos) {
            return Ok(None);
        }
        let at = Placement {
            partition: p,
            partitions,
            clock_ms: o.state.clock_ms,
            wall_clock_ms: now_ms(),
        };
        let refusal = input.and_then(|i| gate::check(i, at, &self.limits).err());
        let (outputs, mut fanout, record) = match (input, &refusal) {
            (Some(i), None) => {
                let (outputs, fanout) = o.state.apply_staged(i, pos);
                (outputs, fanout, raw.to_vec())
            }
            (Some(_), Some(_)) => {
                o.state.skip(pos);
                (vec![], Fanout::default(), Vec::new())
            }
            // Undecodable: journaled as read; replay fails to decode it and skips it too.
            (None, _) => {
                o.state.skip(pos);
                (vec![], Fanout::default(), raw.to_vec())
            }
        };
        o.since_snapshot += 1;
        if let (Some(Input::Telemetry(b)), None) = (input, &refusal)
            && !outputs.iter().any(|out| out.schedule() == b.schedule)
        {
            // A bucket that closes no window changes only counters the view shows: they
            // are refreshed once no input is waiting, not for every bucket.
            o.view_behind.insert(b.schedule.clone());
        }
        // The input's own outputs, then its fan-out batch by batch: each batch is queued
        // before the next is decided, so the broker has the first decisions while the
        // rest are made, and one batch of decoded decisions is alive at a time.
        let mut decisions = Vec::new();
        let mut batch = outputs;
        loop {
            decisions.extend(batch.iter().filter_map(|out| match out {
                Output::Decision { decision, .. } => Some(DecisionRef {
                    schedule: decision.schedule.clone(),
                    version: decision.version,
                }),
                _ => None,
            }));
            self.show_and_emit(p, batch, input_ts_ms).await?;
            let Some(o) = self.owned.get_mut(&p) else {
                return Ok(refusal);
            };
            if fanout.is_done() {
                let entry = JournalEntry {
                    partition: p,
                    input: pos.clone(),
                    record,
                    decisions,
                };
                if o.unwritten.push(entry) {
                    self.write_journal(p).await?;
                }
                break;
            }
            batch = fanout.decide(&mut o.state, FANOUT_BATCH);
        }
        Ok(refusal)
    }

    /// Show the schedules `outputs` concern, then write the outputs.
    async fn show_and_emit(
        &mut self,
        p: i32,
        outputs: Vec<Output>,
        input_ts_ms: Option<i64>,
    ) -> Result<(), WriteFailed> {
        for out in &outputs {
            if let Some(o) = self.owned.get_mut(&p) {
                o.view_behind.remove(out.schedule());
            }
            let decided = match out {
                Output::Decision { decision, .. } => Some(decision.as_ref()),
                _ => None,
            };
            self.show(p, out.schedule(), decided);
        }
        self.emit(p, outputs, input_ts_ms).await
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
        // Forecasts are global: every owned partition applies them (each remembers how far
        // it got, so partitions restored from different points each resume correctly).
        let targets: Vec<i32> = if topic == Topic::Forecasts {
            self.owned.keys().copied().collect()
        } else {
            vec![m.partition()]
        };
        // Read again after a restart (the forecast consumer starts at the least advanced
        // partition): already reported and applied, so nothing more to do.
        if targets.iter().all(|p| {
            self.owned
                .get(p)
                .is_none_or(|o| o.state.already_applied(&pos))
        }) {
            if let Some(lag) = self.view.lag().get(GROUP, m.topic(), m.partition()) {
                lag.processed(m.timestamp().to_millis().unwrap_or_else(now_ms));
            }
            return Ok(());
        }
        let payload = m.payload().unwrap_or_default();
        let ts = m.timestamp().to_millis();
        metrics::input_read(topic);
        // A record this large would make its journal batch too large for the broker, and
        // the processor would stop on it at every restart: it is refused unread, and
        // journaled without its bytes.
        let too_large = payload.len() > MAX_INPUT_BYTES;
        let raw = if too_large { &[][..] } else { payload };
        let input = if too_large {
            let reason = format!(
                "record of {} bytes is larger than the {MAX_INPUT_BYTES} bytes an input may have",
                payload.len()
            );
            self.dead_letter(m, &pos, reason, "too_large").await?;
            None
        } else {
            match Input::decode(topic, raw) {
                Ok(input) => Some(input),
                Err(e) => {
                    self.dead_letter(m, &pos, e.to_string(), e.kind()).await?;
                    None
                }
            }
        };
        let mut refused = None;
        for p in targets {
            let refusal = self
                .apply_and_journal(p, &pos, raw, input.as_ref(), ts)
                .await?;
            refused = refused.or(refusal);
        }
        if let (Some(r), Some(input)) = (refused, &input) {
            self.refused(m, &pos, input, r).await?;
        }
        if let Some(lag) = self.view.lag().get(GROUP, m.topic(), m.partition()) {
            lag.processed(ts.unwrap_or_else(now_ms));
        }
        Ok(())
    }

    /// Report an input the gate refused: configs and overrides on `schedule.rejections`
    /// (where their publishers look), everything else on the dead-letter topic.
    async fn refused(
        &mut self,
        m: &BorrowedMessage<'_>,
        pos: &InputPosition,
        input: &Input,
        r: Refusal,
    ) -> Result<(), WriteFailed> {
        // A forecast is gated by each owned partition against its own clock: this one was
        // refused by at least one of them, and those journaled it without applying it.
        let topic = self.layout.topic_of(&pos.topic);
        metrics::input_refused(topic, r.kind);
        let Input::Config(command) = input else {
            // The dead letter's log line names the refusal.
            return self
                .dead_letter(m, pos, r.to_string(), r.kind.as_str())
                .await;
        };
        let label = topic.map_or("unknown", Topic::base_name);
        if let Some(left_out) = self
            .log_budget
            .allow(label, r.kind.as_str(), Instant::now())
        {
            tracing::warn!(topic = %pos.topic, partition = pos.partition, offset = pos.offset, kind = r.kind.as_str(), refusal = %r, similar_not_logged = left_out, "input refused by the plausibility gate");
        }
        let clock = self
            .owned
            .get(&pos.partition)
            .map_or(0, |o| o.state.clock_ms);
        let config_version = match command {
            carbonflow_schemas::records::ConfigCommand::Config(c) => c.config_version,
            _ => 0,
        };
        // The rejection goes where its publisher looks: the schedule's own partition.
        let home = partition_of(
            command.schedule().as_bytes(),
            self.layout.schedule_partitions,
        )
        .unwrap_or(pos.partition);
        let rejection = ConfigRejection {
            schedule: command.schedule().to_string(),
            config_version,
            rejected_at_ms: clock,
            input: pos.clone(),
            reasons: vec![FieldProblem {
                field: r.field.clone(),
                rule: format!("{}, got {} ({})", r.rule, r.value, r.kind.as_str()),
            }],
        };
        self.emit(home, vec![Output::Rejection(rejection)], None)
            .await
    }

    async fn dead_letter(
        &mut self,
        m: &BorrowedMessage<'_>,
        pos: &InputPosition,
        reason: String,
        kind: &'static str,
    ) -> Result<(), WriteFailed> {
        let topic = self.layout.topic_of(&pos.topic);
        let label = topic.map_or("unknown", Topic::base_name);
        if let Some(left_out) = self.log_budget.allow(label, kind, Instant::now()) {
            tracing::warn!(topic = %pos.topic, partition = pos.partition, offset = pos.offset, %reason, similar_not_logged = left_out, "record sent to the dead-letter topic");
        }
        metrics::dead_lettered(topic, kind);
        // Copies are bounded so that a dead letter always fits in a record.
        let copy = |b: &[u8]| b[..b.len().min(DEAD_LETTER_COPY_BYTES)].to_vec();
        let payload = m.payload().unwrap_or_default();
        let reason = if payload.len() > DEAD_LETTER_COPY_BYTES {
            format!(
                "{reason} (payload copied truncated: the first {DEAD_LETTER_COPY_BYTES} of {} bytes)",
                payload.len()
            )
        } else {
            reason
        };
        let letter = DeadLetter {
            topic: pos.topic.clone(),
            partition: pos.partition,
            offset: pos.offset,
            key: m.key().map(copy),
            payload: m.payload().map(copy),
            reason,
            error_kind: kind.to_string(),
            consumer: self.client_id.clone(),
            at_ms: m.timestamp().to_millis().unwrap_or_else(now_ms),
        };
        self.outbox
            .queue_record(
                Topic::DeadLetters,
                0,
                &pos.topic,
                &letter,
                Written::Other,
                None,
            )
            .await
    }

    /// Snapshot partition `p`, after draining every pending write (so offsets are exact)
    /// and reading the journal it covers back (so no newer claim lies inside it). The
    /// pipeline waits for it: how long is logged and exported.
    async fn snapshot(&mut self, inputs: &Inputs, p: i32) -> Result<(), PipelineError> {
        let started = Instant::now();
        self.drain().await?;
        let drained = started.elapsed();
        if !self.journal_read_back(inputs, p).await? {
            tracing::warn!(
                partition = p,
                "snapshot skipped: the journal it would cover was not read back in time"
            );
            metrics::snapshot_skipped(SnapshotSkipped::NotReadBack);
            metrics::snapshot_paused(started.elapsed());
            return Ok(());
        }
        let Some(o) = self.owned.get_mut(&p) else {
            return Ok(());
        };
        let caught_up = started.elapsed();
        let chunks = snapshot_of(&o.state, o.journal_next, o.decisions_next)?;
        let encoded = started.elapsed();
        o.since_snapshot = 0;
        o.last_snapshot = Instant::now();
        let size: usize = chunks.iter().map(|c| c.state.len()).sum();
        let space = o.snapshot_space;
        if let Err((chunk, e)) = self.write_snapshot(p, space, &chunks).await {
            // A snapshot only shortens restores, so a failed one must not stop the
            // processor (one refused for its size would fail again on every restart): the
            // state and the journal are intact, restore uses the previous whole snapshot,
            // and the next one is due after the interval.
            // A producer whose broker lost its state fails every later write: the next
            // snapshot gets a new one.
            if let Ok(fresh) =
                RecordProducer::new(&self.kafka, &format!("{}-snapshots", self.client_id))
            {
                self.snapshots = fresh;
            }
            let reason = if e.is_message_too_large() {
                SnapshotSkipped::TooLarge
            } else {
                SnapshotSkipped::WriteFailed
            };
            tracing::warn!(partition = p, chunk, chunks = chunks.len(), error = %e, "snapshot could not be written; skipped");
            metrics::snapshot_skipped(reason);
            metrics::snapshot_paused(started.elapsed());
            return Ok(());
        }
        if let Some(o) = self.owned.get_mut(&p) {
            o.snapshot_space = space.other();
        }
        let took = started.elapsed();
        tracing::info!(
            partition = p,
            bytes = size,
            chunks = chunks.len(),
            drain_ms = drained.as_millis() as u64,
            read_back_ms = (caught_up - drained).as_millis() as u64,
            encode_ms = (encoded - caught_up).as_millis() as u64,
            write_ms = (took - encoded).as_millis() as u64,
            "snapshot written"
        );
        metrics::snapshot_written(p, size);
        metrics::snapshot_paused(took);
        Ok(())
    }

    /// Write a snapshot's chunks under `space`'s keys: all queued at once, then every
    /// acknowledgement awaited. On failure, the chunk that failed and why.
    async fn write_snapshot(
        &self,
        p: i32,
        space: SnapshotSpace,
        chunks: &[PartitionSnapshot],
    ) -> Result<(), (i32, BusError)> {
        let topic = self.layout.name(Topic::Snapshots);
        let mut acknowledged = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let key = space.key(p, chunk.chunk);
            let payload = encode(chunk).map_err(|e| (chunk.chunk, BusError::from(e)))?;
            let queued = self
                .snapshots
                .enqueue(&topic, key.as_bytes(), Some(p), Some(&payload), None)
                .await
                .map_err(|e| (chunk.chunk, e))?;
            acknowledged.push((chunk.chunk, queued));
        }
        for (chunk, ack) in acknowledged {
            ack.await.map_err(|e| (chunk, e))?;
        }
        Ok(())
    }

    /// Read own journal partitions back until partition `p`'s is read up to what was
    /// written; false if that takes longer than [`READ_BACK_TIMEOUT`].
    async fn journal_read_back(&mut self, inputs: &Inputs, p: i32) -> Result<bool, PipelineError> {
        let deadline = tokio::time::Instant::now() + READ_BACK_TIMEOUT;
        while self
            .owned
            .get(&p)
            .is_some_and(|o| o.journal_verified < o.journal_next)
        {
            match tokio::time::timeout_at(deadline, inputs.journal.consumer.recv()).await {
                Ok(Ok(m)) => self.on_own_journal(&m)?,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "journal read-back error (librdkafka retries)")
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn snapshots_due(
        &mut self,
        inputs: &mut Inputs,
        settings: &Settings,
        force: bool,
    ) -> Result<(), PipelineError> {
        let due: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, o)| {
                o.since_snapshot > 0
                    && (force
                        || o.since_snapshot >= entries_per_snapshot(settings, &o.state)
                        || o.last_snapshot.elapsed() >= settings.snapshot_interval)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let snapshot = self.snapshot(inputs, p).await;
            self.outlive_fence(snapshot, inputs).await?;
        }
        Ok(())
    }
}
/// Journal entries after which a partition is snapshotted: `--snapshot-every`, or as many
/// as the partition has schedules if that is more. A snapshot writes every schedule, so
/// this keeps its cost per entry bounded (at 100,000 schedules, one every 2,000 entries
/// would spend most of the time snapshotting), and a restore folds at most as many
/// entries as the snapshot holds schedules.
fn entries_per_snapshot(settings: &Settings, state: &PartitionState) -> u64 {
    settings.snapshot_every.max(state.schedules.len() as u64)
}
