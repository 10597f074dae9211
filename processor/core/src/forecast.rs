//! The forecast view a policy sees at an event time.

use carbonflow_schemas::records::Forecast;

/// Forecast figures at one moment (the reference's `ForecastSnapshot`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForecastSnapshot {
    /// Intensity of the current slot, gCO2/kWh.
    pub intensity_now: Option<f64>,
    /// Intensity of the next slot (the current one if it is the last).
    pub intensity_next: Option<f64>,
    /// Demand now, requests/s.
    pub demand_now: Option<f64>,
    /// Demand next, requests/s.
    pub demand_next: Option<f64>,
    /// Intensities from the current slot on.
    pub slots: Vec<f64>,
    /// End of the current slot, epoch ms (bounds a decision's validity).
    pub current_slot_end_ms: Option<i64>,
}

impl ForecastSnapshot {
    /// The view of `forecast` at event time `at_ms`: the current slot is the one that
    /// contains `at_ms`, else the first that ends after it. (The reference keeps slots
    /// that ended up to 30 minutes ago as "now"; we never treat a past slot as current.)
    pub fn at(forecast: &Forecast, at_ms: i64) -> Self {
        let mut points: Vec<_> = forecast
            .points
            .iter()
            .filter(|p| p.end_ms > at_ms)
            .collect();
        points.sort_by_key(|p| p.start_ms);
        let slots: Vec<f64> = points.iter().map(|p| p.g_per_kwh).collect();
        let demand_at = |i: usize| -> Option<f64> {
            let p = points.get(i)?;
            forecast
                .demand
                .as_ref()?
                .iter()
                .find(|d| d.start_ms <= p.start_ms && p.start_ms < d.end_ms)
                .map(|d| d.requests_per_second)
        };
        Self {
            intensity_now: slots.first().copied(),
            intensity_next: slots.get(1).or(slots.first()).copied(),
            demand_now: demand_at(0),
            demand_next: demand_at(1).or_else(|| demand_at(0)),
            current_slot_end_ms: points.first().map(|p| p.end_ms),
            slots,
        }
    }

    /// A snapshot with now, next and slots given directly (dry runs, tests).
    pub fn from_values(now: Option<f64>, next: Option<f64>, slots: Vec<f64>) -> Self {
        Self {
            intensity_now: now,
            intensity_next: next,
            slots,
            ..Self::default()
        }
    }
}
