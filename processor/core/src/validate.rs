//! The rules a schedule config and a manual override must keep (deliberate difference:
//! the reference accepts anything). One rule set, used by the fold, the admin API, the
//! ingest CLI and the dry run.
//!
//! Every problem is reported, each naming the field and the rule it breaks; the caller
//! keeps the previous config in force when any is found.

use std::collections::HashSet;

use carbonflow_schemas::records::{FieldProblem, ManualOverride, ScheduleConfig};
use carbonflow_schemas::vocabulary::{FallbackCondition, ScheduleId};

use crate::policy::{
    CarbonOptimal, Policy, highest_reachable_precision, policy_named, policy_names,
};

/// Check `config`; on success return it with precisions given as percentages (> 1)
/// converted to fractions, as the reference accepts them.
pub fn validate(config: &ScheduleConfig) -> Result<ScheduleConfig, Vec<FieldProblem>> {
    let mut c = config.clone();
    let mut problems = Vec::new();
    let mut bad = |field: &str, rule: String| {
        problems.push(FieldProblem {
            field: field.to_string(),
            rule,
        })
    };

    if let Err(e) = c.schedule.parse::<ScheduleId>() {
        bad("schedule", e.to_string());
    }
    if policy_named(&c.policy).is_none() {
        bad(
            "policy",
            format!(
                "must be one of {}, got {:?}",
                policy_names().join(", "),
                c.policy
            ),
        );
    }
    if c.zone.trim().is_empty() {
        bad("zone", "must name the forecast zone, e.g. GB".into());
    }
    let finite = [
        ("target_error", c.target_error),
        ("credit_min", c.credit_min),
        ("credit_max", c.credit_max),
        ("credit_sensitivity", c.credit_sensitivity),
        ("throttle_min", c.throttle_min),
        ("throttle_intensity_floor", c.throttle_intensity_floor),
        ("throttle_intensity_ceiling", c.throttle_intensity_ceiling),
        ("throttle_green_blend", c.throttle_green_blend),
        (
            "throttle_green_override_threshold",
            c.throttle_green_override_threshold,
        ),
    ];
    for (field, v) in finite {
        if !v.is_finite() {
            bad(field, format!("must be a finite number, got {v}"));
        }
    }
    if !(0.0..1.0).contains(&c.target_error) {
        bad(
            "target_error",
            format!("must be in [0, 1), got {}", c.target_error),
        );
    }
    if c.credit_min >= c.credit_max {
        bad(
            "credit_min",
            format!(
                "must be below credit_max ({}), got {}",
                c.credit_max, c.credit_min
            ),
        );
    }
    if c.credit_sensitivity <= 0.0 {
        bad(
            "credit_sensitivity",
            format!("must be > 0, got {}", c.credit_sensitivity),
        );
    }
    if c.credit_window_seconds <= 0 {
        bad(
            "credit_window_seconds",
            format!("must be > 0 seconds, got {}", c.credit_window_seconds),
        );
    }
    if c.valid_for_seconds <= 0 {
        bad(
            "valid_for_seconds",
            format!("must be > 0 seconds, got {}", c.valid_for_seconds),
        );
    }
    for (field, v) in [
        ("throttle_min", c.throttle_min),
        ("throttle_green_blend", c.throttle_green_blend),
        (
            "throttle_green_override_threshold",
            c.throttle_green_override_threshold,
        ),
    ] {
        if !(0.0..=1.0).contains(&v) {
            bad(field, format!("must be in [0, 1], got {v}"));
        }
    }
    if c.throttle_intensity_floor >= c.throttle_intensity_ceiling {
        bad(
            "throttle_intensity_floor",
            format!(
                "must be below throttle_intensity_ceiling ({}), got {}",
                c.throttle_intensity_ceiling, c.throttle_intensity_floor
            ),
        );
    }
    if c.evaluator != "router" {
        bad(
            "evaluator",
            format!(
                "must be router (the only evaluator carbonflow has), got {:?}",
                c.evaluator
            ),
        );
    }
    for (i, b) in c.components.iter().enumerate() {
        if b.min_replicas.is_some_and(|m| m < 0) || b.max_replicas.is_some_and(|m| m < 0) {
            bad(
                &format!("components[{i}]"),
                "replica bounds must be ≥ 0".into(),
            );
        }
        if let (Some(min), Some(max)) = (b.min_replicas, b.max_replicas)
            && min > max
        {
            bad(
                &format!("components[{i}].min_replicas"),
                format!("must be ≤ max_replicas ({max}), got {min}"),
            );
        }
    }
    if c.flavours.is_empty() || !c.flavours.iter().any(|f| f.enabled) {
        bad("flavours", "at least one flavour must be enabled".into());
    }
    let mut names = HashSet::new();
    for (i, f) in c.flavours.iter_mut().enumerate() {
        if f.name.trim().is_empty() {
            bad(&format!("flavours[{i}].name"), "must not be empty".into());
        } else if !names.insert(f.name.clone()) {
            bad(
                &format!("flavours[{i}].name"),
                format!("must be unique, {:?} appears twice", f.name),
            );
        }
        // Percentages are accepted as the reference does: 30 means 0.30.
        if f.precision > 1.0 {
            f.precision /= 100.0;
        }
        if !(f.precision > 0.0 && f.precision <= 1.0) {
            bad(
                &format!("flavours[{i}].precision"),
                format!(
                    "must be in (0, 1] (or a percentage in (1, 100]), got {}",
                    f.precision
                ),
            );
        }
        if !(f.relative_energy.is_finite() && f.relative_energy >= 0.0) {
            bad(
                &format!("flavours[{i}].relative_energy"),
                format!("must be ≥ 0, got {}", f.relative_energy),
            );
        }
        if let Some(h) = &f.upstream_header
            && let Err(rule) = forwardable_header(h)
        {
            bad(
                &format!("flavours[{i}].upstream_header"),
                format!("{rule}, got {h:?}"),
            );
        }
        if !(f.upstream_url.starts_with("http://") || f.upstream_url.starts_with("https://")) {
            bad(
                &format!("flavours[{i}].upstream_url"),
                format!("must be an http(s) URL, got {:?}", f.upstream_url),
            );
        }
    }
    check_plan_limits(&mut c, &mut bad);
    for (i, r) in c.fallbacks.iter().enumerate() {
        if !names.contains(&r.to) {
            bad(
                &format!("fallbacks[{i}].to"),
                format!("must name a configured flavour, got {:?}", r.to),
            );
        }
        if r.when_status.is_empty() {
            bad(
                &format!("fallbacks[{i}].when_status"),
                "must list at least one condition".into(),
            );
        }
        for s in &r.when_status {
            if let Err(e) = s.parse::<FallbackCondition>() {
                bad(&format!("fallbacks[{i}].when_status"), e.to_string());
            }
        }
    }
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(problems)
    }
}

