//! `carbon-optimal`: spend the quality budget in the dirtiest forecast slots, exactly.
//!
//! At every decision the policy plans the mean precision `q_t` of every slot of the
//! forecast horizon and applies the current slot's plan (receding horizon). The plan
//! minimises expected emissions `Σ_t R_t · I_t · h(q_t)` (requests × intensity × energy
//! of the cheapest mix at precision `q_t`) subject to one coupling constraint: what was
//! delivered since the promise began (the exact [`QualityAccount`]) plus the plan meets
//! the target, `surplus + Σ_t R_t · (q_t − (1 − targetError)) ≥ 0`; and, per slot,
//! `minSlotPrecision ≤ q_t`, each flavour's share ≤ its `maxShare`.
//!
//! Why it is exact without an LP solver: the slots share one mix curve `h`, the lower
//! boundary of what the enabled flavours (with their caps) can deliver in the
//! (precision, energy) plane. `h` is convex and piecewise linear, and its vertices are the
//! greedy fills that minimise `energy − λ · precision` for some λ ≥ 0 ([`MixCurve::of`]).
//! The problem is then a fractional knapsack over the curve's edges in every slot: each
//! edge sells `R_t · Δq` precision·requests at `I_t · slope` relative-energy·gCO2/kWh per
//! unit; buying the cheapest edges first until the constraint holds is optimal, at most
//! one edge is bought in part, and the price of the last edge bought is the shadow price
//! λ (what one more unit of precision would cost in emissions). Ties are broken by slot,
//! then edge, so equal inputs give bit-equal plans and replay holds.
//!
//! Demand per slot is the forecast's demand when it has one, else the request rate of the
//! last telemetry window; with neither, every second counts one request (only the ratios
//! between slots matter then, and the account is read against that rate).

use std::borrow::Cow;

use carbonflow_schemas::records::Diagnostic;

use super::*;

/// The carbon-optimal policy.
#[derive(Debug, Clone, Copy)]
pub struct CarbonOptimal;

/// Slots whose plan is published in the decision's diagnostics (`plan.<i>.*`).
const PLAN_SLOTS_SHOWN: usize = 8;

/// Without a forecast slot the account is settled over one virtual slot this long,
/// seconds, at unknown (uniform) intensity.
const NO_FORECAST_SECONDS: f64 = 300.0;

/// How far below 1 the caps of the enabled flavours may sum and still fill a slot
/// (percentages such as 60/30/10 do not sum to exactly 1 in floating point).
const CAPACITY_TOLERANCE: f64 = 1e-9;

/// A mix of the enabled flavours: its mean precision, mean relative energy and shares
/// (indexed like [`MixCurve::flavours`]).
#[derive(Debug, Clone, PartialEq)]
struct Mix {
    precision: f64,
    energy: f64,
    shares: Vec<f64>,
}

/// One enabled flavour as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    precision: f64,
    energy: f64,
    cap: f64,
}

/// The cheapest mixes of the enabled flavours, from the least-energy mix to the most
/// precise one: vertices of a convex, piecewise-linear `energy(precision)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MixCurve {
    vertices: Vec<Mix>,
}

impl MixCurve {
    /// The curve of the enabled flavours of `flavours` under their `max_share` caps, in
    /// their order; `None` when the caps cannot fill a slot.
    pub fn of_flavours(flavours: &[Flavour]) -> Option<Self> {
        let candidates: Vec<Candidate> = flavours
            .iter()
            .filter(|f| f.enabled)
            .map(candidate)
            .collect();
        Self::of(&candidates)
    }

    /// Mean relative energy of the cheapest mix at precision `q`.
    pub fn energy_at(&self, q: f64) -> f64 {
        self.at(q).energy
    }

    /// Shares of the cheapest mix at precision `q`, one per enabled flavour in order.
    pub fn shares_at(&self, q: f64) -> Vec<f64> {
        self.at(q).shares
    }

