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
    /// `[start, end)` of every slot of `slots`, epoch ms (empty when given as bare values).
    pub slot_bounds_ms: Vec<(i64, i64)>,
    /// Forecast demand of every slot of `slots`, requests/s (`None` where there is none).
    pub slot_demand: Vec<Option<f64>>,
    /// The moment this is a view at, epoch ms.
    pub at_ms: i64,
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
            slot_bounds_ms: points.iter().map(|p| (p.start_ms, p.end_ms)).collect(),
            slot_demand: (0..points.len()).map(demand_at).collect(),
            at_ms,
            intensity_now: slots.first().copied(),
            intensity_next: slots.get(1).or(slots.first()).copied(),
            demand_now: demand_at(0),
            demand_next: demand_at(1).or_else(|| demand_at(0)),
            current_slot_end_ms: points.first().map(|p| p.end_ms),
            slots,
        }
    }

    /// How long each slot of `slots` lasts from `at_ms` on, seconds: the current slot only
    /// for what is left of it. Bare values (no bounds) count one second each.
    pub fn slot_seconds(&self) -> Vec<f64> {
        if self.slot_bounds_ms.len() != self.slots.len() {
            return vec![1.0; self.slots.len()];
        }
        self.slot_bounds_ms
            .iter()
            .map(|(start, end)| (end - (*start).max(self.at_ms)).max(0) as f64 / 1000.0)
            .collect()
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
