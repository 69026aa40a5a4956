//! Every hostile plugin is contained with its typed fault, while a well-behaved neighbour in
//! another store keeps answering correctly.

use keel_kernel::strategy::{PluginFault, RawIntent, RawPrice, RawSize, StrategyRuntime};
use keel_runtime::{FaultCounts, LogLevel, PluginEngine, WasmStrategy};

use crate::common::{Neighbour, candle, deadline_only_engine, engine, flat_view, start, version};

fn hostile(engine: &PluginEngine, attack: &str) -> WasmStrategy {
    start(engine, "hostile", &[("attack", attack)])
}

/// Runs one attack between two checks of the neighbour and returns the attack's outcome.
fn attack_beside_neighbour(
    engine: &PluginEngine,
    attack: &str,
) -> (WasmStrategy, Result<Vec<RawIntent>, PluginFault>) {
    let mut neighbour = Neighbour::start();
    neighbour.assert_trades_normally();
    let mut plugin = hostile(engine, attack);
    let outcome = plugin.on_candle(&candle(0, 100.0), &flat_view());
    neighbour.assert_trades_normally();
    (plugin, outcome)
}

/// A killing fault: the instance is dropped, never re-entered, and the fault is counted.
fn assert_dead_after(engine: &PluginEngine, mut plugin: WasmStrategy, expected: FaultCounts) {
    assert!(!plugin.is_alive());
    assert_eq!(
        plugin.on_candle(&candle(1, 100.0), &flat_view()),
        Err(PluginFault::Dead)
    );
    let counts = engine.fault_counts(plugin.profile());
    assert_eq!(
        counts,
        vec![(
            plugin.digest().clone(),
            FaultCounts {
                dead: 1,
                ..expected
            }
        )]
    );
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let (plugin, outcome) = attack_beside_neighbour(engine(), "infinite-loop");
    assert_eq!(outcome, Err(PluginFault::FuelExhausted));
    assert_dead_after(
        engine(),
        plugin,
        FaultCounts {
            fuel: 1,
            ..FaultCounts::default()
        },
    );
}

#[test]
fn infinite_loop_without_fuel_limit_hits_the_deadline() {
    let engine = deadline_only_engine();
    let (plugin, outcome) = attack_beside_neighbour(engine, "infinite-loop");
    assert_eq!(outcome, Err(PluginFault::Deadline));
    assert_dead_after(
        engine,
        plugin,
        FaultCounts {
            deadline: 1,
            ..FaultCounts::default()
        },
    );
}

#[test]
fn unbounded_memory_growth_hits_the_memory_cap() {
    let (plugin, outcome) = attack_beside_neighbour(engine(), "memory-growth");
    assert_eq!(outcome, Err(PluginFault::MemoryLimit));
    assert_dead_after(
        engine(),
        plugin,
        FaultCounts {
            memory: 1,
            ..FaultCounts::default()
        },
    );
}

#[test]
fn unbounded_recursion_traps() {
    let (plugin, outcome) = attack_beside_neighbour(engine(), "recursion");
    assert!(
        matches!(&outcome, Err(PluginFault::Trap(m)) if !m.is_empty()),
        "{outcome:?}"
    );
    assert_dead_after(
        engine(),
        plugin,
        FaultCounts {
            trap: 1,
            ..FaultCounts::default()
        },
    );
}

#[test]
fn panic_traps_and_its_message_reaches_the_log() {
    let mut neighbour = Neighbour::start();
    let mut plugin = hostile(engine(), "panic");
    let outcome = plugin.on_candle(&candle(0, 100.0), &flat_view());
    assert!(
        matches!(&outcome, Err(PluginFault::Trap(m)) if m.contains("unreachable")),
        "{outcome:?}"
    );
    let stderr = plugin.log_lines();
    assert!(
        stderr
            .iter()
            .any(|l| l.level == LogLevel::Warn && l.message == "hostile plugin panics on purpose"),
        "{stderr:?}"
    );
    neighbour.assert_trades_normally();
    assert_dead_after(
        engine(),
        plugin,
        FaultCounts {
            trap: 1,
            ..FaultCounts::default()
        },
    );
}