    /// The curve of `candidates`, or `None` when their caps cannot fill a slot.
    fn of(candidates: &[Candidate]) -> Option<Self> {
        let capacity: f64 = candidates.iter().map(|c| c.cap).sum();
        if candidates.is_empty() || capacity < 1.0 - CAPACITY_TOLERANCE {
            return None;
        }
        // The greedy fill minimising energy − λ·precision changes only where two
        // flavours' keys cross; one fill per interval between crossings gives every vertex.
        let mut crossings: Vec<f64> = Vec::new();
        for (i, a) in candidates.iter().enumerate() {
            for b in &candidates[i + 1..] {
                let dp = b.precision - a.precision;
                if dp != 0.0 {
                    let l = (b.energy - a.energy) / dp;
                    if l.is_finite() && l > 0.0 {
                        crossings.push(l);
                    }
                }
            }
        }
        crossings.sort_by(f64::total_cmp);
        crossings.dedup();
        let mut probes = Vec::with_capacity(crossings.len() + 1);
        let mut previous = 0.0;
        for l in &crossings {
            probes.push((previous + l) / 2.0);
            previous = *l;
        }
        probes.push(if previous > 0.0 { previous * 2.0 } else { 1.0 });
        let mut points: Vec<Mix> = probes.iter().map(|l| greedy_fill(candidates, *l)).collect();
        points.push(greedy_fill_by_precision(candidates));
        points.sort_by(|a, b| {
            a.precision
                .total_cmp(&b.precision)
                .then(a.energy.total_cmp(&b.energy))
        });
        // Lower-right hull (monotone chain) from the least-energy mix on.
        let start = points
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                a.energy
                    .total_cmp(&b.energy)
                    .then(b.precision.total_cmp(&a.precision))
            })
            .map_or(0, |(i, _)| i);
        let mut hull: Vec<Mix> = Vec::new();
        for p in points.into_iter().skip(start) {
            if hull
                .last()
                .is_some_and(|last| p.precision <= last.precision + 1e-15)
            {
                // Same precision: keep the cheaper (the sort put it first).
                continue;
            }
            while hull.len() >= 2 {
                let (a, b) = (&hull[hull.len() - 2], &hull[hull.len() - 1]);
                let cross = (b.precision - a.precision) * (p.energy - a.energy)
                    - (b.energy - a.energy) * (p.precision - a.precision);
                if cross <= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        Some(Self { vertices: hull })
    }

    /// Lowest precision on the curve (the least-energy mix).
    pub fn lowest(&self) -> f64 {
        self.vertices.first().map_or(1.0, |m| m.precision)
    }

    /// Highest precision reachable.
    pub fn highest(&self) -> f64 {
        self.vertices.last().map_or(1.0, |m| m.precision)
    }

    /// Edges as `(from precision, to precision, energy per unit of precision)`.
    fn edges(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        self.vertices.windows(2).map(|w| {
            let (a, b) = (&w[0], &w[1]);
            (
                a.precision,
                b.precision,
                (b.energy - a.energy) / (b.precision - a.precision),
            )
        })
    }

    /// The cheapest mix at precision `q` (clamped to the curve).
    fn at(&self, q: f64) -> Mix {
        let q = q.clamp(self.lowest(), self.highest());
        let i = self
            .vertices
            .windows(2)
            .position(|w| q <= w[1].precision)
            .unwrap_or(0);
        let Some(b) = self.vertices.get(i + 1) else {
            return self.vertices[0].clone();
        };
        let a = &self.vertices[i];
        let t = ((q - a.precision) / (b.precision - a.precision)).clamp(0.0, 1.0);
        Mix {
            precision: q,
            energy: a.energy + t * (b.energy - a.energy),
            shares: a
                .shares
                .iter()
                .zip(&b.shares)
                .map(|(x, y)| x + t * (y - x))
                .collect(),
        }
    }
}

/// Fill one slot's requests in ascending `energy − λ·precision` (ties: more precise
/// first, then registry order), each flavour up to its cap.
fn greedy_fill(candidates: &[Candidate], lambda: f64) -> Mix {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let key = |c: &Candidate| c.energy - lambda * c.precision;
    order.sort_by(|a, b| {
        let (ca, cb) = (&candidates[*a], &candidates[*b]);
        key(ca)
            .total_cmp(&key(cb))
            .then(cb.precision.total_cmp(&ca.precision))
            .then(a.cmp(b))
    });
    fill(candidates, &order)
}

/// The most precise mix: fill in descending precision (ties: less energy first).
fn greedy_fill_by_precision(candidates: &[Candidate]) -> Mix {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| {
        let (ca, cb) = (&candidates[*a], &candidates[*b]);
        cb.precision
            .total_cmp(&ca.precision)
            .then(ca.energy.total_cmp(&cb.energy))
            .then(a.cmp(b))
    });
    fill(candidates, &order)
}

