//! `keel_plugin_fuel_consumed_total`: every call adds what it used, its budget minus what was
//! left, to the registry's counter.

use keel_kernel::metrics::Metrics;
use keel_kernel::strategy::{PluginFault, StrategyRuntime};
use keel_runtime::{EngineSettings, PluginEngine, PluginLimits};

use crate::common::{candle, flat_view, load, setup};

fn exposed(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("keel_plugin_fuel_consumed_total "))
        .expect("the fuel counter is exposed")
        .parse()
        .unwrap()
}

#[test]
fn each_call_adds_the_fuel_it_used_to_the_registry() {
    let metrics = Metrics::new();
    let limits = PluginLimits::default();
    let settings = EngineSettings {
        instances_max: 8,
        limits,
        ..EngineSettings::default()
    };
    let engine = PluginEngine::reporting_to(settings, &metrics).unwrap();
    assert_eq!(exposed(&metrics), 0);

    let sma = setup(&[("fast", "2"), ("slow", "4")]);
    let mut plugin = engine.start(&load(&engine, "sma-cross"), sma).unwrap();
    let after_init = exposed(&metrics);
    assert!(
        after_init > 0 && after_init < limits.fuel_per_init,
        "init used {after_init}"
    );

    let mut previous = after_init;
    for index in 0..5 {
        plugin
            .on_candle(&candle(index, 100.0), &flat_view())
            .unwrap();
        let now = exposed(&metrics);
        let used = now - previous;
        assert!(
            used > 0 && used < limits.fuel_per_call,
            "call {index} used {used}"
        );
        previous = now;
    }
    assert_eq!(engine.fuel_consumed_total(), previous);

    // A call that runs out has used its whole budget.
    let attack = setup(&[("attack", "infinite-loop")]);
    let mut hostile = engine.start(&load(&engine, "hostile"), attack).unwrap();
    let before = exposed(&metrics);
    assert_eq!(
        hostile.on_candle(&candle(0, 100.0), &flat_view()),
        Err(PluginFault::FuelExhausted)
    );
    assert_eq!(exposed(&metrics) - before, limits.fuel_per_call);
}
