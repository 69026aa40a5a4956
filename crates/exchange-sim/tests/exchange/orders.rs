//! Order types beyond GTC limits and market orders: fill-or-kill, and the conditional orders
//! (stops and take-profits) that wait for the price to cross their `stopPrice`.

use std::time::Instant;

use keel_exchange::codes;
use keel_exchange_sim::SimHandle;
use reqwest::Method;
use serde_json::Value;

use crate::clients::{
    WAIT_MAX, differences, fixture, public, signed, signed_raw, start_sim, wait_for_candles,
};

/// The last traded price of BTCUSDT.
async fn last_price(sim: &SimHandle) -> f64 {
    let (_, ticker) = public(sim, "/fapi/v1/ticker/price?symbol=BTCUSDT").await;
    ticker["price"].as_str().unwrap().parse().unwrap()
}

/// The order `id` once its status is no longer `from`.
async fn wait_past(sim: &SimHandle, id: &Value, from: &str) -> Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let query = format!("symbol=BTCUSDT&orderId={id}");
        let order = signed(sim, Method::GET, "/fapi/v1/order", &query).await;
        if order["status"] != from {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} stayed {from}: {order}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn trades_of(sim: &SimHandle, id: &Value) -> Vec<Value> {
    let query = format!("symbol=BTCUSDT&orderId={id}");
    let trades = signed(sim, Method::GET, "/fapi/v1/userTrades", &query).await;
    trades.as_array().unwrap().clone()
}

#[tokio::test]
async fn a_fill_or_kill_order_fills_whole_at_the_next_candle_or_expires_unfilled() {
    let sim = start_sim(61).await;
    wait_for_candles(&sim, 2).await;
    let price = last_price(&sim).await;
    let unreachable = format!(
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=FOK&quantity=0.01&price={:.1}",
        price * 0.5
    );
    let killed = signed(&sim, Method::POST, "/fapi/v1/order", &unreachable).await;
    assert_eq!(
        (&killed["status"], &killed["timeInForce"]),
        (&Value::from("NEW"), &Value::from("FOK")),
        "{killed}"
    );
    let killed = wait_past(&sim, &killed["orderId"], "NEW").await;
    assert_eq!(killed["status"], "EXPIRED", "{killed}");
    assert_eq!(killed["executedQty"], "0", "{killed}");
    assert!(trades_of(&sim, &killed["orderId"]).await.is_empty());

    let reachable = format!(
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=FOK&quantity=0.02&price={:.1}",
        price * 1.05
    );
    let filled = signed(&sim, Method::POST, "/fapi/v1/order", &reachable).await;
    let filled = wait_past(&sim, &filled["orderId"], "NEW").await;
    assert_eq!(filled["status"], "FILLED", "{filled}");
    assert_eq!(filled["executedQty"], "0.02", "{filled}");
    assert_eq!(filled["timeInForce"], "FOK", "{filled}");
    let trades = trades_of(&sim, &filled["orderId"]).await;
    assert_eq!(trades.len(), 1, "one fill, all at once: {trades:?}");
}

#[tokio::test]
async fn an_unknown_time_in_force_is_refused_with_1115() {
    let sim = start_sim(62).await;
    for tif in ["DAY", "FOKX", "gtc"] {
        let query = format!(
            "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce={tif}&quantity=0.01&price=30000"
        );
        let (status, body) = signed_raw(&sim, Method::POST, "/fapi/v1/order", &query).await;
        assert_eq!(status, 400, "{tif}: {body}");
        assert_eq!(body["code"], codes::INVALID_TIMEINFORCE, "{tif}: {body}");
        assert_eq!(body["msg"], "Invalid timeInForce.", "{tif}: {body}");
    }
}

/// BUY or SELL's tick on BTCUSDT.
const TICK: f64 = 0.1;

/// Places `query` (a conditional order whose stop price `stop_of(last price)` gives) and
/// answers it, trying again with a fresh price when the market moved past the stop price in
/// between (`ORDER_WOULD_IMMEDIATELY_TRIGGER`).
async fn place_conditional(sim: &SimHandle, query: &str, stop_of: impl Fn(f64) -> f64) -> Value {
    for _ in 0..20 {
        let stop = stop_of(last_price(sim).await);
        let query = format!("{query}&stopPrice={stop:.1}");
        let (status, body) = signed_raw(sim, Method::POST, "/fapi/v1/order", &query).await;
        if body["code"] == codes::ORDER_WOULD_IMMEDIATELY_TRIGGER {
            continue;
        }
        assert_eq!(status, 200, "{query}: {body}");
        return body;
    }
    panic!("the market kept moving past the stop price of {query}");
}