fn fill(candidates: &[Candidate], order: &[usize]) -> Mix {
    let mut shares = vec![0.0; candidates.len()];
    let mut left = 1.0_f64;
    for &i in order {
        let take = candidates[i].cap.min(left).max(0.0);
        shares[i] = take;
        left -= take;
        if left <= 0.0 {
            break;
        }
    }
    let precision = shares
        .iter()
        .zip(candidates)
        .map(|(x, c)| x * c.precision)
        .sum();
    let energy = shares
        .iter()
        .zip(candidates)
        .map(|(x, c)| x * c.energy)
        .sum();
    Mix {
        precision,
        energy,
        shares,
    }
}

/// The highest mean precision the enabled flavours of `flavours` reach under their
/// `max_share` caps, `None` when the caps cannot fill a slot (validation's check).
pub fn highest_reachable_precision(flavours: &[Flavour]) -> Option<f64> {
    MixCurve::of_flavours(flavours).map(|c| c.highest())
}

fn candidate(f: &Flavour) -> Candidate {
    Candidate {
        precision: f.precision,
        energy: f.relative_energy,
        cap: f.max_share.unwrap_or(1.0).clamp(0.0, 1.0),
    }
}

/// One slot of the horizon as planned: carbon intensity and expected requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanSlot {
    /// gCO2/kWh.
    pub intensity: f64,
    /// Requests expected in the slot.
    pub requests: f64,
}

/// What the planner solved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Mean precision planned per slot.
    pub precision: Vec<f64>,
    /// Shadow price: emissions (relative energy × gCO2/kWh) per unit of precision·request
    /// at the margin; 0 when the constraint is slack, `None` when it cannot be met.
    pub lambda: Option<f64>,
}

/// Solve the horizon: minimise `Σ R_t·I_t·h(q_t)` subject to
/// `surplus + Σ R_t·(q_t − target_precision) ≥ 0` and `floor ≤ q_t`.
pub fn solve(
    curve: &MixCurve,
    slots: &[PlanSlot],
    target_precision: f64,
    surplus: f64,
    floor: Option<f64>,
) -> Plan {
    let high = curve.highest();
    let low = floor.map_or(curve.lowest(), |f| f.clamp(curve.lowest(), high));
    let mut precision = vec![low; slots.len()];
    let total: f64 = slots.iter().map(|s| s.requests).sum();
    let planned: f64 = slots.iter().map(|s| s.requests * low).sum();
    let mut need = target_precision * total - surplus - planned;
    if need <= 0.0 {
        return Plan {
            precision,
            lambda: Some(0.0),
        };
    }
    // Every edge of every slot, above the floor: (price, slot, from, to). A slot's slopes
    // are made non-decreasing (rounding may leave a nearly collinear corner a hair
    // concave), so with the stable sort a slot's edges are always bought in order.
    let mut offers: Vec<(f64, usize, f64, f64)> = Vec::new();
    for (t, s) in slots.iter().enumerate() {
        if s.requests <= 0.0 {
            continue;
        }
        let mut steepest = f64::NEG_INFINITY;
        for (from, to, slope) in curve.edges() {
            steepest = steepest.max(slope);
            let (from, to) = (from.max(low), to.min(high));
            if to > from {
                offers.push((s.intensity * steepest, t, from, to));
            }
        }
    }
    offers.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut lambda = None;
    for (price, t, from, to) in offers {
        let requests = slots[t].requests;
        let gain = requests * (to - from);
        if gain >= need {
            precision[t] += need / requests;
            lambda = Some(price);
            break;
        }
        precision[t] += to - from;
        need -= gain;
    }
    // Slots expecting no request cost nothing either way: plan them as the margin prices
    // precision, so a decision made in one still follows the plan's λ.
    for (t, s) in slots.iter().enumerate() {
        if s.requests <= 0.0 {
            precision[t] = match lambda {
                Some(l) => curve
                    .edges()
                    .filter(|(_, _, slope)| s.intensity * slope <= l)
                    .map(|(_, to, _)| to)
                    .fold(low, f64::max)
                    .min(high),
                None => high,
            };
        }
    }
    if lambda.is_none() {
        // The constraint cannot be met: every slot as precise as it can be.
        precision.iter_mut().for_each(|q| *q = high);
    }
    Plan { precision, lambda }
}

