//! Hot-swap under a live candle stream: every candle is answered exactly once, by the old
//! version up to the swap and by the new one after; a failed `init` leaves the old one running.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use keel_kernel::strategy::{PluginFault, RawIntent, StrategyRuntime};

use crate::common::{candle, engine, flat_view, load, setup, start, version};

/// Candles in the live stream.
const STREAM_CANDLES: i64 = 3_000;

/// Which instance answered candle `index`, read from its echo (`<label>-<open-time-ms>`).
fn echo_label(index: i64, intents: &[RawIntent]) -> String {
    assert_eq!(
        intents.len(),
        1,
        "candle {index} answered {} times",
        intents.len()
    );
    let RawIntent::Cancel { client_order_id } = &intents[0] else {
        panic!("{intents:?}")
    };
    let (label, time) = client_order_id.split_once('-').unwrap();
    assert_eq!(
        time.parse::<i64>().unwrap(),
        candle(index, 1.0).open_time_ms,
        "candle {index}"
    );
    label.to_string()
}

#[test]
fn hot_swap_under_a_live_stream_skips_and_repeats_no_candle() {
    let engine = engine();
    let mut strategy = start(engine, "hostile", &[("attack", "echo"), ("label", "old")]);
    let profile = strategy.profile();
    let handle = strategy.swap_handle();
    let delivered = Arc::new(AtomicI64::new(0));
    let swapper = {
        let delivered = delivered.clone();
        std::thread::spawn(move || {
            while delivered.load(Ordering::Acquire) < STREAM_CANDLES / 3 {
                std::thread::yield_now();
            }
            let mut new_setup = setup(&[("attack", "echo"), ("label", "new")]);
            new_setup.profile = profile;
            let hostile = version(engine, "hostile");
            handle
                .hot_swap(&hostile, new_setup.clone())
                .expect("the new version starts");
            let mut failing = new_setup;
            failing.config = vec![("attack".into(), "fail-init".into())].into();
            let refused = handle.hot_swap(&hostile, failing);
            assert!(
                matches!(refused, Err(PluginFault::InitRefused(_))),
                "{refused:?}"
            );
        })
    };
    let mut labels = Vec::new();
    for index in 0..STREAM_CANDLES {
        let intents = strategy
            .on_candle(&candle(index, 1.0), &flat_view())
            .unwrap();
        labels.push(echo_label(index, &intents));
        delivered.store(index + 1, Ordering::Release);
        if index == STREAM_CANDLES - 2 {
            swapper_wait(&swapper);
        }
    }
    swapper.join().unwrap();
    let switch = labels
        .iter()
        .position(|l| l == "new")
        .expect("the new version took over");
    assert!(switch >= (STREAM_CANDLES / 3) as usize);
    assert!(labels[..switch].iter().all(|l| l == "old"));
    assert!(
        labels[switch..].iter().all(|l| l == "new"),
        "the failed init must not replace it"
    );
}

/// Holds the stream near its end until the swapper finished, so the swap lands mid-stream.
fn swapper_wait(swapper: &std::thread::JoinHandle<()>) {
    while !swapper.is_finished() {
        std::thread::yield_now();
    }
}

#[test]
fn failed_init_keeps_the_old_version_running() {
    let engine = engine();
    let mut strategy = start(engine, "hostile", &[("attack", "echo"), ("label", "old")]);
    let mut failing = setup(&[("attack", "fail-init")]);
    failing.profile = strategy.profile();
    let refused = strategy
        .swap_handle()
        .hot_swap(&version(engine, "hostile"), failing);
    assert_eq!(
        refused,
        Err(PluginFault::InitRefused(
            "hostile plugin refuses this configuration".to_string()
        ))
    );
    let intents = strategy.on_candle(&candle(5, 1.0), &flat_view()).unwrap();
    assert_eq!(echo_label(5, &intents), "old");
}

#[test]
fn swap_to_another_plugin_changes_the_version_at_the_next_call() {
    let engine = engine();
    let mut strategy = start(engine, "hostile", &[("attack", "echo")]);
    let old_digest = strategy.digest().clone();
    let mut next = setup(&[("fast", "2"), ("slow", "4")]).name("mine");
    next.profile = strategy.profile();
    let handle = strategy.swap_handle();
    let first = handle.running();
    assert_eq!(&*first.name, keel_runtime::PLUGIN_NAME_DEFAULT);
    assert_eq!((&first.digest, first.takeovers), (&old_digest, 0));
    handle
        .hot_swap(&version(engine, "sma-cross"), next)
        .unwrap();
    assert!(handle.is_pending());
    assert_eq!(
        strategy.digest(),
        &old_digest,
        "nothing changes between calls"
    );
    assert_eq!(handle.running(), first, "a queued swap is not running yet");
    let intents = strategy.on_candle(&candle(0, 1.0), &flat_view()).unwrap();
    assert!(
        intents.is_empty(),
        "sma-cross answers, not the echo: {intents:?}"
    );
    assert_ne!(strategy.digest(), &old_digest);
    assert!(!handle.is_pending());
    let now = handle.running();
    assert_eq!(&*now.name, "mine");
    assert_eq!((&now.digest, now.takeovers), (strategy.digest(), 1));
}

#[test]
fn a_dead_strategy_comes_back_by_reconfiguring() {
    let engine = engine();
    let mut strategy = start(engine, "hostile", &[("attack", "panic")]);
    assert!(strategy.on_candle(&candle(0, 1.0), &flat_view()).is_err());
    assert!(!strategy.is_alive());
    let config = [
        ("attack".to_string(), "echo".to_string()),
        ("label".to_string(), "again".to_string()),
    ];
    strategy.init(&config).unwrap();
    let intents = strategy.on_candle(&candle(1, 1.0), &flat_view()).unwrap();
    assert_eq!(echo_label(1, &intents), "again");
}

#[test]
fn hot_swaps_are_counted_when_the_new_instance_takes_over_and_when_it_fails_to_start() {
    let metrics = keel_kernel::metrics::Metrics::new();
    let settings = keel_runtime::EngineSettings {
        instances_max: 8,
        ..keel_runtime::EngineSettings::default()
    };
    let engine = keel_runtime::PluginEngine::reporting_to(settings, &metrics).unwrap();
    let hostile = load(&engine, "hostile");
    let mut strategy = engine
        .start(&hostile, setup(&[("attack", "echo"), ("label", "old")]))
        .unwrap();
    let swaps = |result: &str| {
        metrics
            .plugin_hot_swaps_total
            .with_label_values(&[result])
            .get()
    };
    let handle = strategy.swap_handle();
    let mut failing = setup(&[("attack", "fail-init")]);
    failing.profile = strategy.profile();
    assert!(handle.hot_swap(&hostile, failing).is_err());
    assert_eq!((swaps("ok"), swaps("failed")), (0, 1));

    let mut next = setup(&[("attack", "echo"), ("label", "new")]);
    next.profile = strategy.profile();
    handle.hot_swap(&hostile, next).unwrap();
    assert_eq!(swaps("ok"), 0, "queued, not taken yet");
    let intents = strategy.on_candle(&candle(1, 1.0), &flat_view()).unwrap();
    assert_eq!(echo_label(1, &intents), "new");
    assert_eq!((swaps("ok"), swaps("failed")), (1, 1));
}
