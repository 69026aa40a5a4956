//! WASI's blocking calls (stdout, stderr, a panic message, sleep, poll, sockets) made by a
//! plugin called from a tokio worker thread, as the per-profile loops and the upload handlers
//! call it: each answers normally or with a typed fault, never a panic of the host, and waits
//! no longer than the call's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keel_kernel::strategy::{PluginFault, RawIntent, StrategyRuntime};
use keel_runtime::{LogLevel, WasmStrategy};

use crate::common::{Neighbour, candle, engine, flat_view, metered_engine, setup, start, version};

/// Runs `work` in a task on a worker thread of a multi-thread runtime; a panic in it fails the
/// test.
fn on_worker<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::spawn(async move { work() }).await })
        .expect("the task on the worker thread panicked")
}

/// Starts the hostile plugin with `attack` and feeds it one candle, both on a worker thread,
/// between two checks of a neighbour.
fn attack_on_worker(attack: &str) -> (WasmStrategy, Result<Vec<RawIntent>, PluginFault>) {
    let mut neighbour = Neighbour::start();
    neighbour.assert_trades_normally();
    let attack = attack.to_string();
    let outcome = on_worker(move || {
        let mut plugin = start(engine(), "hostile", &[("attack", attack.as_str())]);
        let outcome = plugin.on_candle(&candle(0, 100.0), &flat_view());
        (plugin, outcome)
    });
    neighbour.assert_trades_normally();
    outcome
}

fn log_has(plugin: &WasmStrategy, level: LogLevel, needle: &str) -> bool {
    plugin
        .log_lines()
        .iter()
        .any(|line| line.level == level && line.message.contains(needle))
}

#[test]
fn println_and_eprintln_on_a_worker_thread_land_in_the_plugin_log() {
    let (plugin, outcome) = attack_on_worker("stdout");
    assert_eq!(outcome, Ok(Vec::new()));
    assert!(log_has(&plugin, LogLevel::Info, "hello from stdout"));
    assert!(log_has(&plugin, LogLevel::Warn, "hello from stderr"));
    let (plugin, outcome) = attack_on_worker("eprintln");
    assert_eq!(outcome, Ok(Vec::new()));
    assert!(log_has(
        &plugin,
        LogLevel::Warn,
        "hostile plugin writes to stderr"
    ));
}

#[test]
fn a_panic_message_on_a_worker_thread_is_logged_and_the_call_traps() {
    let (plugin, outcome) = attack_on_worker("panic-message");
    assert!(matches!(outcome, Err(PluginFault::Trap(_))), "{outcome:?}");
    assert!(!plugin.is_alive());
    assert!(
        log_has(&plugin, LogLevel::Warn, "divide by zero"),
        "{:?}",
        plugin.log_lines()
    );
}

#[test]
fn a_sleep_past_the_deadline_faults_with_the_deadline() {
    let (plugin, outcome) = attack_on_worker("sleep");
    assert_eq!(outcome, Err(PluginFault::Deadline));
    assert!(!plugin.is_alive());
}

#[test]
fn a_poll_that_never_ends_faults_with_the_deadline() {
    let (_, outcome) = attack_on_worker("poll");
    assert_eq!(outcome, Err(PluginFault::Deadline));
}

#[test]
fn a_sleep_past_the_deadline_faults_outside_tokio_too() {
    let mut plugin = start(engine(), "hostile", &[("attack", "sleep")]);
    let outcome = plugin.on_candle(&candle(0, 100.0), &flat_view());
    assert_eq!(outcome, Err(PluginFault::Deadline));
}

#[test]
fn udp_and_tcp_sockets_are_refused_with_an_error() {
    for attack in ["udp-socket", "tcp-socket"] {
        let (plugin, outcome) = attack_on_worker(attack);
        assert_eq!(outcome, Ok(Vec::new()), "{attack}");
        assert!(
            log_has(&plugin, LogLevel::Info, &format!("{attack}: denied")),
            "{attack}: {:?}",
            plugin.log_lines()
        );
    }
}

#[test]
fn println_in_init_on_a_worker_thread_lands_in_the_plugin_log() {
    let plugin = on_worker(|| start(engine(), "hostile", &[("attack", "println-in-init")]));
    assert!(log_has(&plugin, LogLevel::Info, "hello from init"));
}

#[test]
fn a_panic_in_init_on_a_worker_thread_is_a_trap() {
    let outcome = on_worker(|| {
        engine()
            .start(
                &version(engine(), "hostile"),
                setup(&[("attack", "panic-in-init")]),
            )
            .map(|_| ())
    });
    assert!(matches!(outcome, Err(PluginFault::Trap(_))), "{outcome:?}");
}

#[test]
fn sleeping_forever_in_init_is_refused_at_the_deadline() {
    let start_sleeper = || {
        engine()
            .start(
                &version(engine(), "hostile"),
                setup(&[("attack", "sleep-forever-in-init")]),
            )
            .map(|_| ())
    };
    // Inside a blocking task, as the upload and bind handlers run `init`, and with no runtime.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let in_blocking_task = runtime.block_on(async {
        tokio::task::spawn_blocking(start_sleeper)
            .await
            .expect("the blocking task panicked")
    });
    assert_eq!(in_blocking_task, Err(PluginFault::Deadline));
    assert_eq!(start_sleeper(), Err(PluginFault::Deadline));
}

