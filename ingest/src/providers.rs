//! Forecast providers: how to ask each public API for a zone's forecast, and how to read
//! its answer into forecast points (gCO2eq/kWh). Pure functions; polling lives in
//! [`crate::poll`].
//!
//! Formats, as their public documentation describes them:
//!
//! * **UK Carbon Intensity API** (api.carbonintensity.org.uk), no key.
//!   National: `GET /intensity/{from}/fw48h` →
//!   `{"data": [{"from": "2025-11-18T12:00Z", "to": "2025-11-18T12:30Z",
//!   "intensity": {"forecast": 266, "actual": 263, "index": "moderate"}}]}`.
//!   Regional: `GET /regional/intensity/{from}/fw48h/regionid/{id}` nests the slots one
//!   level deeper: `{"data": {"regionid": 13, "shortname": "London", "data": [slots]}}`
//!   (some deployments wrap that object in a one-element array). The reference engine
//!   reads only the top level and so gets nothing from regional answers; we read both.
//! * **Electricity Maps** v3: `GET /v3/carbon-intensity/forecast?zone={zone}` with header
//!   `auth-token: $ELECTRICITYMAPS_API_KEY` →
//!   `{"zone": "DE", "forecast": [{"carbonIntensity": 302, "datetime": "2025-11-18T12:00:00.000Z"}],
//!   "updatedAt": "..."}`; hourly points, each lasting until the next.
//! * **WattTime** v3: `GET /v3/forecast?region={region}&signal_type=co2_moer` with
//!   `Authorization: Bearer $WATTTIME_TOKEN` →
//!   `{"data": [{"point_time": "2025-11-18T12:00:00+00:00", "value": 912.3}],
//!   "meta": {"units": "lbs_co2_per_mwh", "data_point_period_seconds": 300, "generated_at": "..."}}`.
//!   Values in lbs CO2/MWh are converted to g/kWh (× 453.59237 g/lb ÷ 1000 kWh/MWh).
//! * **Green Software Foundation Carbon Aware SDK** (WebAPI):
//!   `GET /emissions/forecasts/current?location={location}` →
//!   `[{"generatedAt": "...", "location": "eastus", "forecastData": [{"location": "eastus",
//!   "timestamp": "2025-11-18T12:00:00+00:00", "duration": 5, "value": 350.5}]}]`,
//!   durations in minutes, values in g/kWh.

use carbonflow_schemas::time::{format_rfc3339_ms, parse_rfc3339_ms};

use carbonflow_schemas::records::ForecastPoint;
use serde_json::Value;

/// g/kWh per lbs/MWh.
pub const G_PER_KWH_PER_LBS_PER_MWH: f64 = 453.592_37 / 1000.0;

/// A forecast source.
#[derive(Debug, Clone, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// UK Carbon Intensity API, national.
    UkNational,
    /// UK Carbon Intensity API, one region (`--area` is the region id, 1–17).
    UkRegional,
    /// Electricity Maps v3 (`--area` is the zone, e.g. DE).
    ElectricityMaps,
    /// WattTime v3 (`--area` is the region, e.g. CAISO_NORTH).
    Watttime,
    /// Carbon Aware SDK WebAPI (`--area` is the location, e.g. eastus).
    CarbonAwareSdk,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn bad(what: impl Into<String>) -> ParseError {
    ParseError(what.into())
}

/// Environment variable holding the provider's credential, if it needs one.
pub fn credential_env(p: &Provider) -> Option<&'static str> {
    match p {
        Provider::ElectricityMaps => Some("ELECTRICITYMAPS_API_KEY"),
        Provider::Watttime => Some("WATTTIME_TOKEN"),
        Provider::CarbonAwareSdk => Some("CARBON_AWARE_SDK_API_KEY"),
        _ => None,
    }
}

