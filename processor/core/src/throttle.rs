//! Processing throttle and replica ceilings (reference section 4.1).

use carbonflow_schemas::records::{ComponentBounds, Processing, ReplicaCeiling, ScheduleConfig};

use crate::forecast::ForecastSnapshot;

/// Throttle factor and per-component ceilings for a post-update balance.
pub fn scaling_directive(
    balance: f64,
    config: &ScheduleConfig,
    forecast: &ForecastSnapshot,
) -> Processing {
    let span = config.credit_max - config.credit_min;
    let credits_ratio = if span <= 0.0 {
        1.0
    } else {
        ((balance - config.credit_min) / span).clamp(0.0, 1.0)
    };
    let (floor, ceiling) = (
        config.throttle_intensity_floor,
        config.throttle_intensity_ceiling,
    );
    let peak = [forecast.intensity_now, forecast.intensity_next]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    let intensity_ratio = match peak {
        Some(peak) if ceiling > floor => ((ceiling - peak) / (ceiling - floor)).clamp(0.0, 1.0),
        _ => 1.0,
    };
    let tmin = config.throttle_min;
    let mut throttle = credits_ratio.min(intensity_ratio).clamp(tmin, 1.0);
    if intensity_ratio >= config.throttle_green_override_threshold {
        throttle = 1.0;
    } else if intensity_ratio > credits_ratio {
        let blended =
            credits_ratio + (intensity_ratio - credits_ratio) * config.throttle_green_blend;
        throttle = throttle.max(blended).clamp(tmin, 1.0);
    }
    // Opportunity-aware shift: a much cleaner slot ahead throttles now (runs after the
    // green override, as in the reference).
    if let Some(now) = forecast.intensity_now.filter(|n| *n > 0.0)
        && let Some(min_ahead) = forecast.slots.iter().take(6).copied().reduce(f64::min)
    {
        let ratio = if min_ahead <= 0.0 {
            1.0
        } else {
            now / min_ahead
        };
        if ratio > 1.2 {
            throttle = (throttle / ratio).max(tmin);
        }
    }
    Processing {
        throttle,
        credits_ratio,
        intensity_ratio,
        ceilings: config
            .components
            .iter()
            .filter_map(|c| ceiling_of(c, throttle))
            .collect(),
    }
}

fn ceiling_of(bounds: &ComponentBounds, throttle: f64) -> Option<ReplicaCeiling> {
    let max = bounds.max_replicas?;
    let mut c = (f64::from(max) * throttle).round_ties_even() as i32;
    if let Some(min) = bounds.min_replicas {
        c = c.max(min);
    }
    Some(ReplicaCeiling {
        component: bounds.component.clone(),
        replicas: c.max(0).min(max),
    })
}