/// Emissions of a plan: `Σ R_t · I_t · h(q_t)`.
pub fn emissions(curve: &MixCurve, slots: &[PlanSlot], precision: &[f64]) -> f64 {
    slots
        .iter()
        .zip(precision)
        .map(|(s, q)| s.requests * s.intensity * curve.at(*q).energy)
        .sum()
}

/// The horizon of `input`: forecast slots with their expected requests, or one virtual
/// slot when the forecast has none.
fn horizon(input: &PolicyInput<'_>) -> Vec<PlanSlot> {
    let f = input.forecast;
    let usable = |v: f64| v.is_finite() && v >= 0.0;
    let rate = input
        .plan
        .observed_rate
        .filter(|r| usable(*r))
        .unwrap_or(1.0);
    if f.slots.is_empty() {
        return vec![PlanSlot {
            intensity: f.intensity_now.filter(|v| usable(*v)).unwrap_or(1.0),
            requests: rate * NO_FORECAST_SECONDS,
        }];
    }
    f.slot_seconds()
        .into_iter()
        .zip(&f.slots)
        .enumerate()
        .map(|(i, (seconds, intensity))| {
            let demand = f
                .slot_demand
                .get(i)
                .copied()
                .flatten()
                .filter(|d| usable(*d))
                .unwrap_or(rate);
            PlanSlot {
                intensity: *intensity,
                requests: demand * seconds,
            }
        })
        .collect()
}

fn non_finite(input: &PolicyInput<'_>, detail: String) -> PolicyError {
    PolicyError::NonFinite {
        schedule: input.schedule.to_string(),
        detail,
    }
}

impl Policy for CarbonOptimal {
    fn name(&self) -> &'static str {
        "carbon-optimal"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        _memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let enabled = enabled_by_precision(input)?;
        let candidates: Vec<Candidate> = enabled.iter().map(|f| candidate(f)).collect();
        let curve = MixCurve::of(&candidates).ok_or_else(|| {
            non_finite(
                input,
                "the max_share caps of the enabled flavours sum below 1".into(),
            )
        })?;
        let slots = horizon(input);
        if let Some(bad) = slots
            .iter()
            .find(|s| !(s.intensity.is_finite() && s.requests.is_finite()))
        {
            return Err(non_finite(input, format!("forecast slot {bad:?}")));
        }
        let quality = input.plan.quality;
        if !quality.surplus.is_finite() {
            return Err(non_finite(
                input,
                format!("quality account surplus {}", quality.surplus),
            ));
        }
        let target = 1.0 - input.credit.target_error;
        let plan = solve(
            &curve,
            &slots,
            target,
            quality.surplus,
            input.plan.min_slot_precision,
        );
        let now = curve.at(plan.precision[0]);
        let mut weights: Vec<(String, f64)> = enabled
            .iter()
            .zip(&now.shares)
            .map(|(f, w)| (f.name.clone(), *w))
            .collect();
        // Caps summing to 1 within the tolerance leave shares a hair short of it.
        normalise(&mut weights);
        let avg = avg_precision(&weights, input.flavours);
        let mut diagnostics = summary(input, &slots, &plan, target);
        diagnostics.push(("avg_precision".into(), Some(avg)));
        for (i, (slot, q)) in slots
            .iter()
            .zip(&plan.precision)
            .take(PLAN_SLOTS_SHOWN)
            .enumerate()
        {
            diagnostics.push((plan_diagnostic(i, "intensity"), Some(slot.intensity)));
            diagnostics.push((plan_diagnostic(i, "precision"), Some(*q)));
            for (f, share) in enabled.iter().zip(curve.at(*q).shares) {
                diagnostics.push((plan_diagnostic(i, &f.name), Some(share)));
            }
        }
        Ok(PolicyResult {
            weights,
            avg_precision: avg,
            diagnostics,
        })
    }
}

