//! The Binance adapter against a real simulator server, path by path and fault by fault.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keel_exchange::binance::{BinanceConfig, BinanceExchange, Signer};
use keel_exchange::codes;
use keel_exchange_sim::{Faults, SimConfig, SimHandle, SimKey};
use keel_kernel::exchange::{
    Exchange, ExchangeError, Interval, OrderReport, OrderRequest, OrderType, PlaceOutcome,
    UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::Side;
use keel_kernel::money::{Price, Qty};
use keel_kernel::order::{OrderStatus, Transition};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::clients::start_sim_with;

/// Short enough that lost responses are noticed quickly, long enough for a loaded machine.
const TEST_REQUEST_TIMEOUT_MS: u64 = 1_500;
/// How long a test waits for an asynchronous effect before failing.
const WAIT_MAX: Duration = Duration::from_secs(30);

pub fn btc() -> Symbol {
    Symbol::new("BTCUSDT").unwrap()
}

fn adapter_config(rest: String, ws: String, signer: Signer) -> BinanceConfig {
    let mut config = BinanceConfig::at(&rest, &ws, SimConfig::DEFAULT_API_KEY.to_owned(), signer);
    config.request_timeout_ms = TEST_REQUEST_TIMEOUT_MS;
    config.resync_interval_ms = 500;
    config
}

fn hmac() -> Signer {
    Signer::Hmac {
        secret: SimConfig::DEFAULT_API_SECRET.to_owned(),
    }
}

async fn start(seed: u64) -> (SimHandle, BinanceExchange) {
    let sim = start_sim_with(seed, |_| {}).await;
    let config = adapter_config(sim.rest_url(), sim.ws_url(), hmac());
    let exchange = BinanceExchange::connect(config).await.unwrap();
    (sim, exchange)
}

fn id(text: &str) -> ClientOrderId {
    ClientOrderId::new(text).unwrap()
}

fn market(cid: &str, side: Side, qty: Decimal) -> OrderRequest {
    OrderRequest {
        client_order_id: id(cid),
        symbol: btc(),
        side,
        order_type: OrderType::Market,
        qty: Qty::new(qty).unwrap(),
        reduce_only: false,
    }
}

fn limit(cid: &str, side: Side, price: Decimal, qty: Decimal) -> OrderRequest {
    OrderRequest {
        order_type: OrderType::Limit {
            price: Price::new(price).unwrap(),
        },
        ..market(cid, side, qty)
    }
}

fn accepted(outcome: &PlaceOutcome) -> &OrderReport {
    outcome
        .report()
        .unwrap_or_else(|| panic!("expected an order report, got {outcome:?}"))
}

async fn wait_for_status(
    exchange: &BinanceExchange,
    cid: &str,
    status: OrderStatus,
) -> OrderReport {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Ok(Some(report)) = exchange.order(&btc(), &id(cid)).await
            && report.status == status
        {
            return report;
        }
        assert!(Instant::now() < deadline, "{cid} never reached {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn place_query_cancel_and_account_round_trip_through_the_simulator() {
    let (_sim, exchange) = start(1).await;
    let resting = exchange
        .place(&limit("rest-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(accepted(&resting).status, OrderStatus::New);
    let open = exchange.open_orders(Some(&btc())).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].client_order_id, id("rest-1"));
    let cancelled = exchange.cancel(&btc(), &id("rest-1")).await.unwrap();
    assert_eq!(cancelled.status, OrderStatus::Canceled);
    assert!(exchange.open_orders(None).await.unwrap().is_empty());
    let again = exchange.cancel(&btc(), &id("rest-1")).await.unwrap_err();
    assert!(
        again
            .to_string()
            .contains(&codes::CANCEL_REJECTED.to_string()),
        "{again}"
    );
    assert_eq!(exchange.order(&btc(), &id("never")).await.unwrap(), None);

    exchange
        .place(&market("mkt-1", Side::Buy, dec!(0.01)))
        .await;
    let filled = wait_for_status(&exchange, "mkt-1", OrderStatus::Filled).await;
    assert_eq!(filled.executed_qty, dec!(0.01));
    let fills = exchange.fills(&btc(), &id("mkt-1")).await.unwrap();
    assert_eq!(fills.len(), 1);
    assert_eq!(fills[0].qty.get(), dec!(0.01));
    assert!(fills[0].fee.get() > Decimal::ZERO);
    let positions = exchange.positions().await.unwrap();
    assert_eq!(positions.len(), 1);
    assert_eq!(positions[0].qty, dec!(0.01));
    let balances = exchange.balances().await.unwrap();
    assert_eq!(balances[0].asset, "USDT");
    assert!(
        balances[0].wallet_balance.get() < dec!(10000),
        "the fee was charged"
    );
}

#[tokio::test]
async fn exchange_info_filters_round_before_submit_and_refuse_below_minimum() {
    let (sim, exchange) = start(2).await;
    let rules = exchange.symbol_rules(&btc()).await.unwrap();
    assert_eq!(rules.tick_size, dec!(0.1));
    assert_eq!(rules.min_notional, dec!(100));
    let outcome = exchange
        .place(&limit("round-1", Side::Buy, dec!(30000.04), dec!(0.0129)))
        .await;
    let report = accepted(&outcome);
    assert_eq!(report.orig_qty.get(), dec!(0.012));
    assert_eq!(report.order_type.limit_price().unwrap().get(), dec!(30000));
    let small = exchange
        .place(&limit("small-1", Side::Buy, dec!(30000), dec!(0.001)))
        .await;
    match small {
        PlaceOutcome::Rejected { code: 0, msg } => assert!(msg.contains("notional"), "{msg}"),
        other => panic!("expected a local refusal, got {other:?}"),
    }
    assert!(
        !sim.state.placements().contains_key("small-1"),
        "never sent"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_1022_and_ed25519_keys_verify() {
    let sim = start_sim_with(3, |config| {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        config.keys.insert(
            "ed-key".to_owned(),
            SimKey::Ed25519 {
                public: key.verifying_key(),
            },
        );
    })
    .await;
    let wrong = Signer::Hmac {
        secret: "not-the-secret".to_owned(),
    };
    let exchange = BinanceExchange::connect(adapter_config(sim.rest_url(), sim.ws_url(), wrong))
        .await
        .unwrap();
    let refused = exchange
        .place(&limit("sig-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert!(
        matches!(
            refused,
            PlaceOutcome::Rejected {
                code: codes::INVALID_SIGNATURE,
                ..
            }
        ),
        "{refused:?}"
    );

    let signer = Signer::Ed25519 {
        key: Box::new(ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])),
    };
    let mut config = adapter_config(sim.rest_url(), sim.ws_url(), signer);
    config.api_key = "ed-key".to_owned();
    let exchange = BinanceExchange::connect(config).await.unwrap();
    let placed = exchange
        .place(&limit("sig-2", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(accepted(&placed).status, OrderStatus::New);
}

#[tokio::test]
async fn clock_skew_is_measured_and_1021_resyncs_and_retries_once() {
    let (sim, exchange) = start(4).await;
    assert!(exchange.server_offset_ms().abs() < 1_000);
    sim.state.set_faults(Faults {
        clock_skew_ms: 30_000,
        ..Faults::default()
    });
    let placed = exchange
        .place(&limit("skew-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(accepted(&placed).status, OrderStatus::New);
    let offset = exchange.server_offset_ms();
    assert!((29_000..31_000).contains(&offset), "offset {offset}");
    assert_eq!(sim.state.placements()["skew-1"], 1);
}

#[tokio::test]
async fn an_unknown_5xx_answer_is_settled_by_a_query_never_reported_rejected() {
    let (sim, exchange) = start(5).await;
    sim.state.set_faults(Faults {
        unknown_rate: 1.0,
        ..Faults::default()
    });
    let outcome = exchange
        .place(&limit("unk-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(accepted(&outcome).status, OrderStatus::New, "{outcome:?}");
    assert_eq!(sim.state.placements()["unk-1"], 1);
}

#[tokio::test]
async fn a_lost_response_times_out_and_is_settled_by_a_query() {
    let (sim, exchange) = start(6).await;
    sim.state.set_faults(Faults {
        lost_response_rate: 1.0,
        lost_response_hold_ms: TEST_REQUEST_TIMEOUT_MS * 3,
        ..Faults::default()
    });
    let outcome = exchange
        .place(&limit("lost-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(
        accepted(&outcome).client_order_id,
        id("lost-1"),
        "{outcome:?}"
    );
    assert_eq!(sim.state.placements()["lost-1"], 1);
}

#[tokio::test]
async fn unknown_stays_unknown_when_the_query_cannot_answer_either() {
    let (sim, exchange) = start(7).await;
    // Every order is placed and then its answer lost; every query's answer is lost too.
    sim.state.set_faults(Faults {
        unknown_rate: 1.0,
        latency_ms: TEST_REQUEST_TIMEOUT_MS * 2,
        ..Faults::default()
    });
    let outcome = exchange
        .place(&limit("unk-2", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert!(
        matches!(outcome, PlaceOutcome::Unknown { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_duplicate_client_order_id_is_settled_by_a_query() {
    let (sim, exchange) = start(8).await;
    let first = exchange
        .place(&limit("dup-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    let second = exchange
        .place(&limit("dup-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(
        accepted(&first).exchange_order_id,
        accepted(&second).exchange_order_id
    );
    assert_eq!(sim.state.placements()["dup-1"], 1);
}

#[tokio::test]
async fn documented_503_failures_are_retried_and_reported_rejected_when_they_persist() {
    let (sim, exchange) = start(9).await;
    sim.state.set_faults(Faults {
        unavailable_rate: 0.5,
        ..Faults::default()
    });
    for n in 0..5 {
        let cid = format!("busy-{n}");
        let outcome = exchange
            .place(&limit(&cid, Side::Buy, dec!(30000), dec!(0.01)))
            .await;
        match outcome {
            PlaceOutcome::Accepted(_) => assert_eq!(sim.state.placements()[&cid], 1),
            PlaceOutcome::Unavailable {
                code: codes::DISCONNECTED,
                ..
            } => {
                assert!(!sim.state.placements().contains_key(&cid))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    sim.state.set_faults(Faults {
        unavailable_rate: 1.0,
        ..Faults::default()
    });
    let outcome = exchange
        .place(&limit("busy-x", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert!(
        matches!(
            outcome,
            PlaceOutcome::Unavailable {
                code: codes::DISCONNECTED,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(!sim.state.placements().contains_key("busy-x"));
}

#[tokio::test]
async fn a_429_reports_retry_after_and_the_next_request_waits_it_out() {
    let (sim, exchange) = start(10).await;
    sim.state.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_s: 1,
        ..Faults::default()
    });
    let outcome = exchange
        .place(&limit("rl-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(
        outcome,
        PlaceOutcome::RateLimited {
            retry_after_ms: 1_000
        }
    );
    sim.state.set_faults(Faults::default());
    let started = Instant::now();
    let outcome = exchange
        .place(&limit("rl-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    assert_eq!(accepted(&outcome).status, OrderStatus::New);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the ban was waited out"
    );
}

#[tokio::test]
async fn reads_wait_out_injected_rate_limits() {
    let (sim, exchange) = start(11).await;
    sim.state.set_faults(Faults {
        rate_limit_rate: 0.5,
        retry_after_s: 0,
        ..Faults::default()
    });
    for _ in 0..5 {
        exchange.open_orders(None).await.unwrap();
    }
}

#[tokio::test]
async fn injected_latency_delays_every_answer() {
    let (sim, exchange) = start(12).await;
    sim.state.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let started = Instant::now();
    exchange.open_orders(None).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Collects user events until every order in `ids` is terminal, then checks the stream's
/// promises: statuses never move backwards, each trade id arrives once, and the fills of each
/// order add up to its executed quantity.
async fn collect_until_terminal(
    events: &mut tokio::sync::mpsc::Receiver<UserEvent>,
    ids: &[String],
) -> HashMap<String, OrderReport> {
    let mut last: HashMap<String, OrderReport> = HashMap::new();
    let mut trades = HashSet::new();
    let mut filled: HashMap<String, Decimal> = HashMap::new();
    let deadline = Instant::now() + WAIT_MAX;
    let done = |last: &HashMap<String, OrderReport>| {
        ids.iter()
            .all(|i| last.get(i).is_some_and(|r| r.status.is_terminal()))
    };
    while !done(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv())
            .await
            .unwrap_or_else(|_| panic!("orders never all terminal: {last:?}"))
            .expect("stream open");
        match event {
            UserEvent::Fill(fill) => {
                assert!(
                    trades.insert((fill.symbol.clone(), fill.trade_id)),
                    "duplicate {fill:?}"
                );
                *filled.entry(fill.client_order_id.to_string()).or_default() += fill.qty.get();
            }
            UserEvent::Order(report) => {
                let key = report.client_order_id.to_string();
                if let Some(previous) = last.get(&key) {
                    let step = previous.status.apply(report.status);
                    assert!(
                        matches!(step, Ok(Transition::Advance(_) | Transition::Same)),
                        "{} went {} -> {}",
                        key,
                        previous.status,
                        report.status
                    );
                }
                last.insert(key, report);
            }
        }
    }
    // Fills may trail the terminal report after a resync; give them a moment, then compare.
    let settle = Instant::now() + Duration::from_secs(3);
    while ids
        .iter()
        .any(|i| filled.get(i).copied().unwrap_or_default() < last[i].executed_qty)
        && Instant::now() < settle
    {
        if let Ok(Some(UserEvent::Fill(fill))) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            assert!(
                trades.insert((fill.symbol.clone(), fill.trade_id)),
                "duplicate {fill:?}"
            );
            *filled.entry(fill.client_order_id.to_string()).or_default() += fill.qty.get();
        }
    }
    for i in ids {
        assert_eq!(
            filled.get(i).copied().unwrap_or_default(),
            last[i].executed_qty,
            "{i}"
        );
    }
    last
}

#[tokio::test]
async fn the_user_stream_delivers_updates_and_fills_in_order() {
    let (_sim, exchange) = start(13).await;
    let mut events = exchange.user_events().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    exchange.place(&market("us-1", Side::Buy, dec!(0.01))).await;
    let last = collect_until_terminal(&mut events, &["us-1".to_owned()]).await;
    assert_eq!(last["us-1"].status, OrderStatus::Filled);
}

#[tokio::test]
async fn the_user_stream_survives_dropped_duplicated_reordered_events_and_disconnects() {
    let (sim, exchange) = start(14).await;
    sim.state.set_faults(Faults {
        stream_drop_rate: 0.2,
        stream_duplicate_rate: 0.2,
        stream_reorder_rate: 0.2,
        stream_disconnect_rate: 0.1,
        ..Faults::default()
    });
    let mut events = exchange.user_events().await.unwrap();
    let ids: Vec<String> = (0..6).map(|n| format!("sf-{n}")).collect();
    for (n, cid) in ids.iter().enumerate() {
        let side = if n % 2 == 0 { Side::Buy } else { Side::Sell };
        exchange.place(&market(cid, side, dec!(0.01))).await;
    }
    let last = collect_until_terminal(&mut events, &ids).await;
    assert!(last.values().all(|r| r.status == OrderStatus::Filled));
}

#[tokio::test]
async fn the_kline_stream_delivers_closed_candles_across_disconnects() {
    let (sim, exchange) = start(15).await;
    sim.state.set_faults(Faults {
        stream_disconnect_rate: 0.3,
        ..Faults::default()
    });
    let mut candles = exchange.candles(&btc(), Interval::S1).await.unwrap();
    let mut previous = i64::MIN;
    for _ in 0..8 {
        let candle = tokio::time::timeout(WAIT_MAX, candles.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(candle.open_time_ms > previous, "candles move forward");
        assert!(candle.low <= candle.open && candle.open <= candle.high);
        previous = candle.open_time_ms;
    }
}

#[tokio::test]
async fn recent_candles_are_the_closed_klines_oldest_first_as_the_stream_delivered_them() {
    let (sim, exchange) = start(16).await;
    let mut stream = exchange.candles(&btc(), Interval::S1).await.unwrap();
    let mut streamed = Vec::new();
    for _ in 0..6 {
        let candle = tokio::time::timeout(WAIT_MAX, stream.recv())
            .await
            .unwrap()
            .unwrap();
        streamed.push(candle);
    }
    let recent = exchange
        .recent_candles(&btc(), Interval::S1, 1_000)
        .await
        .unwrap();
    assert!(recent.len() >= streamed.len(), "{} candles", recent.len());
    assert!(
        recent
            .windows(2)
            .all(|w| w[1].open_time_ms > w[0].open_time_ms
                && w[0].close_time_ms == w[1].open_time_ms),
        "oldest first, one interval apart"
    );
    for candle in &streamed {
        let same = recent
            .iter()
            .find(|c| c.open_time_ms == candle.open_time_ms)
            .expect("a streamed candle is among the recent ones");
        assert_eq!(same, candle, "the same candle over REST as on the stream");
    }
    let time: serde_json::Value = reqwest::get(format!("{}/fapi/v1/time", sim.rest_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = time["serverTime"].as_i64().unwrap();
    assert!(
        recent.iter().all(|c| c.close_time_ms <= now),
        "only closed candles"
    );

    let last_three = exchange
        .recent_candles(&btc(), Interval::S1, 3)
        .await
        .unwrap();
    assert_eq!(last_three.len(), 3);
    assert!(last_three[0].open_time_ms >= recent[recent.len() - 3].open_time_ms);

    let unknown = Symbol::new("NOPEUSDT").unwrap();
    assert!(matches!(
        exchange.recent_candles(&unknown, Interval::S1, 3).await,
        Err(ExchangeError::UnknownSymbol(_))
    ));
    // An interval Binance does not serve is its `BAD_INTERVAL`.
    let wrong = reqwest::get(format!(
        "{}/fapi/v1/klines?symbol=BTCUSDT&interval=7m",
        sim.rest_url()
    ))
    .await
    .unwrap();
    assert_eq!(wrong.status(), 400);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["code"], codes::BAD_INTERVAL);
    let too_many = reqwest::get(format!(
        "{}/fapi/v1/klines?symbol=BTCUSDT&interval=1s&limit=1501",
        sim.rest_url()
    ))
    .await
    .unwrap();
    let body: serde_json::Value = too_many.json().await.unwrap();
    assert_eq!(body["code"], codes::INVALID_PARAMETER);
}

/// The caller's rule: on Unknown, query by client order id until the order is found (or the
/// query says it does not exist); resend only what is known not to exist.
async fn place_following_the_rule(exchange: &BinanceExchange, request: &OrderRequest) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        assert!(
            Instant::now() < deadline,
            "{} never settled",
            request.client_order_id
        );
        match exchange.place(request).await {
            PlaceOutcome::Accepted(_)
            | PlaceOutcome::Filled { .. }
            | PlaceOutcome::PartiallyFilled { .. } => return,
            PlaceOutcome::RateLimited { retry_after_ms } => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            }
            PlaceOutcome::Unavailable { .. } => {}
            PlaceOutcome::Rejected { code, msg } => panic!("rejected {code} {msg}"),
            PlaceOutcome::Unknown { .. } => {
                if query_until_answered(exchange, request).await {
                    return;
                }
            }
        }
    }
}

/// True once the order is found; false once the exchange says it does not exist.
async fn query_until_answered(exchange: &BinanceExchange, request: &OrderRequest) -> bool {
    loop {
        match exchange
            .order(&request.symbol, &request.client_order_id)
            .await
        {
            Ok(Some(_)) => return true,
            Ok(None) => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every fault kind alone at a high rate, then all at once.
fn fault_kinds() -> Vec<(&'static str, Faults)> {
    let hold = TEST_REQUEST_TIMEOUT_MS * 2;
    let all = Faults {
        latency_ms: 5,
        unknown_rate: 0.3,
        lost_response_rate: 0.2,
        lost_response_hold_ms: hold,
        unavailable_rate: 0.2,
        rate_limit_rate: 0.2,
        retry_after_s: 0,
        clock_skew_ms: 7_000,
        stream_drop_rate: 0.3,
        stream_duplicate_rate: 0.3,
        stream_reorder_rate: 0.3,
        stream_disconnect_rate: 0.1,
    };
    let one = |f: fn(&mut Faults)| {
        let mut faults = Faults::default();
        f(&mut faults);
        faults
    };
    vec![
        ("latency", one(|f| f.latency_ms = 50)),
        ("unknown", one(|f| f.unknown_rate = 0.6)),
        (
            "lost",
            one(|f| {
                f.lost_response_rate = 0.6;
                f.lost_response_hold_ms = TEST_REQUEST_TIMEOUT_MS * 2;
            }),
        ),
        ("unavailable", one(|f| f.unavailable_rate = 0.5)),
        ("ratelimit", one(|f| f.rate_limit_rate = 0.5)),
        ("skew", one(|f| f.clock_skew_ms = -7_000)),
        (
            "stream",
            one(|f| {
                f.stream_drop_rate = 0.5;
                f.stream_duplicate_rate = 0.5;
                f.stream_reorder_rate = 0.5;
                f.stream_disconnect_rate = 0.2;
            }),
        ),
        ("all", all),
    ]
}

#[tokio::test]
async fn no_fault_kind_produces_a_duplicate_order_when_unknown_is_followed_by_a_query() {
    let (sim, exchange) = start(16).await;
    let _events = exchange.user_events().await.unwrap();
    let mut ids = Vec::new();
    for (kind, faults) in fault_kinds() {
        sim.state.set_faults(faults);
        for n in 0..6 {
            let cid = format!("nd-{kind}-{n}");
            // Market orders close within a candle: a blind resend of one would be a new order.
            let request = if n % 2 == 0 {
                market(&cid, Side::Buy, dec!(0.01))
            } else {
                limit(&cid, Side::Buy, dec!(30000), dec!(0.01))
            };
            place_following_the_rule(&exchange, &request).await;
            ids.push(cid);
        }
    }
    let placements = sim.state.placements();
    for cid in &ids {
        assert_eq!(placements.get(cid), Some(&1), "{cid}: {placements:?}");
    }
}

#[tokio::test]
async fn faults_are_settable_at_run_time_through_the_admin_endpoint() {
    let (sim, _exchange) = start(17).await;
    let http = reqwest::Client::new();
    let url = format!("{}/admin/faults", sim.rest_url());
    let response = http
        .put(&url)
        .body("unknown_rate=0.5,latency_ms=20")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(sim.state.faults().unknown_rate, 0.5);
    assert_eq!(sim.state.faults().latency_ms, 20);
    let bad = http.put(&url).body("unknown_rate=3").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["unknown_rate"], 0.5);
}

#[tokio::test]
async fn binance_error_bodies_and_statuses_are_served_for_bad_requests() {
    let (sim, _exchange) = start(18).await;
    let http = reqwest::Client::new();
    let url = format!("{}/fapi/v1/order?symbol=BTCUSDT", sim.rest_url());
    let no_key = http.get(&url).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let body: serde_json::Value = no_key.json().await.unwrap();
    assert_eq!(body["code"], codes::BAD_API_KEY_FMT);
    let unsigned = http
        .get(&url)
        .header("X-MBX-APIKEY", SimConfig::DEFAULT_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 400);
    let body: serde_json::Value = unsigned.json().await.unwrap();
    assert_eq!(body["code"], codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED);
    let time: serde_json::Value = http
        .get(format!("{}/fapi/v1/time", sim.rest_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(time["serverTime"].as_i64().unwrap() > 1_600_000_000_000);
}

#[tokio::test]
async fn events_the_stream_never_sends_are_recovered_by_the_rest_resync() {
    let (sim, exchange) = start(19).await;
    sim.state.set_faults(Faults {
        stream_drop_rate: 1.0,
        ..Faults::default()
    });
    let mut events = exchange.user_events().await.unwrap();
    exchange.place(&market("rs-1", Side::Buy, dec!(0.01))).await;
    let last = collect_until_terminal(&mut events, &["rs-1".to_owned()]).await;
    assert_eq!(last["rs-1"].status, OrderStatus::Filled);
}

#[tokio::test]
async fn listen_keys_are_created_kept_alive_and_deleted() {
    let (sim, _exchange) = start(20).await;
    let http = reqwest::Client::new();
    let url = format!("{}/fapi/v1/listenKey", sim.rest_url());
    let call = |method: reqwest::Method| {
        http.request(method, &url)
            .header("X-MBX-APIKEY", SimConfig::DEFAULT_API_KEY)
            .send()
    };
    let created: serde_json::Value = call(reqwest::Method::POST)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["listenKey"].as_str().unwrap().to_owned();
    let again: serde_json::Value = call(reqwest::Method::POST)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["listenKey"],
        key.as_str(),
        "a live key is handed out again"
    );
    assert!(
        call(reqwest::Method::PUT)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let ws = format!("{}/ws/{key}", sim.ws_url());
    assert!(tokio_tungstenite::connect_async(&ws).await.is_ok());
    assert!(
        call(reqwest::Method::DELETE)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let kept = call(reqwest::Method::PUT).await.unwrap();
    assert_eq!(kept.status(), 400);
    let body: serde_json::Value = kept.json().await.unwrap();
    assert_eq!(body["code"], codes::INVALID_LISTEN_KEY);
    assert!(
        tokio_tungstenite::connect_async(&ws).await.is_err(),
        "a deleted key streams nothing"
    );
}

#[tokio::test]
async fn after_listen_key_expired_the_user_stream_takes_a_new_key_and_carries_on() {
    let sim = start_sim_with(21, |_| {}).await;
    let mut config = adapter_config(sim.rest_url(), sim.ws_url(), hmac());
    // No periodic resync to fall back on: only a new stream can carry the order.
    config.resync_interval_ms = 3_600_000;
    let exchange = BinanceExchange::connect(config).await.unwrap();
    let mut events = exchange.user_events().await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/fapi/v1/listenKey", sim.rest_url());
    let call = |method: reqwest::Method| {
        http.request(method, &url)
            .header("X-MBX-APIKEY", SimConfig::DEFAULT_API_KEY)
            .send()
    };
    // A keep-alive succeeds only while the account has a live key.
    let wait_for_a_key = |what: &'static str| async move {
        let deadline = Instant::now() + WAIT_MAX;
        while !call(reqwest::Method::PUT)
            .await
            .unwrap()
            .status()
            .is_success()
        {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for_a_key("the adapter never took a listen key").await;
    let deleted = call(reqwest::Method::DELETE).await.unwrap();
    assert!(deleted.status().is_success());
    // The simulator sends listenKeyExpired on the open connection and nothing more.
    wait_for_a_key("the adapter never took a new listen key after listenKeyExpired").await;
    exchange
        .place(&limit("lk-1", Side::Buy, dec!(30000), dec!(0.01)))
        .await;
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv())
            .await
            .expect("the order reached the user stream")
            .expect("stream open");
        if let UserEvent::Order(report) = event
            && report.client_order_id.as_str() == "lk-1"
        {
            assert_eq!(report.status, OrderStatus::New);
            break;
        }
    }
}

#[tokio::test]
async fn a_replayed_candle_file_sets_the_prices_orders_fill_at() {
    let opens = [60_000.0, 61_000.0, 62_000.0, 63_000.0, 64_000.0, 65_000.0];
    let lines: String = opens
        .iter()
        .map(|open| (*open, open + 500.0))
        .enumerate()
        .map(|(n, (open, close))| {
            let line = serde_json::json!({
                "symbol": "BTCUSDT", "open_time_ms": n as i64 * 60_000,
                "close_time_ms": (n as i64 + 1) * 60_000, "open": open,
                "high": close + 10.0, "low": open - 10.0, "close": close, "volume": 1.0,
            });
            format!("{line}\n")
        })
        .collect();
    let replay = keel_exchange_sim::read_candle_file(&lines).unwrap();
    let sim = start_sim_with(21, |config| {
        config.replay = Some(replay);
        config.candle_ms = 400;
    })
    .await;
    let exchange = BinanceExchange::connect(adapter_config(sim.rest_url(), sim.ws_url(), hmac()))
        .await
        .unwrap();
    let mut candles = exchange.candles(&btc(), Interval::S1).await.unwrap();
    let first = tokio::time::timeout(WAIT_MAX, candles.recv())
        .await
        .unwrap()
        .unwrap();
    // On a slow machine the stream may join after the first candle: find where it joined.
    let joined = opens.iter().position(|o| *o == first.open).unwrap();
    assert!(joined + 2 < opens.len(), "joined too late: {first:?}");
    exchange.place(&market("rp-1", Side::Buy, dec!(0.01))).await;
    let filled = wait_for_status(&exchange, "rp-1", OrderStatus::Filled).await;
    // Placed after candle 1 closed, i.e. after candle 2's interval began: candle 2's open is
    // already history, so the order fills at the open of candle 3 (no look-ahead).
    let expected = Decimal::try_from(opens[joined + 2]).unwrap();
    assert_eq!(filled.avg_price.unwrap().get(), expected);
    assert!(keel_exchange_sim::read_candle_file("{not json").is_err());
}
