//! `processor audit`, the reading half: fold every journal partition from its first
//! retained entry, and read every decision on `schedule.decisions`. What is computed from
//! them (verify, explain, accounting, export, what-if) is pure and lives in
//! [`carbonflow_core::audit`].

use carbonflow_core::audit::{AuditError, Emitted, PartitionReplay, Replay, ReplayOptions};
use carbonflow_schemas::bus::{BusError, KafkaArgs, RangeReader, Topic};
use carbonflow_schemas::decode;
use carbonflow_schemas::records::{ScheduleDecision, journal_record};

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditRunError {
    /// Reading the topics failed.
    #[error(transparent)]
    Read(#[from] BusError),
    /// The audit itself refused (argument, what-if change that breaks a config).
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Fold every journal partition from its first retained entry.
pub fn replay(args: &KafkaArgs, opts: ReplayOptions<'_>) -> Result<Replay, AuditRunError> {
    let layout = args.layout();
    let journal = layout.name(Topic::Journal);
    let reader = RangeReader::new(args, "carbonflow-audit")?;
    let mut out = Replay::default();
    for p in 0..layout.schedule_partitions {
        let (low, high) = reader.watermarks(&journal, p)?;
        if low > 0 {
            out.gaps.push(format!(
                "journal partition {p} starts at offset {low}: earlier entries were deleted by retention, so its state is re-derived from an empty start"
            ));
        }
        let mut fold = PartitionReplay::new(p, opts);
        let mut records = 0_u64;
        reader.read(&journal, p, low, high, |r| {
            records += 1;
            if records.is_multiple_of(10_000) {
                eprintln!(
                    "audit: journal partition {p}: record {} of {} ({} entries so far)",
                    r.offset - low + 1,
                    high - low,
                    out.entries
                );
            }
            let record = match journal_record(r.payload.unwrap_or_default()) {
                Ok(record) => record,
                // Reported with the codec's reason (an unknown schema fingerprint names
                // it), so a journal written by a newer version is seen, not skipped.
                Err(e) => {
                    out.gaps.push(format!(
                        "journal partition {p} offset {} is unreadable ({e}); its entries are not re-derived",
                        r.offset
                    ));
                    return Ok(());
                }
            };
            fold.apply_record(r.offset, &record, &mut out)?;
            Ok::<(), AuditRunError>(())
        })?;
    }
    Ok(out)
}

/// Every decision record on `schedule.decisions`, and the gaps found reading them.
pub fn emitted(args: &KafkaArgs) -> Result<(Emitted, Vec<String>), AuditRunError> {
    let layout = args.layout();
    let topic = layout.name(Topic::Decisions);
    let reader = RangeReader::new(args, "carbonflow-audit")?;
    let mut out = Emitted::new();
    let mut gaps = vec![];
    for p in 0..layout.schedule_partitions {
        let (low, high) = reader.watermarks(&topic, p)?;
        if low > 0 {
            gaps.push(format!(
                "{topic} partition {p} starts at offset {low}: older decisions were deleted"
            ));
        }
        reader.read(&topic, p, low, high, |r| {
            if let Some(d) = r.payload.and_then(|b| decode::<ScheduleDecision>(b).ok()) {
                out.entry(d.schedule.clone())
                    .or_default()
                    .insert(d.precedence(), d);
            }
            Ok::<(), BusError>(())
        })?;
    }
    Ok((out, gaps))
}
