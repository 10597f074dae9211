//! Publishing forecasts: scenario replays and CSV files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carbonflow_schemas::bus::{BusError, KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{Forecast, ForecastPoint};
use tokio_util::sync::CancellationToken;

use crate::scenario::Scenario;

/// Why publishing forecasts failed.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// Kafka refused a record.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The CSV file is unusable.
    #[error("{file}: {detail}")]
    Csv {
        /// Path of the forecast CSV file, as given.
        file: PathBuf,
        /// Line and problem.
        detail: String,
    },
}

/// How a scenario is replayed.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Zone the forecasts are for.
    pub zone: String,
    /// Start of slot 0, epoch ms.
    pub start_ms: i64,
    /// Length of one slot on the replay's clock, ms (the scenario's slot / speed-up).
    pub slot_ms: i64,
    /// Slots per forecast.
    pub horizon: usize,
    /// Forecasts to publish (`None`: until stopped, or the end of a non-repeating one).
    pub steps: Option<usize>,
    /// Publish each forecast when its slot starts (else all at once).
    pub wait: bool,
}

/// Replay `scenario`: forecast `k` is issued at the start of slot `k`. Returns how many
/// were published. Progress is printed one line per forecast.
pub async fn replay(
    args: &KafkaArgs,
    producer: &RecordProducer,
    scenario: &Scenario,
    r: &Replay,
    shutdown: &CancellationToken,
) -> Result<usize, ForecastError> {
    let topic = args.layout().name(Topic::Forecasts);
    let steps = r
        .steps
        .or((!scenario.repeat).then_some(scenario.values.len()));
    let mut k = 0;
    while steps.is_none_or(|n| k < n) {
        let f = scenario.forecast(&r.zone, r.start_ms, r.slot_ms, k, r.horizon);
        if r.wait {
            let wait_ms = f.issued_at_ms - crate::now_ms();
            if wait_ms > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                }
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        producer.send(&topic, &r.zone, None, &f).await?;
        println!(
            "forecast {k:>4}  {}  {:>6.1} gCO2/kWh now, {:>6.1} next  ({} slots)",
            carbonflow_schemas::time::format_rfc3339_ms(f.issued_at_ms),
            f.points[0].g_per_kwh,
            f.points
                .get(1)
                .map_or(f.points[0].g_per_kwh, |p| p.g_per_kwh),
            f.points.len()
        );
        k += 1;
    }
    Ok(k)
}

/// Forecasts (one per zone) from a CSV file `timestamp,zone,g_per_kwh[,index]` with an
/// optional header line. Each point lasts until the zone's next timestamp; the last one
/// lasts `slot`.
pub fn from_csv(
    file: &Path,
    issued_at_ms: i64,
    slot: Duration,
) -> Result<Vec<Forecast>, ForecastError> {
    let bad = |detail: String| ForecastError::Csv {
        file: file.into(),
        detail,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .map_err(|e| bad(e.to_string()))?;
    let mut by_zone: BTreeMap<String, Vec<(i64, f64, Option<String>)>> = BTreeMap::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| bad(e.to_string()))?;
        let line = i + 1;
        if line == 1 && row.get(0) == Some("timestamp") {
            continue;
        }
        if row.len() < 3 {
            return Err(bad(format!(
                "line {line}: expected timestamp,zone,g_per_kwh[,index], got {} field(s)",
                row.len()
            )));
        }
        let ts = carbonflow_schemas::time::parse_rfc3339_ms(&row[0])
            .map_err(|e| bad(format!("line {line}: timestamp {e}")))?;
        let g: f64 = row[2]
            .parse()
            .ok()
            .filter(|g: &f64| g.is_finite() && *g >= 0.0)
            .ok_or_else(|| {
                bad(format!(
                    "line {line}: g_per_kwh {:?} must be a non-negative number",
                    &row[2]
                ))
            })?;
        let index = row.get(3).filter(|s| !s.is_empty()).map(str::to_string);
        by_zone
            .entry(row[1].to_string())
            .or_default()
            .push((ts, g, index));
    }
    if by_zone.is_empty() {
        return Err(bad("no data rows".into()));
    }
    Ok(by_zone
        .into_iter()
        .map(|(zone, mut rows)| {
            rows.sort_by_key(|r| r.0);
            let ends: Vec<i64> = rows
                .iter()
                .skip(1)
                .map(|r| r.0)
                .chain([rows[rows.len() - 1].0 + slot.as_millis() as i64])
                .collect();
            Forecast {
                issuer: format!(
                    "csv:{}",
                    file.file_name().map_or("-".into(), |n| n.to_string_lossy())
                ),
                issued_at_ms,
                points: rows
                    .into_iter()
                    .zip(ends)
                    .map(|((start_ms, g, index), end_ms)| ForecastPoint {
                        start_ms,
                        end_ms,
                        g_per_kwh: g,
                        index,
                    })
                    .collect(),
                demand: None,
                zone,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_one_forecast_per_zone() {
        let dir = std::env::temp_dir().join(format!("cf-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("f.csv");
        std::fs::write(
            &file,
            "timestamp,zone,g_per_kwh,index\n2025-11-18T12:30:00Z,GB,200,high\n2025-11-18T12:00:00Z,GB,180,\n2025-11-18T12:00:00Z,FR,40\n",
        )
        .expect("write");
        let fs = from_csv(&file, 7, Duration::from_secs(1800)).expect("csv");
        assert_eq!(fs.len(), 2);
        let gb = fs.iter().find(|f| f.zone == "GB").expect("GB");
        assert_eq!(gb.points[0].g_per_kwh, 180.0);
        assert_eq!(gb.points[0].end_ms, gb.points[1].start_ms);
        assert_eq!(gb.points[1].end_ms - gb.points[1].start_ms, 1_800_000);
        assert_eq!(gb.points[1].index.as_deref(), Some("high"));
        std::fs::write(&file, "2025-11-18T12:00:00Z,GB,-1\n").expect("write");
        let e = from_csv(&file, 7, Duration::from_secs(1800)).expect_err("negative");
        assert!(e.to_string().contains("line 1"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
