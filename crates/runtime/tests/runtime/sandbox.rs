//! WASI 0.2 is served with no authority: probes for files, sockets, names and the environment
//! get errors; clocks read the kernel's clock; randomness replays from the kernel's seed.

use std::sync::Arc;

use keel_kernel::engine::VirtualClock;
use keel_kernel::ids::ProfileId;
use keel_kernel::strategy::{RawIntent, StrategyRuntime};
use keel_runtime::{InstanceSetup, LogLevel, WasmStrategy};

use crate::common::{T0_MS, candle, engine, flat_view, load, start, version};

fn probe(attack: &str) -> Vec<String> {
    let mut plugin = start(engine(), "hostile", &[("attack", attack)]);
    plugin
        .on_candle(&candle(0, 1.0), &flat_view())
        .expect("a probe call returns normally");
    plugin.log_lines().into_iter().map(|l| l.message).collect()
}

fn assert_denied(attack: &str) {
    let lines = probe(attack);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("{attack}: denied")),
        "{lines:?}"
    );
}

#[test]
fn reading_a_file_is_denied() {
    assert_denied("read-file");
}

#[test]
fn opening_a_socket_is_denied() {
    assert_denied("open-socket");
}

#[test]
fn resolving_a_name_is_denied() {
    assert_denied("resolve-name");
}

#[test]
fn environment_and_arguments_are_empty() {
    assert_denied("read-env");
}

#[test]
fn stdout_and_stderr_go_to_the_plugin_log() {
    let mut plugin = start(engine(), "hostile", &[("attack", "stdout")]);
    plugin.on_candle(&candle(0, 1.0), &flat_view()).unwrap();
    let lines: Vec<_> = plugin
        .log_lines()
        .into_iter()
        .map(|l| (l.level, l.message))
        .collect();
    assert_eq!(
        lines,
        vec![
            (LogLevel::Info, "hello from stdout".to_string()),
            (LogLevel::Warn, "hello from stderr".to_string())
        ]
    );
}

fn clock_and_random(seed: u64, clock: Arc<VirtualClock>) -> String {
    let setup = InstanceSetup::new(ProfileId::new_random(), clock)
        .config([("attack", "clock-and-random")])
        .random_seed(seed);
    run_clock_and_random(setup)
}

fn run_clock_and_random(setup: InstanceSetup) -> String {
    let mut plugin: WasmStrategy = engine()
        .start(&version(engine(), "hostile"), setup)
        .unwrap();
    plugin.on_candle(&candle(0, 1.0), &flat_view()).unwrap();
    plugin.log_lines().pop().expect("one line").message
}

#[test]
fn wasi_clocks_read_the_kernel_clock() {
    let clock = Arc::new(VirtualClock::new(T0_MS));
    clock.advance_to(T0_MS + 42);
    let line = clock_and_random(1, clock);
    let expected = format!("wall_ms={} kernel_ms={}", T0_MS + 42, T0_MS + 42);
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn guest_randomness_replays_from_the_kernel_seed() {
    let hash = |line: String| line.split("hash=").nth(1).unwrap().to_string();
    let clock = || Arc::new(VirtualClock::new(T0_MS));
    let first = hash(clock_and_random(7, clock()));
    assert_eq!(
        first,
        hash(clock_and_random(7, clock())),
        "same seed, same randomness"
    );
    assert_ne!(
        first,
        hash(clock_and_random(8, clock())),
        "another seed, other randomness"
    );
}

#[test]
fn live_instances_draw_their_randomness_from_the_operating_system() {
    let hash = |line: String| line.split("hash=").nth(1).unwrap().to_string();
    let live = || {
        let setup = InstanceSetup::new(ProfileId::new_random(), Arc::new(VirtualClock::new(T0_MS)))
            .config([("attack", "clock-and-random")]);
        hash(run_clock_and_random(setup))
    };
    assert_ne!(
        live(),
        live(),
        "two instances without a run's seed share no random stream"
    );
}

/// Freed instance slots are reused (and, by default, kept resident): whatever an instance wrote
/// into its memory is gone before the next instance gets the slot, so one tenant's strategy never
/// reads another's.
#[test]
fn an_instance_never_finds_what_an_earlier_instance_of_its_slot_left_in_memory() {
    for keep_resident_bytes in [keel_runtime::KEEP_RESIDENT_BYTES_DEFAULT, 0] {
        let engine = keel_runtime::PluginEngine::new(keel_runtime::EngineSettings {
            instances_max: 4,
            keep_resident_bytes,
            ..keel_runtime::EngineSettings::default()
        })
        .unwrap();
        let hostile = load(&engine, "hostile");
        for round in 0..20 {
            let mut strategy = engine
                .start(
                    &hostile,
                    crate::common::setup(&[("attack", "scavenge"), ("label", "r")]),
                )
                .unwrap();
            let intents = strategy
                .on_candle(&candle(round, 1.0), &flat_view())
                .unwrap();
            let [RawIntent::Cancel { client_order_id }] = intents.as_slice() else {
                panic!("{intents:?}")
            };
            assert_eq!(
                client_order_id, "r-dirty-0",
                "keep_resident_bytes {keep_resident_bytes}, instance {round}"
            );
        }
    }
}
