//! The simulator as third-party clients see it: real ccxt and binance-futures-connector, and
//! answers compared field by field with Binance's documented response examples.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_exchange::binance::sign::hmac_sha256_hex;
use keel_exchange::codes;
use keel_exchange_sim::{SimConfig, SimHandle, serve};
use serde_json::Value;
use tokio::net::TcpListener;

/// How long a test waits for an asynchronous effect before failing.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(30);
/// How long the bot start through ccxt and the connector may take.
const CLIENT_SCRIPT_WAIT_MAX: Duration = Duration::from_secs(300);

pub(crate) async fn start_sim(seed: u64) -> SimHandle {
    start_sim_with(seed, |_| {}).await
}

/// A simulator with tenth-of-a-second candles, configured further by `configure`.
pub(crate) async fn start_sim_with(seed: u64, configure: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut config = SimConfig::new(seed);
    config.candle_ms = 100;
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(config, listener).await.unwrap()
}

/// A signed request with the default key, as a Binance client sends it.
pub(crate) async fn signed(
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    query: &str,
) -> Value {
    let (status, body) = signed_raw(sim, method, path, query).await;
    assert!(status.is_success(), "{path}?{query}: {status} {body}");
    body
}

pub(crate) async fn signed_raw(
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    query: &str,
) -> (reqwest::StatusCode, Value) {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut payload = format!("timestamp={timestamp}");
    if !query.is_empty() {
        payload = format!("{query}&{payload}");
    }
    let signature = hmac_sha256_hex(SimConfig::DEFAULT_API_SECRET, &payload);
    let url = format!("{}{path}?{payload}&signature={signature}", sim.rest_url());
    let response = reqwest::Client::new()
        .request(method, url)
        .header("X-MBX-APIKEY", SimConfig::DEFAULT_API_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

pub(crate) async fn public(sim: &SimHandle, path_and_query: &str) -> (reqwest::StatusCode, Value) {
    let response = reqwest::get(format!("{}{path_and_query}", sim.rest_url()))
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

pub(crate) async fn wait_for_candles(sim: &SimHandle, count: usize) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (_, rows) = public(sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=1s").await;
        if rows.as_array().is_some_and(|r| r.len() >= count) {
            return;
        }
        assert!(Instant::now() < deadline, "no candles");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/binance")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of Binance's example is in the answer with the same JSON type, recursively
/// (arrays by their first element). Returns the differences.
pub(crate) fn differences(path: &str, documented: &Value, answer: &Value) -> Vec<String> {
    if kind(documented) != kind(answer) {
        return vec![format!(
            "{path}: documented {} but served {}",
            kind(documented),
            kind(answer)
        )];
    }
    match (documented, answer) {
        (Value::Object(doc), Value::Object(ans)) => doc
            .iter()
            .flat_map(|(key, value)| match ans.get(key) {
                None => vec![format!("{path}.{key}: missing")],
                Some(served) => differences(&format!("{path}.{key}"), value, served),
            })
            .collect(),
        (Value::Array(doc), Value::Array(ans)) => match (doc.first(), ans.first()) {
            (Some(d), Some(a)) if d.is_array() => d
                .as_array()
                .unwrap()
                .iter()
                .zip(a.as_array().unwrap())
                .enumerate()
                .flat_map(|(i, (d, a))| differences(&format!("{path}[0][{i}]"), d, a))
                .chain(
                    (d.as_array().unwrap().len() != a.as_array().unwrap().len())
                        .then(|| format!("{path}[0]: another length")),
                )
                .collect(),
            (Some(d), Some(a)) => differences(&format!("{path}[0]"), d, a),
            (Some(_), None) => vec![format!("{path}: served empty, cannot compare")],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn answers_have_the_fields_and_json_types_of_binances_documented_examples() {
    use reqwest::Method;
    let sim = start_sim(41).await;
    wait_for_candles(&sim, 3).await;
    let order = signed(
        &sim,
        Method::POST,
        "/fapi/v1/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=30000",
    )
    .await;
    let id = order["orderId"].as_i64().unwrap();
    let market = signed(
        &sim,
        Method::POST,
        "/fapi/v1/order",
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&newOrderRespType=RESULT",
    )
    .await;
    assert_eq!(
        market["status"], "FILLED",
        "RESULT answers the fill: {market}"
    );
    let mut served = vec![
        (
            "ticker_price",
            public(&sim, "/fapi/v1/ticker/price?symbol=BTCUSDT").await.1,
        ),
        (
            "ticker_24hr",
            public(&sim, "/fapi/v1/ticker/24hr?symbol=BTCUSDT").await.1,
        ),
        (
            "book_ticker",
            public(&sim, "/fapi/v1/ticker/bookTicker?symbol=BTCUSDT")
                .await
                .1,
        ),
        (
            "depth",
            public(&sim, "/fapi/v1/depth?symbol=BTCUSDT&limit=5")
                .await
                .1,
        ),
        (
            "premium_index",
            public(&sim, "/fapi/v1/premiumIndex?symbol=BTCUSDT").await.1,
        ),
        (
            "klines",
            public(&sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=1h&limit=3")
                .await
                .1,
        ),
        (
            "klines",
            public(
                &sim,
                "/fapi/v1/continuousKlines?pair=BTCUSDT&contractType=PERPETUAL&interval=1h&limit=3",
            )
            .await
            .1,
        ),
        (
            "funding_rate",
            public(&sim, "/fapi/v1/fundingRate?symbol=BTCUSDT&limit=3")
                .await
                .1,
        ),
        (
            "error",
            public(&sim, "/fapi/v1/ticker/price?symbol=NOPEUSDT")
                .await
                .1,
        ),
    ];
    let signed_reads = [
        ("balance_v2", Method::GET, "/fapi/v2/balance", String::new()),
        ("balance_v3", Method::GET, "/fapi/v3/balance", String::new()),
        ("account_v2", Method::GET, "/fapi/v2/account", String::new()),
        ("account_v3", Method::GET, "/fapi/v3/account", String::new()),
        (
            "position_risk_v2",
            Method::GET,
            "/fapi/v2/positionRisk",
            String::new(),
        ),
        (
            "position_risk_v3",
            Method::GET,
            "/fapi/v3/positionRisk",
            String::new(),
        ),
        (
            "leverage_bracket",
            Method::GET,
            "/fapi/v1/leverageBracket",
            String::new(),
        ),
        (
            "position_side_dual",
            Method::GET,
            "/fapi/v1/positionSide/dual",
            String::new(),
        ),
        (
            "leverage",
            Method::POST,
            "/fapi/v1/leverage",
            "symbol=BTCUSDT&leverage=7".into(),
        ),
        (
            "margin_type",
            Method::POST,
            "/fapi/v1/marginType",
            "symbol=BTCUSDT&marginType=ISOLATED".into(),
        ),
        (
            "order",
            Method::GET,
            "/fapi/v1/openOrder",
            format!("symbol=BTCUSDT&orderId={id}"),
        ),
        (
            "order",
            Method::GET,
            "/fapi/v1/allOrders",
            "symbol=BTCUSDT".into(),
        ),
        (
            "user_trades",
            Method::GET,
            "/fapi/v1/userTrades",
            "symbol=BTCUSDT".into(),
        ),
        ("income", Method::GET, "/fapi/v1/income", String::new()),
        // Last: it cancels the open order the reads above name.
        (
            "cancel_all_open_orders",
            Method::DELETE,
            "/fapi/v1/allOpenOrders",
            "symbol=BTCUSDT".into(),
        ),
    ];
    for (name, method, path, query) in signed_reads {
        served.push((name, signed(&sim, method, path, &query).await));
    }
    let all: Vec<String> = served
        .iter()
        .flat_map(|(name, answer)| {
            let first = match answer {
                Value::Array(rows) if name == &"order" => rows.first().cloned().unwrap_or_default(),
                other => other.clone(),
            };
            differences(name, &fixture(name), &first)
        })
        .collect();
    assert!(all.is_empty(), "{all:#?}");
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_with_a_binance_error_body() {
    let sim = start_sim(42).await;
    let (status, body) = public(&sim, "/fapi/v1/noSuchThing").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], codes::INVALID_PATH, "{body}");
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .contains("/fapi/v1/noSuchThing")
    );
    let response = reqwest::Client::new()
        .patch(format!("{}/fapi/v1/order", sim.rest_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], codes::INVALID_PATH);
}

#[tokio::test]
async fn a_market_order_with_a_price_is_refused_with_1106() {
    let sim = start_sim(43).await;
    let (status, body) = signed_raw(
        &sim,
        reqwest::Method::POST,
        "/fapi/v1/order",
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&price=60000",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], codes::PARAM_NOT_REQUIRED, "{body}");
}

#[tokio::test]
async fn a_reused_client_order_id_keeps_the_earlier_order_and_its_fill_in_history() {
    use reqwest::Method;
    let sim = start_sim(44).await;
    wait_for_candles(&sim, 1).await;
    let place = "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&newClientOrderId=again\
                 &newOrderRespType=RESULT";
    let first = signed(&sim, Method::POST, "/fapi/v1/order", place).await;
    assert_eq!(first["status"], "FILLED", "{first}");
    let close = place.replace("side=BUY", "side=SELL");
    let second = signed(&sim, Method::POST, "/fapi/v1/order", &close).await;
    assert_eq!(second["status"], "FILLED", "{second}");
    assert_ne!(first["orderId"], second["orderId"]);
    let all = signed(&sim, Method::GET, "/fapi/v1/allOrders", "symbol=BTCUSDT").await;
    let ids: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["orderId"])
        .collect();
    assert_eq!(ids, [&first["orderId"], &second["orderId"]]);
    let by_id = format!("symbol=BTCUSDT&orderId={}", first["orderId"]);
    let earlier = signed(&sim, Method::GET, "/fapi/v1/order", &by_id).await;
    assert_eq!(earlier["side"], "BUY");
    assert_eq!(earlier["status"], "FILLED");
    let trades = signed(&sim, Method::GET, "/fapi/v1/userTrades", "symbol=BTCUSDT").await;
    let orders: Vec<&Value> = trades
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["orderId"])
        .collect();
    assert_eq!(orders, [&first["orderId"], &second["orderId"]]);
}

#[tokio::test]
async fn user_trades_with_a_limit_are_the_newest_and_from_id_pages_forward() {
    use reqwest::Method;
    let sim = start_sim(45).await;
    wait_for_candles(&sim, 1).await;
    for side in ["BUY", "SELL", "BUY"] {
        let query =
            format!("symbol=BTCUSDT&side={side}&type=MARKET&quantity=0.01&newOrderRespType=RESULT");
        let order = signed(&sim, Method::POST, "/fapi/v1/order", &query).await;
        assert_eq!(order["status"], "FILLED");
    }
    let all = signed(&sim, Method::GET, "/fapi/v1/userTrades", "symbol=BTCUSDT").await;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let newest = signed(
        &sim,
        Method::GET,
        "/fapi/v1/userTrades",
        "symbol=BTCUSDT&limit=2",
    )
    .await;
    let newest: Vec<i64> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(newest, ids[1..]);
    let query = format!("symbol=BTCUSDT&limit=1&fromId={}", ids[1]);
    let from = signed(&sim, Method::GET, "/fapi/v1/userTrades", &query).await;
    assert_eq!(from[0]["id"].as_i64().unwrap(), ids[1]);
    let query = format!("symbol=BTCUSDT&startTime={}", all[2]["time"]);
    let since = signed(&sim, Method::GET, "/fapi/v1/userTrades", &query).await;
    assert_eq!(since[0]["id"].as_i64().unwrap(), ids[2]);
}

#[tokio::test]
async fn klines_of_every_usdm_interval_page_forward_from_start_time() {
    let sim = start_sim(46).await;
    for interval in [
        "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
    ] {
        let (status, first) = public(
            &sim,
            &format!(
                "/fapi/v1/klines?symbol=ETHUSDT&interval={interval}&limit=5&startTime=1700000000000"
            ),
        )
        .await;
        assert_eq!(status, 200, "{interval}: {first}");
        let rows = first.as_array().unwrap();
        assert_eq!(rows.len(), 5, "{interval}");
        assert!(rows[0][0].as_i64().unwrap() >= 1_700_000_000_000);
        for row in rows {
            let volume: f64 = row[5].as_str().unwrap().parse().unwrap();
            assert!(
                volume > 0.0 && row[8].as_i64().unwrap() > 0,
                "{interval}: {row}"
            );
            let (high, low): (f64, f64) = (
                row[2].as_str().unwrap().parse().unwrap(),
                row[3].as_str().unwrap().parse().unwrap(),
            );
            assert!(high >= low && low > 0.0, "{interval}: {row}");
        }
        let next_start = rows[4][6].as_i64().unwrap() + 1;
        let (_, second) = public(
            &sim,
            &format!(
                "/fapi/v1/klines?symbol=ETHUSDT&interval={interval}&limit=5&startTime={next_start}"
            ),
        )
        .await;
        assert_eq!(
            second[0][0].as_i64().unwrap(),
            next_start,
            "{interval} pages on"
        );
        let (_, again) = public(
            &sim,
            &format!(
                "/fapi/v1/klines?symbol=ETHUSDT&interval={interval}&limit=5&startTime=1700000000000"
            ),
        )
        .await;
        assert_eq!(again, first, "{interval}: the same history each time");
    }
    // The newest minute closes where the played market stands.
    wait_for_candles(&sim, 3).await;
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let (_, played) = public(&sim, "/fapi/v1/klines?symbol=ETHUSDT&interval=1s&limit=1").await;
        let (_, minute) = public(&sim, "/fapi/v1/klines?symbol=ETHUSDT&interval=1m&limit=1").await;
        if played[0][4] == minute[0][4] {
            break;
        }
        // A candle played between the two requests: ask again.
        assert!(Instant::now() < deadline, "{played} vs {minute}");
    }
    let (status, body) = public(&sim, "/fapi/v1/klines?symbol=ETHUSDT&interval=7m").await;
    assert_eq!(
        (status.as_u16(), body["code"].as_i64()),
        (400, Some(codes::BAD_INTERVAL))
    );
}

/// A bot's start through real client libraries. Needs `python3` with ccxt and
/// binance-futures-connector (`scripts/test` installs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ccxt_and_the_binance_connector_run_a_bot_start_against_the_simulator() {
    run_client_script(47, "bot_start.py").await;
}

/// Every REST fault kind through the same clients: each raises its own error for Binance's
/// answer, an order whose answer was lost or unknown is found by its client order id, and a
/// skewed clock is `INVALID_TIMESTAMP` until ccxt adjusts for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ccxt_and_the_binance_connector_meet_every_fault_kind_as_binance_answers_it() {
    run_client_script(48, "faults.py").await;
}

/// Runs `tests/clients/<script>` against a fresh simulator with its default key, under a
/// deadline, and requires it to succeed and print `ok`.
async fn run_client_script(seed: u64, script: &str) {
    let sim = start_sim(seed).await;
    wait_for_candles(&sim, 2).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let base = sim.rest_url();
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&base)
        .arg(SimConfig::DEFAULT_API_KEY)
        .arg(SimConfig::DEFAULT_API_SECRET)
        .kill_on_drop(true)
        .output();
    // Every wait inside the script has its own deadline; this one bounds the whole.
    let output = tokio::time::timeout(CLIENT_SCRIPT_WAIT_MAX, run)
        .await
        .unwrap_or_else(|_| panic!("{} ran past its deadline", script.display()))
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ok"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// A signed request with `key`, whose HMAC secret is `secret`.
async fn signed_as(
    sim: &SimHandle,
    (key, secret): (&str, &str),
    method: reqwest::Method,
    path: &str,
    query: &str,
) -> Value {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let payload = match query {
        "" => format!("timestamp={timestamp}"),
        query => format!("{query}&timestamp={timestamp}"),
    };
    let signature = hmac_sha256_hex(secret, &payload);
    let url = format!("{}{path}?{payload}&signature={signature}", sim.rest_url());
    let response = reqwest::Client::new()
        .request(method, url)
        .header("X-MBX-APIKEY", key)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn each_own_account_key_has_its_balance_orders_positions_and_listen_key() {
    use keel_exchange_sim::SimKey;
    use reqwest::Method;
    let mut config = SimConfig::new(48);
    config.candle_ms = 100;
    for (key, balance) in [("alice", 500), ("bob", 2_000)] {
        let secret = SimKey::Hmac {
            secret: format!("{key}-secret"),
        };
        config.keys.insert(key.to_owned(), secret);
        let balance = keel_kernel::money::Amount::new(balance.into()).unwrap();
        config.own_accounts.insert(key.to_owned(), balance);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = serve(config, listener).await.unwrap();
    wait_for_candles(&sim, 1).await;
    let alice = ("alice", "alice-secret");
    let bob = ("bob", "bob-secret");
    let balance = |rows: Value| rows[0]["balance"].as_str().unwrap().to_owned();
    let alice_balance = signed_as(&sim, alice, Method::GET, "/fapi/v2/balance", "").await;
    let bob_balance = signed_as(&sim, bob, Method::GET, "/fapi/v3/balance", "").await;
    assert_eq!(balance(alice_balance), "500.00000000");
    assert_eq!(balance(bob_balance), "2000.00000000");
    let main = signed(&sim, Method::GET, "/fapi/v2/balance", "").await;
    assert_eq!(balance(main), "10000.00000000");

    let order = "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&newClientOrderId=same\
                 &newOrderRespType=RESULT";
    let filled = signed_as(&sim, alice, Method::POST, "/fapi/v1/order", order).await;
    assert_eq!(filled["status"], "FILLED");
    // The same client order id on another account is another order.
    let resting = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01\
                   &price=30000&newClientOrderId=same";
    let bobs = signed_as(&sim, bob, Method::POST, "/fapi/v1/order", resting).await;
    assert_eq!(bobs["status"], "NEW");
    assert_ne!(bobs["orderId"], filled["orderId"]);
    let positions = |rows: Value| rows.as_array().unwrap().len();
    let risk = "/fapi/v3/positionRisk";
    assert_eq!(
        positions(signed_as(&sim, alice, Method::GET, risk, "").await),
        1
    );
    assert_eq!(positions(signed(&sim, Method::GET, risk, "").await), 0);
    let bob_trades = signed_as(
        &sim,
        bob,
        Method::GET,
        "/fapi/v1/userTrades",
        "symbol=BTCUSDT",
    );
    assert!(bob_trades.await.as_array().unwrap().is_empty());
    let open = signed(&sim, Method::GET, "/fapi/v1/openOrders", "").await;
    assert!(
        open.as_array().unwrap().is_empty(),
        "the main account has no orders"
    );

    let listen = |key: (&'static str, &'static str)| {
        let url = format!("{}/fapi/v1/listenKey", sim.rest_url());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("X-MBX-APIKEY", key.0)
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            body["listenKey"].as_str().unwrap().to_owned()
        }
    };
    assert_ne!(listen(alice).await, listen(bob).await);
    assert_eq!(listen(alice).await, listen(alice).await);

    // Alice's user stream carries her orders, never Bob's.
    use futures::StreamExt;
    let ws = format!("{}/ws/{}", sim.ws_url(), listen(alice).await);
    let (mut stream, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let bobs = resting.replace("newClientOrderId=same", "newClientOrderId=bobs-second");
    signed_as(&sim, bob, Method::POST, "/fapi/v1/order", &bobs).await;
    let hers = resting.replace("newClientOrderId=same", "newClientOrderId=alices");
    signed_as(&sim, alice, Method::POST, "/fapi/v1/order", &hers).await;
    let message = tokio::time::timeout(WAIT_MAX, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(event["o"]["c"], "alices", "{event}");
}

/// Binance's ten-second order limit: every answer counts the window's orders in
/// `X-MBX-ORDER-COUNT-10S`, `exchangeInfo` lists the limit, and the order beyond it is refused
/// with 429, `TOO_MANY_ORDERS` and a Retry-After within the window.
#[tokio::test]
async fn orders_beyond_the_ten_second_limit_answer_1015_with_retry_after() {
    let sim = start_sim_with(47, |config| config.order_limit_10s = 3).await;
    let (_, info) = public(&sim, "/fapi/v1/exchangeInfo").await;
    assert!(
        info["rateLimits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["interval"] == "SECOND" && l["intervalNum"] == 10 && l["limit"] == 3),
        "{}",
        info["rateLimits"]
    );
    // Start well inside a window, so the four orders share it.
    let (_, time) = public(&sim, "/fapi/v1/time").await;
    let into_window = time["serverTime"].as_i64().unwrap() % 10_000;
    if into_window > 6_000 {
        tokio::time::sleep(Duration::from_millis((10_100 - into_window) as u64)).await;
    }
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for price in [30_000, 30_100, 30_200, 30_300] {
        let query = format!(
            "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price={price}&timestamp={}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let signature = hmac_sha256_hex(SimConfig::DEFAULT_API_SECRET, &query);
        let response = client
            .post(format!(
                "{}/fapi/v1/order?{query}&signature={signature}",
                sim.rest_url()
            ))
            .header("X-MBX-APIKEY", SimConfig::DEFAULT_API_KEY)
            .send()
            .await
            .unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let counted = header("X-MBX-ORDER-COUNT-10S");
        let retry_after = header("Retry-After");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        answers.push((status, counted, retry_after, body));
    }
    for (index, (status, counted, _, body)) in answers[..3].iter().enumerate() {
        assert!(status.is_success(), "order {index}: {status} {body}");
        assert_eq!(counted.as_deref(), Some(&*(index + 1).to_string()));
    }
    let (status, _, retry_after, body) = &answers[3];
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["code"], codes::TOO_MANY_ORDERS, "{body}");
    assert_eq!(
        body["msg"],
        "Too many new orders; current limit is 3 orders per TEN_SECONDS."
    );
    let seconds: u64 = retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=10).contains(&seconds), "{seconds}");
}

/// Times at the ends of an i64 in the history endpoints answer (an empty list or Binance's
/// error), never a dropped connection.
#[tokio::test]
async fn extreme_times_in_history_requests_are_answered() {
    let sim = start_sim(48).await;
    for time in [i64::MIN, -1, 0, i64::MAX] {
        for path in [
            format!("/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={time}"),
            format!("/fapi/v1/fundingRate?symbol=BTCUSDT&endTime={time}"),
            format!("/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={time}&endTime={time}"),
            format!("/fapi/v1/klines?symbol=BTCUSDT&interval=1h&startTime={time}"),
            format!("/fapi/v1/klines?symbol=BTCUSDT&interval=1h&endTime={time}"),
            format!(
                "/fapi/v1/continuousKlines?pair=BTCUSDT&contractType=PERPETUAL&interval=1m&startTime={time}"
            ),
        ] {
            let (status, body) = public(&sim, &path).await;
            assert!(
                status.is_success() || body["code"].is_i64(),
                "{path}: {status} {body}"
            );
        }
    }
}
