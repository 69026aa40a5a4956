//! The API controlling a profile whose loop runs: real engine, real Wasm plugin, paper
//! exchange over the synthetic market. Switches reach the loop between steps, a binding swaps
//! the plugin at the next call boundary, and the operator's routes reach every loop.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use keel_api::ProfileControl as _;
use keel_api::health::{LoopConfig, LoopHealth};
use keel_api::live::{Bus, ProfileInfo, QUEUE_MAX_DEFAULT};
use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_exchange_sim::{CandleSource, SimConfig, sim_symbols};
use keel_host::serve::control::LoopControl;
use keel_host::serve::metered::MeteredStrategy;
use keel_host::serve::{Loops, ProfileLoops};
use keel_kernel::engine::{
    EngineConfig, HostSwitches, ProfileControls, ProfileEngine, ProfileSpec, VirtualClock,
};
use keel_kernel::exchange::Exchange;
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::risk::{EntryBlock, RiskLimits};
use keel_runtime::InstanceSetup;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{Api, Db, plugin_bytes};

crate::api_tests!(
    the_api_controls_a_running_profile,
    switches_answer_at_once_while_the_loop_is_busy
);

/// Kernel time of the first candle.
const T0_MS: i64 = 1_700_000_000_000;
/// How long a condition the loop must reach is waited for before the test fails.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds; a loop that never gets there fails the test.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT_MAX, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn snapshot_of(
    health: &LoopHealth,
    profile: ProfileId,
) -> Option<(ProfileControls, Option<EntryBlock>)> {
    health
        .snapshots()
        .into_iter()
        .find(|(p, _)| *p == profile)
        .map(|(_, s)| (s.controls, s.entry_block))
}

struct Market {
    paper: Arc<PaperExchange>,
    candles: mpsc::Sender<Candle>,
    source: CandleSource,
    next_ms: i64,
    clock: Arc<VirtualClock>,
}

impl Market {
    /// One candle of BTCUSDT to the paper account and the profile.
    async fn tick(&mut self) {
        let span = (self.next_ms, self.next_ms + 60_000);
        self.next_ms = span.1;
        let candles = self.source.next(span).unwrap();
        self.clock.advance_to(span.1);
        for candle in candles.iter().filter(|c| c.symbol.as_str() == "BTCUSDT") {
            self.paper.feed_candle(candle).await.unwrap();
            self.candles.send(candle.clone()).await.unwrap();
        }
    }
}

