//! Schedule-partition ownership by Kafka's consumer-group protocol (`--ownership group`):
//! the group's cooperative-sticky assignor decides which partitions this instance owns,
//! so the partitions of an instance that stops, or that the broker evicts after a crash,
//! move to the others, and an instance joining moves only the partitions that change
//! hands.
//!
//! The group is joined by a consumer of its own, subscribed to `schedule.config` (a
//! schedule-keyed topic, so its partitions are the schedule partitions), with every
//! partition it is given paused: it reads nothing and commits nothing, it only carries
//! membership. The pipeline keeps reading its inputs with assigned consumers at the
//! positions its state records, as in explicit mode; fencing (claims in the journal)
//! keeps ownership safe whatever the group believes.
//!
//! The member is polled on a thread of its own because a revocation has to wait: the
//! rebalance callback hands the revoked partitions to the pipeline and blocks until the
//! pipeline has written what it has in flight and a final snapshot of them, so the next
//! owner restores from that snapshot instead of replaying the journal tail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use carbonflow_schemas::bus::{BusError, GroupMember, KafkaArgs};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// How long a revocation waits for the pipeline to release the partitions. Past it the
/// group moves on anyway (fencing keeps that safe; the next owner replays more journal).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the member thread polls for group events; it also bounds how long leaving
/// waits for the thread to notice.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why the group could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The member consumer could not be created or subscribed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The thread that serves the group's callbacks could not start.
    #[error("could not start the consumer-group member's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A change of this instance's partitions, as the group decided it.
#[derive(Debug)]
pub(crate) enum Change {
    /// These partitions are now this instance's: claim, restore, consume.
    Assigned(Vec<i32>),
    /// These partitions are taken away. `lost` when the group already gave them to another
    /// member (this one missed its session): nothing more may be written for them. The
    /// rebalance waits until `released` is answered (or dropped).
    Revoked {
        /// The partitions.
        partitions: Vec<i32>,
        /// The assignment was lost rather than handed over.
        lost: bool,
        /// Answered once the partitions are released.
        released: SyncSender<()>,
    },
}

/// This instance's membership of the processors' consumer group.
pub(crate) struct Membership {
    changes: UnboundedReceiver<Change>,
    leave: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Membership {
    /// Join `group` as `member`, subscribed to `topic` (a schedule-keyed topic).
    pub(crate) fn join(
        args: &KafkaArgs,
        client_id: &str,
        group: &str,
        member: &GroupMember,
        topic: &str,
    ) -> Result<Self, MembershipError> {
        let (tx, changes) = unbounded_channel();
        let consumer: BaseConsumer<MemberContext> = args
            .group_member_config(&format!("{client_id}-member"), group, member)?
            .create_with_context(MemberContext { changes: tx })
            .map_err(|e| BusError::kafka(format!("create the member of group {group}"), e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| BusError::kafka(format!("subscribe group {group} to {topic}"), e))?;
        tracing::info!(
            group,
            topic,
            instance_id = member.instance_id.as_deref(),
            session_timeout_ms = member.session_timeout_ms,
            "joining the processors' consumer group"
        );
        let leave = Arc::new(AtomicBool::new(false));
        let thread = {
            let leave = leave.clone();
            std::thread::Builder::new()
                .name("group-member".into())
                .spawn(move || poll_until_left(consumer, &leave))
                .map_err(MembershipError::Thread)?
        };
        Ok(Self {
            changes,
            leave,
            thread: Some(thread),
        })
    }

    /// The next change of this instance's partitions.
    pub(crate) async fn next(&mut self) -> Option<Change> {
        self.changes.recv().await
    }

    /// Leave the group (once everything owned is released): a dynamic member's partitions
    /// go to the others at once; a static member's wait for it until its session ends.
    pub(crate) async fn leave(mut self) {
        // Closing the channel and dropping what it holds answers any revocation still
        // waiting (its answer's sender goes with it): nothing is owned any more.
        self.changes.close();
        while self.changes.try_recv().is_ok() {}
        self.leave.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!("left the processors' consumer group");
    }
}

/// Serve the group's callbacks until `leave`, then close the member, which leaves the
/// group (rdkafka's consumer close on drop).
fn poll_until_left(consumer: BaseConsumer<MemberContext>, leave: &AtomicBool) {
    while !leave.load(Ordering::Relaxed) {
        // The member's partitions are paused: a message here can only be one fetched
        // before the pause, and is not ours to read.
        if let Some(Err(e)) = consumer.poll(POLL_INTERVAL) {
            tracing::warn!(error = %e, "consumer-group member error (librdkafka retries)");
        }
    }
    consumer.unsubscribe();
}

/// Turns the member's rebalance callbacks into [`Change`]s for the pipeline.
struct MemberContext {
    changes: UnboundedSender<Change>,
}

/// The partition numbers of a rebalance's list.
fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    ps.sort_unstable();
    ps.dedup();
    ps
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                if partitions.is_empty() {
                    return;
                }
                let lost = consumer.assignment_lost();
                tracing::info!(?partitions, lost, "partitions revoked by the group");
                let (released, wait) = sync_channel(1);
                let change = Change::Revoked {
                    partitions: partitions.clone(),
                    lost,
                    released,
                };
                if self.changes.send(change).is_err() {
                    return; // the pipeline has stopped: nothing is owned
                }
                match wait.recv_timeout(RELEASE_TIMEOUT) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
                    Err(RecvTimeoutError::Timeout) => tracing::warn!(
                        ?partitions,
                        timeout_s = RELEASE_TIMEOUT.as_secs(),
                        "revoked partitions not released in time; the group moves on (the next owner's claim fences this instance)"
                    ),
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer-group rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Membership only: the pipeline reads the inputs itself.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "could not pause the member's partitions");
            }
            let partitions = partitions_of(tpl);
            tracing::info!(?partitions, "partitions assigned by the group");
            let _ = self.changes.send(Change::Assigned(partitions));
        }
    }
}
