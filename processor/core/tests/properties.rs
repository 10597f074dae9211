//! Properties of every policy on random valid inputs: weights are ≥ 0 and sum to 1,
//! integer percentages sum to 100, the ledger never leaves its bounds.

use carbonflow_core::decide::ledger_params;
use carbonflow_core::forecast::ForecastSnapshot;
use carbonflow_core::ledger::CreditLedger;
use carbonflow_core::policy::{CreditView, POLICIES, PlanContext, PolicyInput, PolicyMemory};
use carbonflow_core::weights::integer_percentages;
use carbonflow_schemas::records::Flavour;
use carbonflow_schemas::testing::samples;
use proptest::prelude::*;

fn flavours() -> impl Strategy<Value = Vec<Flavour>> {
    proptest::collection::vec(
        (0.01f64..=1.0, 0.0f64..2.0, proptest::bool::weighted(0.85)),
        1..6,
    )
    .prop_map(|v| {
        let mut fl: Vec<Flavour> = v
            .into_iter()
            .enumerate()
            .map(|(i, (p, e, en))| Flavour {
                name: format!("f{i}"),
                precision: p,
                relative_energy: e,
                enabled: en,
                upstream_url: "http://x".into(),
                upstream_header: None,
                annotations: vec![],
                max_share: None,
            })
            .collect();
        fl[0].enabled = true;
        fl
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_policy_yields_a_distribution(
        flavours in flavours(),
        policy in 0usize..POLICIES.len(),
        now in proptest::option::of(1.0f64..600.0),
        next in proptest::option::of(1.0f64..600.0),
        slots in proptest::collection::vec(1.0f64..600.0, 0..12),
        (min, span) in (-3.0f64..0.0, 0.1f64..5.0),
        pos in 0.0f64..=1.0,
        count in 0i64..50,
        version in 0i64..1000,
    ) {
        let max = min + span;
        let balance = min + pos * span;
        let forecast = ForecastSnapshot::from_values(now, next, slots);
        let input = PolicyInput {
            schedule: "ns/s",
            version,
            flavours: &flavours,
            forecast: &forecast,
            credit: CreditView { balance, min, max, target_error: 0.15 },
            plan: PlanContext::default(),
        };
        let mut memory = PolicyMemory { cumulative_carbon: 150.0 * count as f64, evaluation_count: count };
        let policy = POLICIES[policy];
        let r = policy.evaluate(&input, &mut memory).expect("decides");
        prop_assert!(r.weights.iter().all(|(_, w)| *w >= 0.0 && w.is_finite()), "{:?}", r.weights);
        let sum: f64 = r.weights.iter().map(|(_, w)| w).sum();
        prop_assert!((sum - 1.0).abs() < 1e-9, "sum {sum} for {}", policy.name());
        prop_assert!(r.weights.iter().all(|(n, _)| flavours.iter().any(|f| &f.name == n && f.enabled)));
        let pct = integer_percentages(&r.weights);
        prop_assert_eq!(pct.iter().map(|(_, p)| p).sum::<i32>(), 100);
        prop_assert!(r.avg_precision > 0.0 && r.avg_precision <= 1.0 + 1e-12);
    }

    #[test]
    fn ledger_stays_within_bounds(updates in proptest::collection::vec((0.0f64..=1.0, 0i64..10_000), 1..200), (min, span) in (-3.0f64..0.0, 0.1f64..5.0)) {
        let mut config = samples::schedule_config();
        config.credit_min = min;
        config.credit_max = min + span;
        let params = ledger_params(&config);
        let mut ledger = CreditLedger::default();
        let mut t = 0;
        for (p, dt) in updates {
            t += dt;
            ledger.update(&params, p, t);
            prop_assert!(ledger.balance() >= min && ledger.balance() <= min + span);
        }
    }
}