/// λ and the budget: what was delivered, what the horizon may still spend, what the plan
/// spends, in precision points (percent) per request and as ledger credit.
fn summary(
    input: &PolicyInput<'_>,
    slots: &[PlanSlot],
    plan: &Plan,
    target: f64,
) -> Vec<(Cow<'static, str>, Option<f64>)> {
    let quality = input.plan.quality;
    let total: f64 = slots.iter().map(|s| s.requests).sum();
    let per_request = |v: f64| (total > 0.0).then(|| 100.0 * v / total);
    let planned_error: f64 = slots
        .iter()
        .zip(&plan.precision)
        .map(|(s, q)| s.requests * (1.0 - q))
        .sum();
    let target_error = input.credit.target_error;
    // One ledger update per telemetry window: the account in windows of the observed rate.
    let window_requests = input
        .plan
        .observed_rate
        .map(|r| r * input.plan.window_seconds)
        .filter(|n| n.is_finite() && *n > 0.0);
    let as_credit = window_requests.map(|n| quality.surplus / n * input.plan.credit_sensitivity);
    vec![
        ("lambda".into(), plan.lambda),
        ("quality_surplus".into(), Some(quality.surplus)),
        (
            "delivered_precision".into(),
            quality.mean_precision(target_error),
        ),
        (
            "budget_spent_points".into(),
            quality
                .mean_precision(target_error)
                .map(|p| 100.0 * (1.0 - p)),
        ),
        (
            "budget_left_points".into(),
            per_request(total * (1.0 - target) + quality.surplus),
        ),
        ("budget_planned_points".into(), per_request(planned_error)),
        ("budget_left_credit".into(), as_credit),
        ("plan_slots".into(), Some(slots.len() as f64)),
        ("planned_precision".into(), plan.precision.first().copied()),
    ]
}

/// One slot of a published plan, read back from a decision's diagnostics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannedSlot {
    /// Forecast intensity, gCO2/kWh.
    pub intensity: Option<f64>,
    /// Mean precision planned.
    pub precision: Option<f64>,
    /// `(flavour, share)` planned.
    pub shares: Vec<(String, Option<f64>)>,
}

/// Name of the diagnostic carrying one value of slot `slot`'s plan.
fn plan_diagnostic(slot: usize, key: &str) -> Cow<'static, str> {
    format!("plan.{slot}.{key}").into()
}