/// carbon-optimal's plan limits (`max_share` per flavour, `min_slot_precision`): fractions
/// (percentages are read as the reference reads precisions), honoured by that policy only,
/// and satisfiable: the caps of the enabled flavours must be able to fill a slot, and the
/// floor must be reachable under them.
fn check_plan_limits(c: &mut ScheduleConfig, bad: &mut impl FnMut(&str, String)) {
    let as_fraction = |v: &mut f64| {
        if *v > 1.0 {
            *v /= 100.0;
        }
    };
    let plans = c.policy == CarbonOptimal.name();
    for (i, f) in c.flavours.iter_mut().enumerate() {
        let Some(cap) = f.max_share.as_mut() else {
            continue;
        };
        as_fraction(cap);
        let field = format!("flavours[{i}].max_share");
        if !(*cap > 0.0 && *cap <= 1.0) {
            bad(
                &field,
                format!("must be in (0, 1] (or a percentage in (1, 100]), got {cap}"),
            );
        } else if !plans {
            bad(
                &field,
                format!(
                    "is honoured by the carbon-optimal policy only; this schedule's policy is {:?}",
                    c.policy
                ),
            );
        }
    }
    if let Some(floor) = c.min_slot_precision.as_mut() {
        as_fraction(floor);
        if !(*floor > 0.0 && *floor <= 1.0) {
            bad(
                "min_slot_precision",
                format!("must be in (0, 1] (or a percentage in (1, 100]), got {floor}"),
            );
        } else if !plans {
            bad(
                "min_slot_precision",
                format!(
                    "is honoured by the carbon-optimal policy only; this schedule's policy is {:?}",
                    c.policy
                ),
            );
        }
    }
    if !plans
        || c.flavours
            .iter()
            .any(|f| !(f.precision > 0.0 && f.precision <= 1.0))
    {
        return;
    }
    let Some(reachable) = highest_reachable_precision(&c.flavours) else {
        let capacity: f64 = c
            .flavours
            .iter()
            .filter(|f| f.enabled)
            .map(|f| f.max_share.unwrap_or(1.0).clamp(0.0, 1.0))
            .sum();
        bad(
            "flavours",
            format!(
                "the max_share caps of the enabled flavours sum to {capacity}: they must sum to at least 1 so that every request has a flavour"
            ),
        );
        return;
    };
    if let Some(floor) = c.min_slot_precision
        && floor > reachable + 1e-12
    {
        bad(
            "min_slot_precision",
            format!(
                "must be at most {reachable}, the highest mean precision the enabled flavours reach under their max_share caps; got {floor}"
            ),
        );
    }
}

/// Headers a router sets or strips itself, or that carry the client's credentials: a
/// config must not name them as the flavour header.
const RESERVED_HEADERS: [&str; 16] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Whether `name` may be the header a router sets to a flavour's precision (service-mesh
/// mode): a valid, lower-case header name the router does not own.
fn forwardable_header(name: &str) -> Result<(), &'static str> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !token {
        return Err(
            "must be a lower-case header name of letters, digits and '-', at most 64 bytes",
        );
    }
    if RESERVED_HEADERS.contains(&name) || name.starts_with("x-forwarded-") {
        return Err("must not be a header the router sets, strips or forwards from the client");
    }
    Ok(())
}

