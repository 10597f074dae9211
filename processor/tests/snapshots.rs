//! Snapshots larger than one broker record, through the real broker: written in chunks,
//! read back whole by restore.

use carbonflow_core::state::{Input, PartitionState};
use carbonflow_processor::journal::{
    RestoreOptions, SNAPSHOT_CHUNK_BYTES, SnapshotSpace, restore, snapshot_of,
};
use carbonflow_schemas::bus::KafkaArgs;
use carbonflow_schemas::bus::{RecordProducer, Topic};
use carbonflow_schemas::records::PartitionSnapshot;
use carbonflow_schemas::records::{ConfigCommand, InputPosition};
use carbonflow_schemas::testing::{fresh_layout, samples};

/// Partition 0's state after one config for each of `schedules` schedules `{prefix}/s{i}`
/// (each makes a first decision).
fn state_of(prefix: &str, schedules: i64) -> PartitionState {
    let mut state = PartitionState::new(0);
    for i in 0..schedules {
        let mut c = samples::schedule_config();
        c.schedule = format!("{prefix}/s{i}");
        // Positions on a topic restore does not check: the state is built here, not read.
        let pos = InputPosition {
            topic: "synthetic".into(),
            partition: 0,
            offset: i,
        };
        state.apply(&Input::Config(ConfigCommand::Config(Box::new(c))), &pos);
    }
    state
}

/// Write `chunks` as partition 0's snapshot under key set A.
async fn write_snapshot(args: &KafkaArgs, chunks: &[PartitionSnapshot]) {
    let producer = RecordProducer::new(args, "snapshot-test").expect("producer");
    let topic = args.layout().name(Topic::Snapshots);
    for c in chunks {
        producer
            .send(&topic, &SnapshotSpace::A.key(0, c.chunk), Some(0), c)
            .await
            .expect("each chunk fits a record");
    }
}

/// Restore partition 0 as a starting processor does.
async fn restored(args: &KafkaArgs) -> carbonflow_processor::journal::Restored {
    let a = args.clone();
    tokio::task::spawn_blocking(move || restore(&a, 0, RestoreOptions::LATEST))
        .await
        .expect("join")
        .expect("restores")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_too_large_for_one_record_snapshots_in_chunks_and_restores_exactly() {
    let args = fresh_layout("bigsnap", 1).await;
    let state = state_of("big", 12_000);
    let chunks = snapshot_of(&state, 0, 0).expect("encodes");
    let bytes: usize = chunks.iter().map(|c| c.state.len()).sum();
    assert!(
        chunks.len() >= 2 && bytes > SNAPSHOT_CHUNK_BYTES,
        "{} chunks, {bytes} bytes: the state must need more than one record",
        chunks.len()
    );
    write_snapshot(&args, &chunks).await;
    let restored = restored(&args).await;
    assert!(restored.from_snapshot, "the chunked snapshot is used");
    assert_eq!(
        restored.snapshot_space,
        Some(SnapshotSpace::A),
        "the next one goes to the other key set"
    );
    assert_eq!(restored.state, state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_the_previous_format_is_restored_to_the_same_state() {
    use carbonflow_core::state::STATE_FORMATS_READ;
    use flate2::Compression;
    use flate2::read::GzDecoder;
    use flate2::write::GzEncoder;
    use std::io::{Read, Write};

    let args = fresh_layout("oldsnap", 1).await;
    let state = state_of("old", 20);
    // Given the state as format 4 wrote it: each last decision as the decision's JSON
    // rather than its record.
    let mut chunks = snapshot_of(&state, 0, 0).expect("encodes");
    assert_eq!(chunks.len(), 1, "a small state is one chunk");
    let mut json = Vec::new();
    GzDecoder::new(chunks[0].state.as_slice())
        .read_to_end(&mut json)
        .expect("gzip");
    let mut doc: serde_json::Value = serde_json::from_slice(&json).expect("json");
    for (id, s) in state.schedules.iter() {
        let decision = s
            .last_decision
            .as_ref()
            .expect("a config makes a first decision")
            .decode()
            .expect("decodes");
        doc["schedules"][id]["last_decision"] = serde_json::to_value(&decision).expect("json");
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&serde_json::to_vec(&doc).expect("json"))
        .expect("gzip");
    chunks[0].state = gz.finish().expect("gzip");
    chunks[0].state_format = 4;
    assert!(STATE_FORMATS_READ.contains(&4));
    write_snapshot(&args, &chunks).await;
    // When the partition is restored, then it comes from that snapshot, the same state.
    let restored = restored(&args).await;
    assert!(restored.from_snapshot, "the format-4 snapshot is used");
    assert_eq!(restored.state, state);
}