/// Default base URL.
pub fn default_base(p: &Provider) -> &'static str {
    match p {
        Provider::UkNational | Provider::UkRegional => "https://api.carbonintensity.org.uk",
        Provider::ElectricityMaps => "https://api.electricitymap.org",
        Provider::Watttime => "https://api.watttime.org",
        Provider::CarbonAwareSdk => "http://127.0.0.1:8080",
    }
}

/// Path and query of the request for `area` at `now_ms`.
pub fn request_path(p: &Provider, area: &str, now_ms: i64) -> String {
    let from = format_rfc3339_ms(now_ms);
    // The API takes minutes: 2025-11-18T12:00Z.
    let from_minutes = format!("{}Z", &from[..16]);
    let enc = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect::<String>()
    };
    match p {
        Provider::UkNational => format!("/intensity/{from_minutes}/fw48h"),
        Provider::UkRegional => {
            format!(
                "/regional/intensity/{from_minutes}/fw48h/regionid/{}",
                enc(area)
            )
        }
        Provider::ElectricityMaps => format!("/v3/carbon-intensity/forecast?zone={}", enc(area)),
        Provider::Watttime => format!("/v3/forecast?region={}&signal_type=co2_moer", enc(area)),
        Provider::CarbonAwareSdk => format!("/emissions/forecasts/current?location={}", enc(area)),
    }
}

/// Header carrying the credential (the secret comes from [`credential_env`]; it is never
/// logged).
pub fn auth_header(p: &Provider, secret: &str) -> Option<(&'static str, String)> {
    match p {
        Provider::ElectricityMaps => Some(("auth-token", secret.to_string())),
        Provider::Watttime => Some(("authorization", format!("Bearer {secret}"))),
        Provider::CarbonAwareSdk => Some(("x-api-key", secret.to_string())),
        _ => None,
    }
}

fn time_ms(v: &Value, field: &str) -> Result<i64, ParseError> {
    let s = v
        .as_str()
        .ok_or_else(|| bad(format!("{field} must be a time string, got {v}")))?;
    // RFC 3339 with `Z` or an offset; the UK API omits seconds (12:00Z).
    let normalised = if s.len() == 17 && s.ends_with('Z') {
        format!("{}:00Z", &s[..16])
    } else {
        s.replace("+00:00", "Z")
    };
    parse_rfc3339_ms(&normalised)
        .map_err(|_| bad(format!("{field} {s:?} is not an RFC 3339 UTC time")))
}

fn number(v: &Value, field: &str) -> Result<f64, ParseError> {
    v.as_f64()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| bad(format!("{field} must be a non-negative number, got {v}")))
}

/// Points from `(start, value, index)` triples: each lasts until the next start, the
/// last one `last_ms`.
fn chain(mut rows: Vec<(i64, f64, Option<String>)>, last_ms: i64) -> Vec<ForecastPoint> {
    rows.sort_by_key(|r| r.0);
    rows.dedup_by_key(|r| r.0);
    let ends: Vec<i64> = rows
        .iter()
        .skip(1)
        .map(|r| r.0)
        .chain(rows.last().map(|r| r.0 + last_ms))
        .collect();
    rows.into_iter()
        .zip(ends)
        .map(|((start_ms, g_per_kwh, index), end_ms)| ForecastPoint {
            start_ms,
            end_ms,
            g_per_kwh,
            index,
        })
        .collect()
}

fn uk_slots(slots: &[Value], prefix: &str) -> Result<Vec<ForecastPoint>, ParseError> {
    slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let f = |k: &str| format!("{prefix}[{i}].{k}");
            let intensity = &s["intensity"];
            let value = if intensity["forecast"].is_number() {
                number(&intensity["forecast"], &f("intensity.forecast"))?
            } else {
                number(&intensity["actual"], &f("intensity.forecast"))?
            };
            Ok(ForecastPoint {
                start_ms: time_ms(&s["from"], &f("from"))?,
                end_ms: time_ms(&s["to"], &f("to"))?,
                g_per_kwh: value,
                index: intensity["index"].as_str().map(str::to_string),
            })
        })
        .collect()
}