/// The `ORDER_TRADE_UPDATE` events of order `id` up to the one with status `last`.
async fn updates_until(ws: &mut crate::streams::Ws, id: &Value, last: &str) -> Vec<Value> {
    let mut updates = Vec::new();
    loop {
        let event = crate::streams::next_where(ws, "an order update", |m| {
            m["e"] == "ORDER_TRADE_UPDATE" && m["o"]["i"] == *id
        })
        .await;
        let done = event["o"]["X"] == last;
        updates.push(event["o"].clone());
        if done {
            return updates;
        }
    }
}

#[tokio::test]
async fn a_close_position_stop_market_triggers_on_the_candle_that_crosses_it_and_closes_the_position()
 {
    let sim = start_sim(63).await;
    wait_for_candles(&sim, 2).await;
    let key = crate::streams::listen_key(&sim).await;
    let mut ws = crate::streams::connect(&format!("{}/ws/{key}", sim.ws_url())).await;
    let entry = "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&newOrderRespType=RESULT";
    let entry = signed(&sim, Method::POST, "/fapi/v1/order", entry).await;
    assert_eq!(entry["status"], "FILLED", "{entry}");

    // A sell stop a tick under the price: the next candle's low reaches it.
    let query = "symbol=BTCUSDT&side=SELL&type=STOP_MARKET&closePosition=true\
                 &newClientOrderId=stop-loss";
    let stop = place_conditional(&sim, query, |last| last - TICK).await;
    assert_eq!(
        (&stop["status"], &stop["type"], &stop["origType"]),
        (&"NEW".into(), &"STOP_MARKET".into(), &"STOP_MARKET".into()),
        "{stop}"
    );
    assert_eq!(
        (
            &stop["closePosition"],
            &stop["origQty"],
            &stop["workingType"]
        ),
        (&true.into(), &"0".into(), &"CONTRACT_PRICE".into()),
        "{stop}"
    );
    assert_ne!(stop["stopPrice"], "0", "{stop}");
    // Every field of Binance's documented order and event examples, with its JSON type.
    assert_eq!(
        differences("order", &fixture("order"), &stop),
        Vec::<String>::new()
    );
    let id = stop["orderId"].clone();

    let updates = updates_until(&mut ws, &id, "FILLED").await;
    let steps: Vec<(&str, &str, &str, &str)> = updates
        .iter()
        .map(|o| {
            let text = |field: &str| o[field].as_str().unwrap();
            (text("x"), text("X"), text("o"), text("ot"))
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("NEW", "NEW", "STOP_MARKET", "STOP_MARKET"),
            ("EXPIRED", "EXPIRED", "STOP_MARKET", "STOP_MARKET"),
            ("NEW", "NEW", "MARKET", "STOP_MARKET"),
            ("TRADE", "FILLED", "MARKET", "STOP_MARKET"),
        ],
        "{updates:#?}"
    );
    let documented = &fixture("stream_order_trade_update")["o"];
    for update in &updates {
        // `AP` and `cr` are documented as pushed only with TRAILING_STOP_MARKET orders.
        let missing: Vec<String> = differences("o", documented, update)
            .into_iter()
            .filter(|d| !d.starts_with("o.AP:") && !d.starts_with("o.cr:"))
            .collect();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(update["sp"], stop["stopPrice"], "{update}");
        assert_eq!(
            (&update["cp"], &update["wt"]),
            (&true.into(), &"CONTRACT_PRICE".into())
        );
        assert_eq!(update["c"], "stop-loss");
    }
    assert_eq!(
        updates[3]["z"], "0.01",
        "the whole position: {:?}",
        updates[3]
    );

    let filled = wait_past(&sim, &id, "NEW").await;
    assert_eq!(filled["status"], "FILLED", "{filled}");
    assert_eq!(
        (&filled["type"], &filled["executedQty"]),
        (&"STOP_MARKET".into(), &"0.01".into())
    );
    assert_eq!(trades_of(&sim, &id).await.len(), 1);
    let positions = signed(&sim, Method::GET, "/fapi/v2/positionRisk", "symbol=BTCUSDT").await;
    assert_eq!(
        positions[0]["positionAmt"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        0.0
    );
}

#[tokio::test]
async fn conditional_orders_wait_in_open_orders_and_cancel_like_any_order() {
    let sim = start_sim(64).await;
    wait_for_candles(&sim, 2).await;
    let price = last_price(&sim).await;
    // A buy stop at twice the price and a sell take-profit at twice: neither triggers soon.
    let stop = format!(
        "symbol=BTCUSDT&side=BUY&type=STOP&quantity=0.01&price={:.1}&stopPrice={:.1}\
         &timeInForce=GTC&workingType=MARK_PRICE",
        price * 2.0,
        price * 2.0
    );
    let stop = signed(&sim, Method::POST, "/fapi/v1/order", &stop).await;
    assert_eq!(
        (&stop["type"], &stop["workingType"]),
        (&"STOP".into(), &"MARK_PRICE".into())
    );
    let take = format!(
        "symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_MARKET&quantity=0.01&stopPrice={:.1}",
        price * 2.0
    );
    let take = signed(&sim, Method::POST, "/fapi/v1/order", &take).await;
    let open = signed(&sim, Method::GET, "/fapi/v1/openOrders", "symbol=BTCUSDT").await;
    let ids: Vec<&Value> = open
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["orderId"])
        .collect();
    assert_eq!(ids, [&stop["orderId"], &take["orderId"]], "{open}");
    assert!(stop["orderId"].as_i64() < take["orderId"].as_i64());

    let query = format!("symbol=BTCUSDT&orderId={}", stop["orderId"]);
    let one = signed(&sim, Method::GET, "/fapi/v1/openOrder", &query).await;
    assert_eq!(one["stopPrice"], stop["stopPrice"]);
    let cancelled = signed(&sim, Method::DELETE, "/fapi/v1/order", &query).await;
    assert_eq!(
        (&cancelled["status"], &cancelled["type"]),
        (&"CANCELED".into(), &"STOP".into())
    );
    let (_, again) = signed_raw(&sim, Method::DELETE, "/fapi/v1/order", &query).await;
    assert_eq!(again["code"], codes::CANCEL_REJECTED, "{again}");

    // A plain order after them numbers after them, and cancel-all takes the conditional too.
    let plain = format!(
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price={:.1}",
        price * 0.5
    );
    let plain = signed(&sim, Method::POST, "/fapi/v1/order", &plain).await;
    assert!(
        plain["orderId"].as_i64() > take["orderId"].as_i64(),
        "{plain} after {take}"
    );
    signed(
        &sim,
        Method::DELETE,
        "/fapi/v1/allOpenOrders",
        "symbol=BTCUSDT",
    )
    .await;
    let open = signed(&sim, Method::GET, "/fapi/v1/openOrders", "symbol=BTCUSDT").await;
    assert_eq!(open, serde_json::json!([]));
    let query = format!("symbol=BTCUSDT&orderId={}", take["orderId"]);
    let take = signed(&sim, Method::GET, "/fapi/v1/order", &query).await;
    assert_eq!(take["status"], "CANCELED", "{take}");
}

