//! Order types beyond GTC limits and market orders: fill-or-kill, and the conditional orders
//! (stops and take-profits) that wait for the price to cross their `stopPrice`.

use std::time::Instant;

use keel_exchange_sim::SimHandle;
use reqwest::Method;
use serde_json::Value;

use crate::clients::{WAIT_MAX, public, signed, signed_raw, start_sim, wait_for_candles};

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
        assert_eq!(body["code"], -1115, "{tif}: {body}");
        assert_eq!(body["msg"], "Invalid timeInForce.", "{tif}: {body}");
    }
}
