//! Snapshots larger than one broker record, through the real broker: written in chunks,
//! read back whole by restore.

use carbonflow_core::state::{Input, PartitionState};
use carbonflow_processor::journal::{
    RestoreOptions, SNAPSHOT_CHUNK_BYTES, SnapshotSpace, restore, snapshot_of,
};
use carbonflow_schemas::bus::{RecordProducer, Topic};
use carbonflow_schemas::records::{ConfigCommand, InputPosition};
use carbonflow_schemas::testing::{fresh_layout, samples};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_too_large_for_one_record_snapshots_in_chunks_and_restores_exactly() {
    let args = fresh_layout("bigsnap", 1).await;
    let mut state = PartitionState::new(0);
    for i in 0..12_000 {
        let mut c = samples::schedule_config();
        c.schedule = format!("big/s{i}");
        // Positions on a topic restore does not check: the state is built here, not read.
        let pos = InputPosition {
            topic: "synthetic".into(),
            partition: 0,
            offset: i,
        };
        state.apply(&Input::Config(ConfigCommand::Config(Box::new(c))), &pos);
    }
    let chunks = snapshot_of(&state, 0, 0).expect("encodes");
    let bytes: usize = chunks.iter().map(|c| c.state.len()).sum();
    assert!(
        chunks.len() >= 2 && bytes > SNAPSHOT_CHUNK_BYTES,
        "{} chunks, {bytes} bytes: the state must need more than one record",
        chunks.len()
    );
    let producer = RecordProducer::new(&args, "bigsnap-test").expect("producer");
    let topic = args.layout().name(Topic::Snapshots);
    for c in &chunks {
        producer
            .send(&topic, &SnapshotSpace::A.key(0, c.chunk), Some(0), c)
            .await
            .expect("each chunk fits a record");
    }
    let a = args.clone();
    let restored = tokio::task::spawn_blocking(move || restore(&a, 0, RestoreOptions::LATEST))
        .await
        .expect("join")
        .expect("restores");
    assert!(restored.from_snapshot, "the chunked snapshot is used");
    assert_eq!(
        restored.snapshot_space,
        Some(SnapshotSpace::A),
        "the next one goes to the other key set"
    );
    assert_eq!(restored.state, state);
}