#[tokio::test]
async fn a_reduce_only_take_profit_with_nothing_to_reduce_expires_when_it_triggers() {
    let sim = start_sim(65).await;
    wait_for_candles(&sim, 2).await;
    // A buy take-profit a tick under the price: the next candle's low reaches it; with no
    // short position to reduce, the limit order it would become is refused and it expires.
    let query = "symbol=BTCUSDT&side=BUY&type=TAKE_PROFIT&quantity=0.01&reduceOnly=true";
    let mut order = Value::Null;
    for _ in 0..20 {
        let last = last_price(&sim).await;
        let query = format!("{query}&price={:.1}&stopPrice={:.1}", last, last - TICK);
        let (_, body) = signed_raw(&sim, Method::POST, "/fapi/v1/order", &query).await;
        if body["code"] != codes::ORDER_WOULD_IMMEDIATELY_TRIGGER {
            order = body;
            break;
        }
    }
    assert_eq!(order["status"], "NEW", "{order}");
    let done = wait_past(&sim, &order["orderId"], "NEW").await;
    assert_eq!(
        (&done["status"], &done["executedQty"]),
        (&"EXPIRED".into(), &"0".into()),
        "{done}"
    );
    assert!(trades_of(&sim, &order["orderId"]).await.is_empty());
}