/// Check manual override `o`. The rules on its own values always apply; those that need
/// the schedule apply when `config` (the config in force) is given, and the expiry check
/// when `clock_ms` (the partition's event-time clock) is. Publishers, which know neither,
/// check what they can; the fold checks everything.
pub fn validate_override(
    o: &ManualOverride,
    config: Option<&ScheduleConfig>,
    clock_ms: Option<i64>,
) -> Result<(), Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, rule: String| {
        problems.push(FieldProblem {
            field: field.to_string(),
            rule,
        })
    };
    if o.weights.is_empty() {
        bad("weights", "must name at least one flavour".into());
    }
    for (i, w) in o.weights.iter().enumerate() {
        if let Some(c) = config
            && !c.flavours.iter().any(|f| f.name == w.flavour && f.enabled)
        {
            bad(
                &format!("weights[{i}].flavour"),
                format!("must name an enabled flavour, got {:?}", w.flavour),
            );
        }
        if !(w.weight.is_finite() && w.weight >= 0.0) {
            bad(
                &format!("weights[{i}].weight"),
                format!("must be a finite number ≥ 0, got {}", w.weight),
            );
        }
    }
    let sum: f64 = o.weights.iter().map(|w| w.weight.max(0.0)).sum();
    let usable_sum = sum.is_finite() && sum > 0.0;
    if !o.weights.is_empty() && !usable_sum {
        bad(
            "weights",
            format!("must have a positive, finite sum, got {sum}"),
        );
    }
    if o.ttl_seconds <= 0 {
        bad("ttl_seconds", format!("must be > 0, got {}", o.ttl_seconds));
    } else if let Some(clock) = clock_ms
        && o.expires_at_ms() <= clock
    {
        bad(
            "ttl_seconds",
            "has already elapsed at the processor's event time".into(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `field: rule; field: rule` — problems on one line, for errors and logs.
pub fn describe_problems(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.rule))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use carbonflow_schemas::records::FallbackRule;
    use carbonflow_schemas::testing::samples;

    use super::*;

    fn fields(c: &ScheduleConfig) -> Vec<String> {
        validate(c)
            .expect_err("must be refused")
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn the_sample_config_is_valid_and_percentages_become_fractions() {
        let mut c = samples::schedule_config();
        c.flavours[2].precision = 30.0;
        let v = validate(&c).expect("valid");
        assert_eq!(v.flavours[2].precision, 0.3);
    }

    type Breakage = Box<dyn Fn(&mut ScheduleConfig)>;

    #[test]
    fn each_rule_names_its_field() {
        let base = samples::schedule_config();
        let cases: Vec<(&str, Breakage)> = vec![
            ("schedule", Box::new(|c| c.schedule = "no-namespace".into())),
            ("policy", Box::new(|c| c.policy = "greedy".into())),
            ("zone", Box::new(|c| c.zone = " ".into())),
            ("target_error", Box::new(|c| c.target_error = 1.5)),
            ("credit_min", Box::new(|c| c.credit_min = 2.0)),
            (
                "credit_sensitivity",
                Box::new(|c| c.credit_sensitivity = 0.0),
            ),
            (
                "credit_window_seconds",
                Box::new(|c| c.credit_window_seconds = 0),
            ),
            ("valid_for_seconds", Box::new(|c| c.valid_for_seconds = -1)),
            ("throttle_min", Box::new(|c| c.throttle_min = 1.5)),
            (
                "throttle_intensity_floor",
                Box::new(|c| c.throttle_intensity_floor = 400.0),
            ),
            (
                "flavours",
                Box::new(|c| c.flavours.iter_mut().for_each(|f| f.enabled = false)),
            ),
            (
                "flavours[1].name",
                Box::new(|c| c.flavours[1].name = "precision-100".into()),
            ),
            (
                "flavours[0].precision",
                Box::new(|c| c.flavours[0].precision = 0.0),
            ),
            (
                "flavours[0].precision",
                Box::new(|c| c.flavours[0].precision = 250.0),
            ),
            (
                "flavours[0].upstream_url",
                Box::new(|c| c.flavours[0].upstream_url = "ftp://x".into()),
            ),
            (
                "flavours[0].upstream_header",
                Box::new(|c| c.flavours[0].upstream_header = Some("content-length".into())),
            ),
            (
                "flavours[0].upstream_header",
                Box::new(|c| c.flavours[0].upstream_header = Some("X Bad".into())),
            ),
            (
                "fallbacks[0].to",
                Box::new(|c| c.fallbacks[0].to = "nope".into()),
            ),
            (
                "fallbacks[0].when_status",
                Box::new(|c| {
                    c.fallbacks = vec![FallbackRule {
                        when_status: vec!["teapot".into()],
                        to: "precision-100".into(),
                    }]
                }),
            ),
            (
                "components[0].min_replicas",
                Box::new(|c| c.components[0].min_replicas = Some(99)),
            ),
        ];
        for (field, break_it) in cases {
            let mut c = base.clone();
            break_it(&mut c);
            assert!(
                fields(&c).iter().any(|f| f == field),
                "{field} not named in {:?}",
                fields(&c)
            );
        }
    }
}