#[test]
fn a_slow_legal_plugin_delays_only_its_own_profile() {
    let slow_done = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Compiled and started before the race, so only its calls run beside the slow profile's.
    let mut neighbour = Neighbour::start();
    let (slow_answers, neighbour_saw_slow_done) = runtime.block_on(async {
        let done = slow_done.clone();
        let slow = tokio::spawn(async move {
            let mut plugin = start(engine(), "hostile", &[("attack", "slow-legal")]);
            let mut answers = 0;
            for index in 0..20 {
                if plugin
                    .on_candle(&candle(index, 100.0), &flat_view())
                    .is_ok()
                {
                    answers += 1;
                }
            }
            done.store(true, Ordering::SeqCst);
            answers
        });
        // Let the slow profile start its first call, then run the neighbour on the one worker.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let done = slow_done.clone();
        let neighbour = tokio::spawn(async move {
            neighbour.assert_trades_normally();
            done.load(Ordering::SeqCst)
        });
        (slow.await.unwrap(), neighbour.await.unwrap())
    });
    assert_eq!(slow_answers, 20, "every slow call is legal");
    assert!(
        !neighbour_saw_slow_done,
        "the neighbour waited for the slow profile's calls"
    );
}

#[test]
fn host_calls_with_a_huge_name_are_legal_and_refused_as_unknown_symbols() {
    // `busy-legal` (the load of the sandbox benchmark) costs the host a copy and a check of a
    // 1 MiB name per call: each call answers "no such symbol" and the candle answers normally.
    let mut neighbour = Neighbour::start();
    let outcomes = on_worker(move || {
        let mut plugin = start(
            engine(),
            "hostile",
            &[("attack", "busy-legal"), ("busy_calls", "8")],
        );
        (0..3)
            .map(|index| plugin.on_candle(&candle(index, 100.0), &flat_view()))
            .collect::<Vec<_>>()
    });
    assert_eq!(outcomes, vec![Ok(Vec::new()); 3]);
    neighbour.assert_trades_normally();
}

/// Calls a busy plugin may make before its profile runs at low priority: each of its calls takes
/// about 5 ms, and one during which an epoch tick comes (every 5 ms) is probed; a call sees a
/// tick far more often than not.
const BUSY_CALLS_TO_LOW_MAX: usize = 20;

#[test]
fn a_busy_plugins_calls_and_warm_ups_run_at_low_priority_once_its_cpu_confirms_it() {
    let (metrics, engine) = metered_engine();
    let version = crate::common::load(&engine, "hostile");
    let mut plugin = engine
        .start(
            &version,
            setup(&[("attack", "busy-legal"), ("busy_calls", "64")]),
        )
        .unwrap();
    let low_calls = metrics.plugin_low_priority_calls_total.clone();
    let (outcomes, low_after_each, warm_up) = on_worker(move || {
        let mut low_after_each = Vec::new();
        let mut outcomes = Vec::new();
        for index in 0..BUSY_CALLS_TO_LOW_MAX {
            outcomes.push(plugin.on_candle(&candle(index as i64, 100.0), &flat_view()));
            low_after_each.push(low_calls.get());
            if low_calls.get() > 0 {
                break;
            }
        }
        let candles: Vec<_> = (100..102).map(|index| candle(index, 100.0)).collect();
        let warm_up = plugin.warm_up(&candles, &flat_view());
        low_after_each.push(low_calls.get());
        (outcomes, low_after_each, warm_up)
    });
    assert!(
        outcomes.iter().all(|outcome| outcome == &Ok(Vec::new())),
        "{outcomes:?}"
    );
    assert_eq!(warm_up, (2, None));
    // 64 copies and checks of a 1 MiB name take about 5 ms, more than the 2 ms that mark a call
    // heavy: calls run at the host's priority until one sees an epoch tick; the next runs there
    // too with its CPU time measured; the one after and the warm-up run at low priority.
    let calls = low_after_each.len() - 1;
    assert!(
        (3..=BUSY_CALLS_TO_LOW_MAX).contains(&calls),
        "{low_after_each:?}"
    );
    let mut expected = vec![0; calls - 1];
    expected.extend([1, 2]);
    assert_eq!(low_after_each, expected);
}

#[test]
fn a_light_plugins_warm_up_runs_at_the_hosts_priority() {
    let (metrics, engine) = metered_engine();
    let mut plugin = engine
        .start(
            &crate::common::load(&engine, "sma-cross"),
            setup(&[("fast", "2"), ("slow", "4")]),
        )
        .unwrap();
    let candles: Vec<_> = (0..20).map(|index| candle(index, 100.0)).collect();
    let (replayed, fault) = on_worker(move || plugin.warm_up(&candles, &flat_view()));
    assert_eq!((replayed, fault), (20, None));
    assert_eq!(metrics.plugin_low_priority_calls_total.get(), 0);
}

#[test]
fn a_warm_up_stops_when_its_budget_is_spent() {
    let candles: Vec<_> = (0..500).map(|index| candle(index, 100.0)).collect();
    let mut plugin = start(engine(), "hostile", &[("attack", "slow-legal")]);
    let (replayed, fault) = on_worker(move || plugin.warm_up(&candles, &flat_view()));
    assert_eq!(fault, None);
    assert!(
        replayed > 0 && replayed < 500,
        "the replay stops short of 500 slow candles: {replayed}"
    );
}

#[test]
fn a_fault_during_warm_up_is_returned_with_its_kind() {
    let candles: Vec<_> = (0..10).map(|index| candle(index, 100.0)).collect();
    let mut plugin = start(engine(), "hostile", &[("attack", "sleep")]);
    let (replayed, fault) = on_worker(move || plugin.warm_up(&candles, &flat_view()));
    assert_eq!((replayed, fault), (0, Some(PluginFault::Deadline)));
}