async fn the_api_controls_a_running_profile(db: &Db) {
    let store = db.store();
    let switches = Arc::new(HostSwitches::default());
    let control = Arc::new(LoopControl::new(switches.clone()));
    let api = Api::with_control(store.clone(), control.clone());
    let user = UserId::new_random();
    let token = api.token(user, false);
    let operator = api.token(UserId::new_random(), true);
    let id = api.create_profile(&token, "live").await;
    let profile = ProfileId::parse(&id).unwrap();
    api.grant(user, "10000").await;
    let funded = api
        .send(
            "POST",
            &format!("/api/v1/profiles/{id}/allocations"),
            Some(&token),
            Some(json!({"amount": "10000"})),
        )
        .await;
    assert_eq!(funded.status, StatusCode::OK);

    // The profile's loop, built as the demo builds it.
    let clock = Arc::new(VirtualClock::new(T0_MS));
    let metrics = Arc::new(Metrics::new());
    let paper = Arc::new(PaperExchange::new(
        PaperConfig::default(),
        sim_symbols().into_iter().map(|(r, _)| r),
    ));
    let plugins = crate::plugin_engine();
    let version = plugins.load(&plugin_bytes("sma-cross")).unwrap();
    let setup = InstanceSetup::new(profile, clock.clone())
        .config([("fast", "2"), ("slow", "4")])
        .name("sma_cross.wasm");
    let strategy = plugins.start(&version, setup).unwrap();
    let swap = strategy.swap_handle();
    let exchange: Arc<dyn Exchange> = paper.clone();
    let engine = ProfileEngine::new(
        ProfileSpec {
            profile,
            user,
            limits: RiskLimits::conservative([Symbol::new("BTCUSDT").unwrap()]),
        },
        EngineConfig::default(),
        store.clone(),
        exchange,
        Box::new(MeteredStrategy::new(Box::new(strategy), metrics.clone())),
        clock.clone(),
        metrics.clone(),
        switches.clone(),
        OwnerToken::new_random(),
    );
    let (candle_tx, candles) = mpsc::channel(16);
    let events = paper.user_events().await.unwrap();
    let commands = control.register(profile, Some(swap.clone()), clock.clone());
    let health = Arc::new(LoopHealth::new(1));
    let config = LoopConfig {
        reconcile_interval_ms: 3_600_000,
        trading_stall_ms: 60_000,
        monitor_stall_ms: 60_000,
        reconciliation_stall_ms: 60_000,
    };
    // The live feed, as the demo wires it: the dashboard's view of the profile.
    let bus = Bus::new(store.clone(), config, QUEUE_MAX_DEFAULT);
    health.publish_to(bus.clone());
    let first = swap.running();
    bus.register(ProfileInfo {
        profile,
        user,
        name: "swapped".into(),
        plugin: first.name.to_string(),
        plugin_version: first.digest.to_string(),
        symbols: vec![Symbol::new("BTCUSDT").unwrap()],
    });
    let mut live = bus.subscribe(user);
    let loops = Loops::start(
        vec![ProfileLoops {
            engine,
            candles,
            events,
            commands,
            plugin: Some(swap.clone()),
        }],
        config,
        metrics.clone(),
        health.clone(),
    );
    wait_for("recovery", || health.is_ready()).await;
    let mut market = Market {
        paper: paper.clone(),
        candles: candle_tx,
        source: CandleSource::new(&SimConfig::new(11)),
        next_ms: T0_MS,
        clock: clock.clone(),
    };

    let view = api
        .send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
        .await;
    assert_eq!(view.body["running"], true);
    let sma_sha256 = keel_runtime::PluginDigest::of(&plugin_bytes("sma-cross")).to_string();
    assert_eq!(
        view.body["running_plugin"],
        json!({"name": "sma_cross.wasm", "sha256": sma_sha256}),
        "a default plugin is reported though nothing is bound"
    );
    assert_eq!(view.body["plugin"], json!(null));

    // Switches reach the loop.
    let paused = api
        .send(
            "POST",
            &format!("/api/v1/profiles/{id}/pause"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK);
    wait_for("the loop to pause", || {
        snapshot_of(&health, profile)
            .is_some_and(|(c, b)| c.paused && b == Some(EntryBlock::Paused))
    })
    .await;
    api.send(
        "POST",
        &format!("/api/v1/profiles/{id}/kill"),
        Some(&token),
        None,
    )
    .await;
    wait_for("the kill switch", || {
        snapshot_of(&health, profile).is_some_and(|(c, _)| c.killed)
    })
    .await;
    api.send(
        "DELETE",
        &format!("/api/v1/profiles/{id}/kill"),
        Some(&token),
        None,
    )
    .await;
    api.send(
        "POST",
        &format!("/api/v1/profiles/{id}/resume"),
        Some(&token),
        None,
    )
    .await;
    wait_for("the loop to resume", || {
        snapshot_of(&health, profile).is_some_and(|(c, b)| !c.paused && !c.killed && b.is_none())
    })
    .await;

    // A binding swaps the plugin at the next call boundary.
    let rsi = api
        .upload(&token, "rsi", plugin_bytes("rsi-reversion"))
        .await;
    assert_eq!(rsi.status, StatusCode::CREATED, "{rsi:?}");
    let bound = api
        .send(
            "PUT",
            &format!("/api/v1/profiles/{id}/plugin"),
            Some(&token),
            Some(json!({
                "plugin_id": rsi.body["plugin_id"], "config": {"period": "6"},
            })),
        )
        .await;
    assert_eq!(bound.status, StatusCode::OK, "{bound:?}");
    assert_eq!(bound.body["swap"], "queued");
    assert!(
        swap.is_pending(),
        "the new instance waits for a call boundary"
    );
    let before = api
        .send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
        .await;
    assert_eq!(
        before.body["running_plugin"]["sha256"], sma_sha256,
        "the old plugin runs until the next call boundary"
    );
    market.tick().await;
    wait_for("the swap at the next candle", || !swap.is_pending()).await;

    // The API, the live feed and a new snapshot all name the plugin that runs now.
    let after = api
        .send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
        .await;
    assert_eq!(
        after.body["running_plugin"],
        json!({"name": "rsi", "sha256": rsi.body["sha256"]})
    );
    assert_eq!(after.body["plugin"]["sha256"], rsi.body["sha256"]);
    let changed = loop {
        let message = tokio::time::timeout(WAIT_MAX, live.rx.recv())
            .await
            .expect("a plugin event within the wait")
            .expect("the bus keeps the subscription");
        let event: serde_json::Value = serde_json::from_str(message.as_str()).unwrap();
        if event["type"] == "plugin" {
            break event;
        }
    };
    assert_eq!(changed["profile"], json!(id));
    assert_eq!(changed["plugin"], "rsi");
    assert_eq!(changed["plugin_version"], rsi.body["sha256"]);
    let snapshot = bus.subscribe(user).profiles;
    let view = serde_json::to_value(&snapshot[0]).unwrap();
    assert_eq!(view["plugin"], "rsi");
    assert_eq!(view["plugin_version"], rsi.body["sha256"]);
    assert_eq!(view["plugin_since_ms"], changed["at_ms"]);

    // A running profile cannot be deleted.
    let delete = api
        .send(
            "DELETE",
            &format!("/api/v1/profiles/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(delete.status, StatusCode::CONFLICT);
    assert!(delete.error().contains("running"), "{delete:?}");

    // The operator reconciles every running loop and switches the whole host.
    let reconciled = api
        .send("POST", "/api/v1/operator/reconcile", Some(&operator), None)
        .await;
    assert_eq!(reconciled.status, StatusCode::OK);
    assert_eq!(
        reconciled.body,
        json!([{"profile_id": id, "result": "clean", "error": null}])
    );
    let killed = api
        .send("POST", "/api/v1/operator/kill", Some(&operator), None)
        .await;
    assert_eq!(killed.body["engaged"], true);
    market.tick().await;
    wait_for("the host kill switch to block entries", || {
        snapshot_of(&health, profile).is_some_and(|(_, b)| b == Some(EntryBlock::HostKillSwitch))
    })
    .await;
    api.send("DELETE", "/api/v1/operator/kill", Some(&operator), None)
        .await;
    assert!(!control.host_kill());

    loops.stop().await.unwrap();
    assert!(
        !api.send("GET", &format!("/api/v1/profiles/{id}"), Some(&token), None)
            .await
            .body["running"]
            .as_bool()
            .unwrap()
    );
}

/// Pause, resume and kill answer without waiting for the profile's loop: here its loop is in
/// the middle of a step that ends only when the test opens a gate, and every switch must be
/// answered before that. The loop then applies the latest of each at its next step.
async fn switches_answer_at_once_while_the_loop_is_busy(db: &Db) {
    use keel_api::ControlChange;
    use keel_host::serve::control::Command;

    let control = Arc::new(LoopControl::new(Arc::new(HostSwitches::default())));
    // Far more requests than a burst of the default request rate, sent as fast as they answer.
    let quotas = keel_api::Quotas {
        request_burst_max: 1_000,
        ..keel_api::Quotas::default()
    };
    let api = Api::build(
        db.store(),
        control.clone(),
        keel_api::BodyLimits::default(),
        quotas,
    );
    let token = api.token(UserId::new_random(), false);
    let id = api.create_profile(&token, "busy").await;
    let profile = ProfileId::parse(&id).unwrap();
    let mut commands = control.register(profile, None, Arc::new(VirtualClock::new(T0_MS)));
    // The loop: busy in a step until the gate opens, then reading its commands.
    let (gate, step_ends) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        step_ends.await.unwrap();
        let mut taken = Vec::new();
        for _ in 0..3 {
            match commands.recv().await {
                Some(Command::Change(change)) => taken.push(change),
                other => panic!("expected a change, got {other:?}"),
            }
        }
        taken
    });
    // Far more switches than any queue between the API and the loop holds.
    let switches = [
        ("POST", "pause"),
        ("POST", "kill"),
        ("POST", "resume"),
        ("DELETE", "kill"),
    ];
    for round in 0..25 {
        for (method, switch) in switches {
            let answered = tokio::time::timeout(
                Duration::from_secs(10),
                api.send(
                    method,
                    &format!("/api/v1/profiles/{id}/{switch}"),
                    Some(&token),
                    None,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("{method} {switch} (round {round}) waited for the busy loop")
            });
            assert_eq!(answered.status, StatusCode::OK, "{answered:?}");
        }
    }
    let paused = api
        .send(
            "POST",
            &format!("/api/v1/profiles/{id}/pause"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(paused.body["paused"], true);
    assert!(!reader.is_finished(), "the loop is still in its step");
    gate.send(()).unwrap();
    let taken = tokio::time::timeout(WAIT_MAX, reader)
        .await
        .expect("the loop takes the changes at its next step")
        .unwrap();
    assert_eq!(
        taken,
        [
            ControlChange::ClearQuarantine,
            ControlChange::Paused(true),
            ControlChange::Killed(false),
        ],
        "the latest of each switch, a resume's request first"
    );
}