#[tokio::test]
async fn conditional_orders_are_refused_as_binance_refuses_them() {
    let sim = start_sim(66).await;
    wait_for_candles(&sim, 2).await;
    let price = last_price(&sim).await;
    let far = format!("{:.1}", price * 2.0);
    let cases = [
        (
            format!(
                "type=STOP_MARKET&side=SELL&closePosition=true&quantity=0.01&stopPrice={:.1}",
                price * 0.5
            ),
            codes::QUANTITY_EXISTS_WITH_CLOSE_POSITION,
        ),
        (
            format!(
                "type=STOP&side=SELL&closePosition=true&price={far}&stopPrice={:.1}",
                price * 0.5
            ),
            codes::TARGET_STRATEGY_INVALID,
        ),
        (
            format!(
                "type=TAKE_PROFIT_MARKET&side=BUY&closePosition=true&reduceOnly=true&stopPrice={:.1}",
                price * 0.5
            ),
            codes::PARAM_NOT_REQUIRED,
        ),
        (
            "type=STOP_MARKET&side=BUY&quantity=0.01".to_owned(),
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        ),
        (
            format!("type=STOP&side=BUY&quantity=0.01&stopPrice={far}"),
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        ),
        (
            format!("type=STOP_MARKET&side=BUY&quantity=0.01&price={far}&stopPrice={far}"),
            codes::PARAM_NOT_REQUIRED,
        ),
        (
            format!(
                "type=STOP_MARKET&side=BUY&quantity=0.01&stopPrice={far}&workingType=INDEX_PRICE"
            ),
            codes::INVALID_WORKING_TYPE,
        ),
        (
            format!(
                "type=STOP_MARKET&side=BUY&quantity=0.01&stopPrice={:.1}",
                price * 0.5
            ),
            codes::ORDER_WOULD_IMMEDIATELY_TRIGGER,
        ),
        (
            format!(
                "type=TAKE_PROFIT_MARKET&side=SELL&quantity=0.01&stopPrice={:.1}",
                price * 0.5
            ),
            codes::ORDER_WOULD_IMMEDIATELY_TRIGGER,
        ),
        (
            format!(
                "type=STOP_MARKET&side=BUY&quantity=0.01&stopPrice={:.2}",
                price * 2.0 + 0.05
            ),
            codes::PRICE_NOT_INCREASED_BY_TICK_SIZE,
        ),
        (
            "type=STOP_MARKET&side=BUY&quantity=0.01&stopPrice=-5".to_owned(),
            codes::STOP_PRICE_LESS_THAN_ZERO,
        ),
        (
            format!("type=TRAILING_STOP_MARKET&side=BUY&quantity=0.01&stopPrice={far}"),
            codes::INVALID_ORDER_TYPE,
        ),
    ];
    for (query, code) in cases {
        let query = format!("symbol=BTCUSDT&{query}");
        let (status, body) = signed_raw(&sim, Method::POST, "/fapi/v1/order", &query).await;
        assert_eq!(
            (status.as_u16(), &body["code"]),
            (400, &code.into()),
            "{query}: {body}"
        );
    }
    let open = signed(&sim, Method::GET, "/fapi/v1/openOrders", "symbol=BTCUSDT").await;
    assert_eq!(open, serde_json::json!([]), "nothing refused was kept");
}

#[tokio::test]
async fn order_trade_update_names_the_time_in_force_the_order_was_placed_with() {
    let sim = start_sim(67).await;
    wait_for_candles(&sim, 2).await;
    let key = crate::streams::listen_key(&sim).await;
    let mut ws = crate::streams::connect(&format!("{}/ws/{key}", sim.ws_url())).await;
    let price = last_price(&sim).await;
    for tif in ["GTC", "GTX", "IOC", "FOK"] {
        let query = format!(
            "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce={tif}&quantity=0.01&price={:.1}",
            price * 0.5
        );
        let placed = signed(&sim, Method::POST, "/fapi/v1/order", &query).await;
        let id = placed["orderId"].clone();
        let new = updates_until(&mut ws, &id, "NEW").await;
        assert_eq!(new[0]["f"], tif, "{new:?}");
        if tif == "IOC" || tif == "FOK" {
            let expired = updates_until(&mut ws, &id, "EXPIRED").await;
            assert_eq!(expired.last().unwrap()["f"], tif, "{expired:?}");
        }
    }
    // A market order has no time in force of its own: Binance says GTC.
    let query = "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01";
    let placed = signed(&sim, Method::POST, "/fapi/v1/order", query).await;
    let filled = updates_until(&mut ws, &placed["orderId"], "FILLED").await;
    assert!(filled.iter().all(|o| o["f"] == "GTC"), "{filled:?}");
}