/// The plan a carbon-optimal decision published (`plan.<slot>.<key>` diagnostics), slot by
/// slot; empty for other policies.
pub fn planned_slots(diagnostics: &[Diagnostic]) -> Vec<PlannedSlot> {
    let mut slots: Vec<PlannedSlot> = Vec::new();
    for d in diagnostics {
        let Some((slot, key)) = d
            .name
            .strip_prefix("plan.")
            .and_then(|rest| rest.split_once('.'))
        else {
            continue;
        };
        let Ok(i) = slot.parse::<usize>() else {
            continue;
        };
        if i >= PLAN_SLOTS_SHOWN {
            continue;
        }
        if slots.len() <= i {
            slots.resize(i + 1, PlannedSlot::default());
        }
        match key {
            "intensity" => slots[i].intensity = d.value,
            "precision" => slots[i].precision = d.value,
            flavour => slots[i].shares.push((flavour.to_string(), d.value)),
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::super::tests::default_flavours;
    use super::*;

    fn candidates(flavours: &[Flavour]) -> Vec<Candidate> {
        flavours
            .iter()
            .filter(|f| f.enabled)
            .map(candidate)
            .collect()
    }

    fn slots(values: &[(f64, f64)]) -> Vec<PlanSlot> {
        values
            .iter()
            .map(|(intensity, requests)| PlanSlot {
                intensity: *intensity,
                requests: *requests,
            })
            .collect()
    }

    #[test]
    fn the_default_curve_is_the_hull_of_the_three_flavours() {
        let curve = MixCurve::of(&candidates(&default_flavours())).expect("fills");
        let points: Vec<(f64, f64)> = curve
            .vertices
            .iter()
            .map(|m| (m.precision, m.energy))
            .collect();
        // p50 (0.5, 0.6) lies above the segment from p30 (0.3, 0.3) to p100 (1, 1).
        assert_eq!(points, vec![(0.3, 0.3), (1.0, 1.0)]);
    }

    #[test]
    fn spends_the_budget_in_the_dirtiest_slot_first() {
        let curve = MixCurve::of(&candidates(&default_flavours())).expect("fills");
        let plan = solve(
            &curve,
            &slots(&[(100.0, 10.0), (300.0, 10.0), (200.0, 10.0)]),
            0.85,
            0.0,
            None,
        );
        // Budget 30 × 0.15 = 4.5 precision·requests below full; one light slot costs 7.
        assert_eq!(plan.precision[0], 1.0);
        assert_eq!(plan.precision[2], 1.0);
        assert!((plan.precision[1] - (1.0 - 4.5 / 10.0)).abs() < 1e-12);
        assert_eq!(plan.lambda, Some(300.0));
    }

    #[test]
    fn a_slot_expecting_no_request_follows_the_margin() {
        let curve = MixCurve::of(&candidates(&default_flavours())).expect("fills");
        let plan = solve(
            &curve,
            &slots(&[(400.0, 0.0), (50.0, 0.0), (100.0, 10.0), (300.0, 10.0)]),
            0.85,
            0.0,
            None,
        );
        assert_eq!(plan.lambda, Some(300.0));
        assert_eq!(plan.precision[0], 0.3, "dirtier than the margin: light");
        assert_eq!(plan.precision[1], 1.0, "cleaner than the margin: full");
    }

    #[test]
    fn a_banked_surplus_is_spent_and_a_debt_repaid() {
        let curve = MixCurve::of(&candidates(&default_flavours())).expect("fills");
        let horizon = slots(&[(300.0, 10.0), (100.0, 10.0)]);
        let rich = solve(&curve, &horizon, 0.85, 100.0, None);
        assert_eq!(rich.precision, vec![0.3, 0.3]);
        assert_eq!(rich.lambda, Some(0.0));
        let owed = solve(&curve, &horizon, 0.85, -100.0, None);
        assert_eq!(owed.precision, vec![1.0, 1.0]);
        assert_eq!(owed.lambda, None);
    }

    #[test]
    fn floors_and_caps_are_respected() {
        let mut flavours = default_flavours();
        flavours[2].max_share = Some(0.4); // precision-30
        let curve = MixCurve::of(&candidates(&flavours)).expect("fills");
        let lightest = curve.at(curve.lowest());
        assert!(lightest.shares[2] <= 0.4 + 1e-12, "{lightest:?}");
        let plan = solve(
            &curve,
            &slots(&[(300.0, 10.0), (50.0, 10.0), (60.0, 10.0)]),
            0.85,
            0.0,
            Some(0.7),
        );
        for q in &plan.precision {
            assert!(*q >= 0.7 - 1e-12, "{plan:?}");
            let mix = curve.at(*q);
            assert!(mix.shares[2] <= 0.4 + 1e-12, "{mix:?}");
            assert!((mix.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn caps_that_cannot_fill_a_slot_have_no_curve() {
        let mut flavours = default_flavours();
        for f in &mut flavours {
            f.max_share = Some(0.3);
        }
        assert_eq!(highest_reachable_precision(&flavours), None);
        flavours[0].max_share = Some(0.5);
        // 0.5 at 1.0, 0.3 at 0.5, 0.2 at 0.3.
        let reach = highest_reachable_precision(&flavours).expect("fills");
        assert!((reach - (0.5 + 0.15 + 0.06)).abs() < 1e-12);
    }

    /// The same horizon as a plain LP over every share, solved by microlp: the optimum,
    /// or `None` when the constraint cannot be met.
    fn lp_optimum(
        candidates: &[Candidate],
        slots: &[PlanSlot],
        target: f64,
        surplus: f64,
        floor: Option<f64>,
    ) -> Option<f64> {
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        let mut lp = Problem::new(OptimizationDirection::Minimize);
        let mut quality = Vec::new();
        for s in slots {
            let x: Vec<_> = candidates
                .iter()
                .map(|c| lp.add_var(s.requests * s.intensity * c.energy, (0.0, c.cap)))
                .collect();
            let ones: Vec<_> = x.iter().map(|v| (*v, 1.0)).collect();
            lp.add_constraint(&ones, ComparisonOp::Eq, 1.0);
            let precision: Vec<_> = x
                .iter()
                .zip(candidates)
                .map(|(v, c)| (*v, c.precision))
                .collect();
            if let Some(f) = floor {
                lp.add_constraint(&precision, ComparisonOp::Ge, f);
            }
            quality.extend(
                x.iter()
                    .zip(candidates)
                    .map(|(v, c)| (*v, s.requests * c.precision)),
            );
        }
        let total: f64 = slots.iter().map(|s| s.requests).sum();
        lp.add_constraint(&quality, ComparisonOp::Ge, target * total - surplus);
        match lp.solve() {
            Ok(microlp::SolveOutcome::Solution(solution)) => Some(solution.objective()),
            _ => None,
        }
    }

    #[test]
    fn the_closed_form_matches_an_lp_on_random_instances() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let (mut compared, mut infeasible) = (0, 0);
        for _ in 0..400 {
            let n = rng.random_range(1..=5);
            let mut candidates: Vec<Candidate> = (0..n)
                .map(|_| Candidate {
                    precision: rng.random_range(0.1..=1.0),
                    energy: rng.random_range(0.0..1.5),
                    cap: if rng.random_bool(0.4) {
                        rng.random_range(0.1..=1.0)
                    } else {
                        1.0
                    },
                })
                .collect();
            if candidates.iter().map(|c| c.cap).sum::<f64>() < 1.0 {
                candidates[0].cap = 1.0;
            }
            let curve = MixCurve::of(&candidates).expect("caps fill a slot");
            let horizon: Vec<PlanSlot> = (0..rng.random_range(1..=6))
                .map(|_| PlanSlot {
                    intensity: rng.random_range(0.0..500.0),
                    requests: rng.random_range(0.0..100.0),
                })
                .collect();
            // Mostly feasible: a target the flavours can reach, a modest account.
            let target = rng.random_range(curve.lowest()..=curve.highest());
            let surplus = rng.random_range(-10.0..30.0);
            let floor = rng
                .random_bool(0.3)
                .then(|| rng.random_range(curve.lowest()..=curve.highest()));
            let plan = solve(&curve, &horizon, target, surplus, floor);
            let ours = emissions(&curve, &horizon, &plan.precision);
            match lp_optimum(&candidates, &horizon, target, surplus, floor) {
                Some(optimum) => {
                    compared += 1;
                    let scale = optimum.abs().max(1.0);
                    assert!(
                        (ours - optimum).abs() <= 1e-9 * scale,
                        "closed form {ours} vs LP {optimum}: {candidates:?} {horizon:?} target {target} surplus {surplus} floor {floor:?}"
                    );
                    let total: f64 = horizon.iter().map(|s| s.requests).sum();
                    let delivered: f64 = horizon
                        .iter()
                        .zip(&plan.precision)
                        .map(|(s, q)| s.requests * q)
                        .sum();
                    assert!(delivered + surplus >= target * total - 1e-9 * total.max(1.0));
                }
                None => {
                    infeasible += 1;
                    assert_eq!(plan.lambda, None, "the LP finds no plan, ours claims one");
                }
            }
        }
        assert!(
            compared >= 250 && infeasible > 0,
            "both outcomes must be exercised: {compared} compared, {infeasible} infeasible"
        );
    }

    fn evaluate_with(forecast: ForecastSnapshot, plan: PlanContext) -> PolicyResult {
        let flavours = default_flavours();
        let input = PolicyInput {
            schedule: "ns/s",
            version: 1,
            flavours: &flavours,
            forecast: &forecast,
            credit: CreditView {
                balance: 0.0,
                min: -1.0,
                max: 1.0,
                target_error: 0.15,
            },
            plan,
        };
        CarbonOptimal
            .evaluate(&input, &mut PolicyMemory::default())
            .expect("decides")
    }

    #[test]
    fn an_empty_or_one_slot_forecast_meets_the_target_in_that_slot() {
        for forecast in [
            ForecastSnapshot::default(),
            ForecastSnapshot::from_values(Some(250.0), Some(250.0), vec![250.0]),
        ] {
            let r = evaluate_with(forecast, PlanContext::default());
            assert!((r.avg_precision - 0.85).abs() < 1e-12, "{r:?}");
            assert!(r.weights.iter().all(|(_, w)| w.is_finite() && *w >= 0.0));
            assert_eq!(r.diagnostic("plan_slots"), Some(1.0));
        }
    }

    #[test]
    fn diagnostics_carry_lambda_the_budget_and_the_plan() {
        let forecast =
            ForecastSnapshot::from_values(Some(100.0), Some(300.0), vec![100.0, 300.0, 200.0]);
        let r = evaluate_with(
            forecast,
            PlanContext {
                observed_rate: Some(10.0),
                window_seconds: 5.0,
                credit_sensitivity: 0.33,
                ..PlanContext::default()
            },
        );
        assert_eq!(r.diagnostic("lambda"), Some(300.0));
        assert_eq!(r.diagnostic("plan.0.precision"), Some(1.0));
        assert!((r.diagnostic("budget_left_points").expect("set") - 15.0).abs() < 1e-9);
        assert!((r.diagnostic("budget_planned_points").expect("set") - 15.0).abs() < 1e-9);
        assert_eq!(r.diagnostic("budget_left_credit"), Some(0.0));
        assert!(r.diagnostic("plan.1.precision-30").expect("share") > 0.0);
        assert_eq!(r.weights[0], ("precision-100".to_string(), 1.0));
    }
}