#[test]
fn intent_flood_is_invalid_output_and_the_instance_survives() {
    let (mut plugin, outcome) = attack_beside_neighbour(engine(), "intent-flood");
    assert!(
        matches!(&outcome, Err(PluginFault::InvalidOutput(m)) if m.starts_with("10000 intents")),
        "{outcome:?}"
    );
    assert!(
        plugin.is_alive(),
        "an invalid output is refused, the instance is not dropped"
    );
    assert!(matches!(
        plugin.on_candle(&candle(1, 1.0), &flat_view()),
        Err(PluginFault::InvalidOutput(_))
    ));
    let counts = engine().fault_counts(plugin.profile());
    assert_eq!(
        counts[0].1,
        FaultCounts {
            invalid_output: 2,
            ..FaultCounts::default()
        }
    );
}

#[test]
fn oversized_and_flooding_log_lines_are_truncated_and_dropped() {
    let (plugin, outcome) = attack_beside_neighbour(engine(), "oversized-log");
    assert_eq!(outcome, Ok(Vec::new()));
    let limits = engine().settings().limits;
    let lines = plugin.log_lines();
    assert_eq!(lines.len(), limits.log_lines_per_call_max as usize);
    assert!(
        lines[0]
            .message
            .starts_with(&"x".repeat(limits.log_message_bytes_max))
    );
    assert!(lines[0].message.ends_with("[truncated from 1048576 bytes]"));
    assert!(
        lines
            .iter()
            .all(|l| l.message.len() < limits.log_message_bytes_max + 64)
    );
    let counters = plugin.log_counters();
    assert_eq!(counters.truncated, 1);
    assert_eq!(
        counters.dropped,
        1001 - u64::from(limits.log_lines_per_call_max)
    );
    assert!(engine().fault_counts(plugin.profile()).is_empty());
}

#[test]
fn nan_infinite_negative_and_huge_numbers_reach_the_kernel_raw() {
    let (plugin, outcome) = attack_beside_neighbour(engine(), "bad-numbers");
    let intents = outcome.expect("numbers are the kernel's to judge, not the runtime's");
    assert!(plugin.is_alive());
    let RawIntent::Entry(nan) = &intents[0] else {
        panic!("{intents:?}")
    };
    assert!(matches!(nan.size, RawSize::QuoteNotional(v) if v.is_nan()));
    let RawIntent::Entry(inf) = &intents[1] else {
        panic!("{intents:?}")
    };
    assert_eq!(inf.size, RawSize::BaseQty(f64::INFINITY));
    let RawIntent::Entry(negative) = &intents[2] else {
        panic!("{intents:?}")
    };
    assert_eq!(negative.size, RawSize::FreeCapitalFraction(-1.0));
    assert_eq!(negative.price, RawPrice::Limit(f64::NEG_INFINITY));
    let RawIntent::Entry(huge) = &intents[3] else {
        panic!("{intents:?}")
    };
    assert_eq!(huge.size, RawSize::QuoteNotional(1e300));
    assert!(huge.stop_loss.is_some_and(f64::is_nan));
    let RawIntent::Exit(exit) = &intents[4] else {
        panic!("{intents:?}")
    };
    assert_eq!((exit.symbol.as_str(), exit.fraction), ("BTCUSDT", 1e308));
}

#[test]
fn failing_init_is_refused_with_the_plugin_message() {
    let engine = engine();
    let setup = crate::common::setup(&[("attack", "fail-init")]);
    let profile = setup.profile;
    let refused = engine.start(&version(engine, "hostile"), setup).err();
    assert_eq!(
        refused,
        Some(PluginFault::InitRefused(
            "hostile plugin refuses this configuration".to_string()
        ))
    );
    assert_eq!(engine.fault_counts(profile)[0].1.init_refused, 1);
}