/// Read a provider's answer into forecast points, sorted by start.
pub fn parse(p: &Provider, body: &[u8]) -> Result<Vec<ForecastPoint>, ParseError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the answer is not JSON: {e}")))?;
    let mut points = match p {
        Provider::UkNational => {
            let slots = v["data"]
                .as_array()
                .ok_or_else(|| bad("data must be an array of slots"))?;
            uk_slots(slots, "data")?
        }
        Provider::UkRegional => {
            let region = match &v["data"] {
                Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            let slots = region["data"]
                .as_array()
                .ok_or_else(|| bad("data.data must be an array of slots (regional answer)"))?;
            uk_slots(slots, "data.data")?
        }
        Provider::ElectricityMaps => {
            let rows = v["forecast"]
                .as_array()
                .ok_or_else(|| bad("forecast must be an array"))?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Ok((
                        time_ms(&r["datetime"], &format!("forecast[{i}].datetime"))?,
                        number(
                            &r["carbonIntensity"],
                            &format!("forecast[{i}].carbonIntensity"),
                        )?,
                        None,
                    ))
                })
                .collect::<Result<Vec<_>, ParseError>>()?;
            chain(rows, 3_600_000)
        }
        Provider::Watttime => {
            let units = v["meta"]["units"].as_str().unwrap_or("lbs_co2_per_mwh");
            let factor = match units {
                "lbs_co2_per_mwh" => G_PER_KWH_PER_LBS_PER_MWH,
                "g_co2_per_kwh" => 1.0,
                other => return Err(bad(format!("meta.units {other:?} is not lbs_co2_per_mwh"))),
            };
            let period = v["meta"]["data_point_period_seconds"]
                .as_i64()
                .unwrap_or(300)
                * 1000;
            let rows = v["data"]
                .as_array()
                .ok_or_else(|| bad("data must be an array"))?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Ok((
                        time_ms(&r["point_time"], &format!("data[{i}].point_time"))?,
                        number(&r["value"], &format!("data[{i}].value"))? * factor,
                        None,
                    ))
                })
                .collect::<Result<Vec<_>, ParseError>>()?;
            chain(rows, period)
        }
        Provider::CarbonAwareSdk => {
            let first = match &v {
                Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            first["forecastData"]
                .as_array()
                .ok_or_else(|| bad("[0].forecastData must be an array"))?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let start = time_ms(&r["timestamp"], &format!("forecastData[{i}].timestamp"))?;
                    let minutes = number(&r["duration"], &format!("forecastData[{i}].duration"))?;
                    Ok(ForecastPoint {
                        start_ms: start,
                        end_ms: start + (minutes * 60_000.0) as i64,
                        g_per_kwh: number(&r["value"], &format!("forecastData[{i}].value"))?,
                        index: None,
                    })
                })
                .collect::<Result<Vec<_>, ParseError>>()?
        }
    };
    if points.is_empty() {
        return Err(bad("the answer holds no forecast points"));
    }
    points.sort_by_key(|p| p.start_ms);
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uk_national_and_regional_shapes() {
        let national = br#"{"data": [
            {"from": "2025-11-18T12:30Z", "to": "2025-11-18T13:00Z", "intensity": {"forecast": 250, "actual": null, "index": "high"}},
            {"from": "2025-11-18T12:00Z", "to": "2025-11-18T12:30Z", "intensity": {"forecast": 266, "actual": 263, "index": "moderate"}}]}"#;
        let p = parse(&Provider::UkNational, national).expect("national");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].g_per_kwh, 266.0);
        assert_eq!(p[0].end_ms - p[0].start_ms, 1_800_000);
        let regional = br#"{"data": {"regionid": 13, "shortname": "London", "data": [
            {"from": "2025-11-18T12:00Z", "to": "2025-11-18T12:30Z", "intensity": {"forecast": 120, "index": "low"}, "generationmix": []}]}}"#;
        let p = parse(&Provider::UkRegional, regional).expect("regional");
        assert_eq!(
            (p[0].g_per_kwh, p[0].index.as_deref()),
            (120.0, Some("low"))
        );
        let wrapped = br#"{"data": [{"regionid": 13, "data": [{"from": "2025-11-18T12:00Z", "to": "2025-11-18T12:30Z", "intensity": {"forecast": 99}}]}]}"#;
        assert_eq!(
            parse(&Provider::UkRegional, wrapped).expect("wrapped")[0].g_per_kwh,
            99.0
        );
    }

    #[test]
    fn electricity_maps_watttime_and_carbon_aware_sdk() {
        let em = br#"{"zone": "DE", "forecast": [{"carbonIntensity": 302, "datetime": "2025-11-18T12:00:00.000Z"},
            {"carbonIntensity": 290, "datetime": "2025-11-18T13:00:00.000Z"}], "updatedAt": "2025-11-18T11:00:00.000Z"}"#;
        let p = parse(&Provider::ElectricityMaps, em).expect("em");
        assert_eq!(
            (p[0].g_per_kwh, p[0].end_ms, p[1].end_ms - p[1].start_ms),
            (302.0, p[1].start_ms, 3_600_000)
        );
        let wt = br#"{"data": [{"point_time": "2025-11-18T12:00:00+00:00", "value": 1000.0, "version": "x"}],
            "meta": {"units": "lbs_co2_per_mwh", "data_point_period_seconds": 300, "region": "CAISO_NORTH"}}"#;
        let p = parse(&Provider::Watttime, wt).expect("wt");
        assert!((p[0].g_per_kwh - 453.59237).abs() < 1e-9);
        assert_eq!(p[0].end_ms - p[0].start_ms, 300_000);
        let sdk = br#"[{"generatedAt": "2025-11-18T11:55:00+00:00", "location": "eastus", "forecastData": [
            {"location": "eastus", "timestamp": "2025-11-18T12:00:00+00:00", "duration": 5, "value": 350.5}]}]"#;
        let p = parse(&Provider::CarbonAwareSdk, sdk).expect("sdk");
        assert_eq!(
            (p[0].g_per_kwh, p[0].end_ms - p[0].start_ms),
            (350.5, 300_000)
        );
    }

    #[test]
    fn malformed_answers_are_named() {
        let e = parse(&Provider::UkNational, b"<html>").expect_err("html");
        assert!(e.0.contains("not JSON"));
        let e = parse(&Provider::UkNational, br#"{"data": [{"from": "x", "to": "2025-11-18T12:30Z", "intensity": {"forecast": 1}}]}"#)
            .expect_err("bad time");
        assert!(e.0.contains("data[0].from"), "{e}");
        let e = parse(
            &Provider::ElectricityMaps,
            br#"{"forecast": [{"datetime": "2025-11-18T12:00:00Z"}]}"#,
        )
        .expect_err("missing");
        assert!(e.0.contains("forecast[0].carbonIntensity"), "{e}");
        assert!(
            parse(&Provider::Watttime, br#"{"data": []}"#).is_err(),
            "empty"
        );
    }

    #[test]
    fn request_paths() {
        let t = 1_763_467_200_000; // 2025-11-18T12:00:00Z
        assert_eq!(
            request_path(&Provider::UkNational, "", t),
            "/intensity/2025-11-18T12:00Z/fw48h"
        );
        assert_eq!(
            request_path(&Provider::UkRegional, "13", t),
            "/regional/intensity/2025-11-18T12:00Z/fw48h/regionid/13"
        );
        assert_eq!(
            request_path(&Provider::Watttime, "CAISO_NORTH&x=1", t),
            "/v3/forecast?region=CAISO_NORTHx1&signal_type=co2_moer"
        );
    }
}
