//! The engine's order and lock metrics with real values: a profile engine trading through the
//! Binance adapter against a running `keel exchange-sim` server, whose faults leave an order
//! UNKNOWN, and a SQLite store whose lock counters the registry reads at each scrape.

use std::sync::Arc;

use keel_exchange::binance::{BinanceConfig, BinanceExchange, Signer};
use keel_exchange_sim::{Faults, SimConfig, SimHandle, serve};
use keel_kernel::engine::{EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, VirtualClock};
use keel_kernel::exchange::Exchange;
use keel_kernel::ids::UserId;
use keel_kernel::lock::OwnerToken;
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use keel_kernel::order::OrderStatus;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use rust_decimal_macros::dec;
use tokio::net::TcpListener;

use crate::harness::{Scripted, btc, candle};
use crate::path::buy;

/// Short, so that a held answer times out quickly.
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// The simulator's starting BTC price ([`keel_exchange_sim::sim_symbols`]).
const SIM_BTC_PRICE: f64 = 60_000.0;

async fn start_sim() -> SimHandle {
    let mut config = SimConfig::new(11);
    config.candle_ms = 100;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(config, listener).await.unwrap()
}

async fn connect(sim: &SimHandle) -> Arc<BinanceExchange> {
    let signer = Signer::Hmac {
        secret: SimConfig::DEFAULT_API_SECRET.to_owned(),
    };
    let mut config = BinanceConfig::at(
        &sim.rest_url(),
        &sim.ws_url(),
        SimConfig::DEFAULT_API_KEY.to_owned(),
        signer,
    );
    config.request_timeout_ms = REQUEST_TIMEOUT_MS;
    Arc::new(BinanceExchange::connect(config).await.unwrap())
}

/// The value of one series exactly as exposed (`name{labels}`), or `None` when absent.
fn sample(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics.encode().lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

fn open(metrics: &Metrics, status: OrderStatus) -> f64 {
    let series = format!("keel_orders_open{{status=\"{}\"}}", status.as_str());
    sample(metrics, &series).unwrap_or_else(|| panic!("{series} is not exposed"))
}

fn entered(metrics: &Metrics, status: OrderStatus) -> f64 {
    let series = format!("keel_orders_total{{status=\"{}\"}}", status.as_str());
    sample(metrics, &series).unwrap_or_else(|| panic!("{series} is not exposed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_left_unknown_shows_in_orders_open_until_reconciliation_settles_it() {
    let sim = start_sim().await;
    let exchange = connect(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("keel.db"))
        .await
        .unwrap();
    let user = UserId::new_random();
    let tenant = store.tenant(user);
    let profile = tenant.create_profile("unknown-order").await.unwrap();
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(user, dec!(10000))
        .await
        .unwrap();
    tenant
        .allocate(profile, Amount::positive(dec!(10000)).unwrap())
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    metrics.observe_store(&store);
    let strategy = Scripted::default().at(1, vec![buy(500.0)]);
    let clock = Arc::new(VirtualClock::new(0));
    let dyn_exchange: Arc<dyn Exchange> = exchange.clone();
    let mut engine = ProfileEngine::new(
        ProfileSpec {
            profile,
            user,
            limits: RiskLimits::conservative([btc()]),
        },
        EngineConfig::default(),
        store.clone(),
        dyn_exchange,
        Box::new(strategy),
        clock.clone(),
        metrics.clone(),
        Arc::new(HostSwitches::default()),
        OwnerToken::new_random(),
    );
    engine.recover().await.unwrap();
    engine
        .on_candle(&candle(0, SIM_BTC_PRICE, SIM_BTC_PRICE))
        .await
        .unwrap();

    // The simulator places the order, then its answer and every query's answer arrive after
    // the client gave up: the outcome is unknown and stays so.
    sim.state.set_faults(Faults {
        unknown_rate: 1.0,
        latency_ms: REQUEST_TIMEOUT_MS * 2,
        ..Faults::default()
    });
    let outcome = engine
        .on_candle(&candle(1, SIM_BTC_PRICE, SIM_BTC_PRICE))
        .await
        .unwrap();
    assert_eq!(outcome.orders_sent.len(), 1, "{outcome:?}");
    let id = outcome.orders_sent[0].clone();
    let stored = tenant.order(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Unknown);
    assert_eq!(open(&metrics, OrderStatus::Unknown), 1.0);
    assert_eq!(open(&metrics, OrderStatus::PendingSubmit), 0.0);
    assert_eq!(entered(&metrics, OrderStatus::PendingSubmit), 1.0);
    assert_eq!(entered(&metrics, OrderStatus::Unknown), 1.0);

    // The client gave up on the held request, so the simulator dropped it unexecuted. Once the
    // exchange answers again, reconciliation finds no such order; past the window in which a
    // delayed request could still be accepted, it declares the order never placed.
    sim.state.set_faults(Faults::default());
    let report = engine.reconcile().await.unwrap();
    assert!(
        report.is_clean(),
        "inside the window nothing is decided: {report:?}"
    );
    assert_eq!(open(&metrics, OrderStatus::Unknown), 1.0);
    clock.advance_to(EngineConfig::default().unknown_resolve_after_ms);
    let report = engine.reconcile().await.unwrap();
    let stored = tenant.order(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Rejected, "{report:?}");
    assert_eq!(sim.state.placements().get(id.as_str()), None);
    assert_eq!(open(&metrics, OrderStatus::Unknown), 0.0);
    assert_eq!(entered(&metrics, OrderStatus::Unknown), 1.0, "entered once");
    assert_eq!(entered(&metrics, OrderStatus::Rejected), 1.0);
    assert_eq!(
        entered(&metrics, OrderStatus::New) + entered(&metrics, OrderStatus::Filled),
        0.0
    );

    // The store's lock counters reach the registry: one entry lock taken, reconciliation locks
    // for recovery and the two passes above.
    let entry_locks = "keel_lock_acquire_duration_seconds_count{lock=\"entry\"}";
    assert_eq!(sample(&metrics, entry_locks), Some(1.0));
    let reconciliation_locks = "keel_lock_acquire_duration_seconds_count{lock=\"reconciliation\"}";
    assert_eq!(sample(&metrics, reconciliation_locks), Some(3.0));
    assert_eq!(
        sample(&metrics, "keel_lock_contention_total{lock=\"entry\"}"),
        Some(0.0)
    );

    for status in OrderStatus::ALL.into_iter().filter(|s| s.is_open()) {
        assert_eq!(open(&metrics, status), 0.0, "{}", status.as_str());
    }
}
