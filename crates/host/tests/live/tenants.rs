//! Two tenants trading at once on one host and one shared exchange account: each monitor loop
//! sees every event of the account, and each owner's socket still gets that owner's events only
//! — orders, fills, positions, capital, candles, loops — never one of the other's.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use keel_api::auth::JwtKeys;
use keel_api::health::{LoopConfig, LoopHealth};
use keel_api::live::Bus;
use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_exchange_sim::{CandleSource, SimConfig, sim_symbols};
use keel_host::serve::{Loops, ProfileLoops};
use keel_kernel::engine::{EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, VirtualClock};
use keel_kernel::exchange::Exchange;
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use keel_runtime::{EngineSettings, InstanceSetup, PluginEngine, PluginVersion};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"tenants-test-secret-of-at-least-32-bytes";
/// Kernel time of the first candle.
const T0_MS: i64 = 1_700_000_000_000;
/// Fills each tenant's own socket must have seen before the test looks for leaks.
const FILLS_MIN: usize = 4;
/// A bound on the candles driven: the synthetic market crosses its averages far more often.
const CANDLES_MAX: usize = 2_000;
/// Bound on every wait, for a shared and busy machine.
const WAIT_MAX: Duration = Duration::from_secs(120);

/// One tenant: a user with a token and one profile trading one symbol.
struct Tenant {
    user: UserId,
    profile: ProfileId,
    symbol: Symbol,
    candles: mpsc::Sender<Candle>,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Tenant {
    fn events(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, kind: &str) -> usize {
        self.events().iter().filter(|e| e["type"] == kind).count()
    }

    /// The client order ids named by the events this tenant's socket received.
    fn order_ids(&self) -> BTreeSet<String> {
        self.events()
            .iter()
            .filter_map(|e| {
                e["client_order_id"]
                    .as_str()
                    .or(e["order"]["client_order_id"].as_str())
                    .map(str::to_owned)
            })
            .collect()
    }
}

fn plugin_engine() -> PluginEngine {
    let settings = EngineSettings {
        instances_max: 4,
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live-plugin-cache")),
        ..EngineSettings::default()
    };
    PluginEngine::new(settings).expect("building the plugin engine")
}

/// A profile of a new user on `symbol`, funded and with conservative limits, its loop inputs
/// and a socket reading its owner's events.
#[allow(clippy::too_many_arguments)]
async fn tenant(
    store: &Store,
    paper: &Arc<PaperExchange>,
    plugins: &PluginEngine,
    version: &PluginVersion,
    clock: &Arc<VirtualClock>,
    metrics: &Arc<Metrics>,
    switches: &Arc<HostSwitches>,
    socket: (&JwtKeys, std::net::SocketAddr),
    symbol: &str,
) -> (
    Tenant,
    ProfileLoops,
    mpsc::Sender<keel_host::serve::control::Command>,
) {
    let user = UserId::new_random();
    let symbol = Symbol::new(symbol).unwrap();
    let limits = RiskLimits::conservative([symbol.clone()]);
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(user, Decimal::from(10_000))
        .await
        .unwrap();
    let mut tx = store.tenant(user).begin().await.unwrap();
    let profile = tx
        .create_profile_with_limits(&format!("{symbol} trader"), &limits)
        .await
        .unwrap();
    tx.allocate(profile, Amount::positive(Decimal::from(10_000)).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let setup = InstanceSetup::new(profile, clock.clone()).config([("fast", "2"), ("slow", "4")]);
    let strategy = plugins.start(version, setup).unwrap();
    let exchange: Arc<dyn Exchange> = paper.clone();
    let engine = ProfileEngine::new(
        ProfileSpec {
            profile,
            user,
            limits,
        },
        EngineConfig::default(),
        store.clone(),
        exchange,
        Box::new(strategy),
        clock.clone(),
        metrics.clone(),
        switches.clone(),
        OwnerToken::new_random(),
    );
    let (candle_tx, candles) = mpsc::channel(64);
    let (command_tx, commands) = mpsc::channel(1);
    let inputs = ProfileLoops {
        engine,
        candles,
        events: paper.user_events().await.unwrap(),
        commands: commands.into(),
        plugin: None,
    };

    let (keys, addr) = socket;
    let token = keys.mint(user, false, chrono::Utc::now().timestamp(), 600);
    let url = format!("ws://{addr}/api/v1/ws?access_token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&text).unwrap());
            }
        }
    });
    let tenant = Tenant {
        user,
        profile,
        symbol,
        candles: candle_tx,
        seen,
    };
    (tenant, inputs, command_tx)
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT_MAX, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event `tenant`'s socket received that is not `tenant`'s own, described.
fn foreign_events(tenant: &Tenant, other: &Tenant) -> Vec<String> {
    let others = other.order_ids();
    let own_profile = tenant.profile.to_string();
    let mut wrong = Vec::new();
    for event in tenant.events() {
        let what = || format!("{} got {event}", tenant.user);
        match event["type"].as_str() {
            Some("snapshot") => {
                assert_eq!(event["user"], tenant.user.to_string(), "{event}");
                for profile in event["profiles"].as_array().unwrap() {
                    if profile["profile"] != own_profile.as_str() {
                        wrong.push(what());
                    }
                }
                continue;
            }
            Some(_) => {}
            None => wrong.push(what()),
        }
        if event["profile"] != own_profile.as_str() {
            wrong.push(what());
        }
        let id = event["client_order_id"]
            .as_str()
            .or(event["order"]["client_order_id"].as_str());
        if id.is_some_and(|id| others.contains(id)) {
            wrong.push(what());
        }
        let symbol = event["symbol"]
            .as_str()
            .or(event["order"]["symbol"].as_str());
        if symbol.is_some_and(|s| s != tenant.symbol.as_str()) {
            wrong.push(what());
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_receives_another_tenants_events_on_a_shared_account() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("keel.db"))
        .await
        .unwrap();
    let config = LoopConfig {
        reconcile_interval_ms: 3_600_000,
        trading_stall_ms: 60_000,
        monitor_stall_ms: 60_000,
        reconciliation_stall_ms: 60_000,
    };
    let bus = Bus::new(store.clone(), config, 65_536);
    let health = Arc::new(LoopHealth::new(2));
    health.publish_to(bus.clone());
    let keys = JwtKeys::new(SECRET).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keel_api::live::router(bus.clone(), keys.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // One paper account for both tenants, each on a symbol of its own: every fill of either
    // reaches both monitor loops.
    let paper = Arc::new(PaperExchange::new(
        PaperConfig::default(),
        sim_symbols().into_iter().map(|(r, _)| r),
    ));
    let plugins = plugin_engine();
    let version = plugins
        .load(&keel_testkit::example_plugin_bytes("sma-cross"))
        .unwrap();
    let clock = Arc::new(VirtualClock::new(T0_MS));
    let metrics = Arc::new(Metrics::new());
    let switches = Arc::new(HostSwitches::default());
    let (a, a_loops, _a_commands) = tenant(
        &store,
        &paper,
        &plugins,
        &version,
        &clock,
        &metrics,
        &switches,
        (&keys, addr),
        "BTCUSDT",
    )
    .await;
    let (b, b_loops, _b_commands) = tenant(
        &store,
        &paper,
        &plugins,
        &version,
        &clock,
        &metrics,
        &switches,
        (&keys, addr),
        "ETHUSDT",
    )
    .await;
    wait_for("both snapshots", || {
        a.count("snapshot") == 1 && b.count("snapshot") == 1
    })
    .await;
    let loops = Loops::start(vec![a_loops, b_loops], config, metrics, health.clone());
    wait_for("recovery", || health.is_ready()).await;

    // Both trade at once until each socket has seen fills of its own.
    let mut source = CandleSource::new(&SimConfig::new(7));
    let mut next_ms = T0_MS;
    let mut candles = 0;
    while a.count("fill") < FILLS_MIN || b.count("fill") < FILLS_MIN {
        candles += 1;
        assert!(
            candles < CANDLES_MAX,
            "the tenants did not trade: {} and {} fills",
            a.count("fill"),
            b.count("fill")
        );
        let span = (next_ms, next_ms + 60_000);
        next_ms = span.1;
        clock.advance_to(span.1);
        for candle in source.next(span).unwrap() {
            paper.feed_candle(&candle).await.unwrap();
            for tenant in [&a, &b] {
                if candle.symbol == tenant.symbol {
                    tenant.candles.send(candle.clone()).await.unwrap();
                }
            }
        }
        // Let both loops finish the candle before the next: they then trade concurrently on
        // each candle, and no channel backs up.
        let open_time_ms = span.0;
        wait_for("both loops to decide on the candle", || {
            [&a, &b].iter().all(|t| {
                t.events()
                    .iter()
                    .any(|e| e["type"] == "candle" && e["open_time_ms"] == open_time_ms)
            })
        })
        .await;
    }
    // The monitor loops apply what the account reported last, then go idle: two idle beats of
    // each after the last candle mean both have published all of it.
    let beats = |t: &Tenant| {
        t.events()
            .iter()
            .filter(|e| e["type"] == "loop" && e["name"] == "monitor")
            .count()
    };
    let (a_beats, b_beats) = (beats(&a), beats(&b));
    wait_for("the monitor loops to go idle", || {
        beats(&a) >= a_beats + 2 && beats(&b) >= b_beats + 2
    })
    .await;
    loops.stop().await.unwrap();

    assert!(a.count("fill") >= FILLS_MIN && b.count("fill") >= FILLS_MIN);
    assert!(a.count("order") > 0 && b.count("order") > 0);
    assert!(a.count("position") > 0 && b.count("position") > 0);
    assert!(a.count("capital") > 0 && b.count("capital") > 0);
    for (tenant, other) in [(&a, &b), (&b, &a)] {
        let wrong = foreign_events(tenant, other);
        assert!(
            wrong.is_empty(),
            "{} events of the other tenant delivered, first: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }
    assert!(a.order_ids().is_disjoint(&b.order_ids()));
}

/// `/metrics` shares the API's listener: without an operator's token it names no profile and
/// no tenant's capital; an operator gets every family; a token that does not verify, a 401.
#[tokio::test]
async fn metrics_on_the_api_listener_name_no_tenant_without_an_operator_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("keel.db"))
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let profile = ProfileId::new_random();
    metrics.set_capital_free(profile, 1234.5);
    let keys = JwtKeys::new(SECRET).unwrap();
    let config = LoopConfig {
        reconcile_interval_ms: 1_000,
        trading_stall_ms: 5_000,
        monitor_stall_ms: 5_000,
        reconciliation_stall_ms: 5_000,
    };
    let serve = |profile_labels_public: bool| {
        let state = keel_host::serve::http::AppState {
            metrics: metrics.clone(),
            health: Arc::new(LoopHealth::new(0)),
            loop_config: config,
            store: store.clone(),
            probes: Vec::new(),
            auth: keys.clone(),
            profile_labels_public,
        };
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = keel_host::serve::http::router(state);
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            format!("http://{addr}/metrics")
        }
    };
    let url = serve(false).await;
    let client = reqwest::Client::new();
    let scrape = |token: Option<String>| {
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let now = chrono::Utc::now().timestamp();
    let tenant = keys.mint(UserId::new_random(), false, now, 600);
    let operator = keys.mint(UserId::new_random(), true, now, 600);
    let forged = JwtKeys::new(b"another-secret-of-at-least-32-bytes!")
        .unwrap()
        .mint(UserId::new_random(), true, now, 600);
    for (who, token) in [("anyone", None), ("a tenant", Some(tenant))] {
        let (status, text) = scrape(token).await;
        assert_eq!(status, 200, "{who}: {text}");
        assert!(!text.contains(&profile.to_string()), "{who}: {text}");
        assert!(!text.contains("keel_capital_free_quote{"), "{who}: {text}");
        // The aggregate families the alerts use are there.
        assert!(
            text.contains("keel_capital_free_quote_min 1234.5"),
            "{who}: {text}"
        );
    }
    let (status, text) = scrape(Some(operator)).await;
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!(
            "keel_capital_free_quote{{profile=\"{profile}\"}} 1234.5"
        )),
        "{text}"
    );
    let (status, _) = scrape(Some(forged)).await;
    assert_eq!(status, 401);
    // A host whose listener only operators reach may serve them to anyone.
    let url = serve(true).await;
    let text = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&profile.to_string()), "{text}");
}
