//! Binance's Algo Order API (`/fapi/v1/algoOrder` and friends): conditional orders placed,
//! queried, listed, cancelled and triggered as Binance documents them, answers checked against
//! the documented examples.

use std::time::Instant;

use keel_exchange::codes;
use keel_exchange_sim::SimHandle;
use reqwest::Method;
use serde_json::Value;

use crate::clients::{
    WAIT_MAX, differences, fixture, public, signed, signed_raw, start_sim, wait_for_candles,
};

/// BTCUSDT's tick.
const TICK: f64 = 0.1;

async fn last_price(sim: &SimHandle) -> f64 {
    let (_, ticker) = public(sim, "/fapi/v1/ticker/price?symbol=BTCUSDT").await;
    ticker["price"].as_str().unwrap().parse().unwrap()
}

/// Places the algo order `query` with the trigger price `trigger_of(last price)`, trying again
/// with a fresh price when the market moved past it in between (`ORDER_WOULD_IMMEDIATELY_TRIGGER`).
async fn place_algo(sim: &SimHandle, query: &str, trigger_of: impl Fn(f64) -> f64) -> Value {
    for _ in 0..20 {
        let trigger = trigger_of(last_price(sim).await);
        let query = format!("{query}&triggerPrice={trigger:.1}");
        let (status, body) = signed_raw(sim, Method::POST, "/fapi/v1/algoOrder", &query).await;
        if body["code"] == codes::ORDER_WOULD_IMMEDIATELY_TRIGGER {
            continue;
        }
        assert_eq!(status, 200, "{query}: {body}");
        return body;
    }
    panic!("the market kept moving past the trigger price of {query}");
}

/// The algo order `algo_id` once its `algoStatus` is no longer `from`.
async fn wait_algo_past(sim: &SimHandle, algo_id: &Value, from: &str) -> Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let query = format!("algoId={algo_id}");
        let algo = signed(sim, Method::GET, "/fapi/v1/algoOrder", &query).await;
        if algo["algoStatus"] != from {
            return algo;
        }
        assert!(Instant::now() < deadline, "{algo_id} stayed {from}: {algo}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn no_differences(name: &str, served: &Value) {
    assert_eq!(
        differences(name, &fixture(name), served),
        Vec::<String>::new(),
        "{served}"
    );
}

#[tokio::test]
async fn an_algo_stop_market_is_placed_queried_listed_and_cancelled_as_binance_documents() {
    let sim = start_sim(71).await;
    wait_for_candles(&sim, 2).await;
    let price = last_price(&sim).await;
    let place = format!(
        "algoType=CONDITIONAL&symbol=BTCUSDT&side=BUY&type=STOP_MARKET&quantity=0.01\
         &triggerPrice={:.1}&workingType=MARK_PRICE&clientAlgoId=far-stop",
        price * 2.0
    );
    let placed = signed(&sim, Method::POST, "/fapi/v1/algoOrder", &place).await;
    no_differences("algo_order", &placed);
    assert_eq!(
        (
            &placed["algoStatus"],
            &placed["orderType"],
            &placed["clientAlgoId"],
            &placed["quantity"],
            &placed["workingType"],
            &placed["actualOrderId"],
        ),
        (
            &"NEW".into(),
            &"STOP_MARKET".into(),
            &"far-stop".into(),
            &"0.01".into(),
            &"MARK_PRICE".into(),
            &"".into(),
        ),
        "{placed}"
    );
    assert_eq!(placed["triggerPrice"], format!("{:.1}", price * 2.0));
    let algo_id = placed["algoId"].clone();

    let by_id = signed(
        &sim,
        Method::GET,
        "/fapi/v1/algoOrder",
        &format!("algoId={algo_id}"),
    )
    .await;
    assert_eq!(by_id, placed);
    let by_client = signed(
        &sim,
        Method::GET,
        "/fapi/v1/algoOrder",
        "clientAlgoId=far-stop",
    )
    .await;
    assert_eq!(by_client["algoId"], algo_id);

    // An algo order waits apart from the matching engine's orders.
    let open = signed(
        &sim,
        Method::GET,
        "/fapi/v1/openAlgoOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["algoId"], algo_id);
    let all_open = signed(&sim, Method::GET, "/fapi/v1/openAlgoOrders", "").await;
    assert_eq!(all_open, open);
    let plain = signed(&sim, Method::GET, "/fapi/v1/openOrders", "symbol=BTCUSDT").await;
    assert_eq!(plain, Value::Array(Vec::new()), "{plain}");

    let cancel = format!("algoId={algo_id}");
    let cancelled = signed(&sim, Method::DELETE, "/fapi/v1/algoOrder", &cancel).await;
    no_differences("cancel_algo_order", &cancelled);
    assert_eq!(
        (
            &cancelled["algoId"],
            &cancelled["clientAlgoId"],
            &cancelled["code"]
        ),
        (&algo_id, &"far-stop".into(), &"200".into()),
        "{cancelled}"
    );
    let (status, again) = signed_raw(&sim, Method::DELETE, "/fapi/v1/algoOrder", &cancel).await;
    assert_eq!(
        (status.as_u16(), &again["code"]),
        (400, &codes::CANCEL_REJECTED.into()),
        "{again}"
    );
    let after = signed(&sim, Method::GET, "/fapi/v1/algoOrder", &cancel).await;
    assert_eq!(after["algoStatus"], "CANCELED", "{after}");
    let open = signed(
        &sim,
        Method::GET,
        "/fapi/v1/openAlgoOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(open, Value::Array(Vec::new()));
    let history = signed(
        &sim,
        Method::GET,
        "/fapi/v1/allAlgoOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(
        (&history[0]["algoId"], &history[0]["algoStatus"]),
        (&algo_id, &"CANCELED".into())
    );
    // An algo id the account never had is `NO_SUCH_ORDER`, as for orders.
    let (_, unknown) =
        signed_raw(&sim, Method::GET, "/fapi/v1/algoOrder", "algoId=999999999").await;
    assert_eq!(unknown["code"], codes::NO_SUCH_ORDER, "{unknown}");
}

#[tokio::test]
async fn a_close_position_algo_take_profit_triggers_and_closes_the_position() {
    let sim = start_sim(72).await;
    wait_for_candles(&sim, 2).await;
    let entry = "symbol=BTCUSDT&side=SELL&type=MARKET&quantity=0.02&newOrderRespType=RESULT";
    let entry = signed(&sim, Method::POST, "/fapi/v1/order", entry).await;
    assert_eq!(entry["status"], "FILLED", "{entry}");
    // A buy take-profit triggers once the price falls to it: a tick under the price, the next
    // candle's low reaches it, or a later one's.
    let query = "algoType=CONDITIONAL&symbol=BTCUSDT&side=BUY&type=TAKE_PROFIT_MARKET\
                 &closePosition=true&clientAlgoId=take-it";
    let placed = place_algo(&sim, query, |last| last - TICK).await;
    assert_eq!(
        (
            &placed["closePosition"],
            &placed["quantity"],
            &placed["algoStatus"]
        ),
        (&true.into(), &"0".into(), &"NEW".into()),
        "{placed}"
    );
    let algo_id = placed["algoId"].clone();
    let moved = wait_algo_past(&sim, &algo_id, "NEW").await;
    let done = if moved["algoStatus"] == "TRIGGERED" {
        wait_algo_past(&sim, &algo_id, "TRIGGERED").await
    } else {
        moved
    };
    assert_eq!(done["algoStatus"], "FINISHED", "{done}");
    assert_ne!(done["triggerTime"], 0, "{done}");
    assert_eq!(done["actualOrderId"], algo_id.to_string(), "{done}");
    assert_eq!(done["quantity"], "0.02", "the whole position: {done}");
    no_differences("algo_order", &done);
    let order = signed(
        &sim,
        Method::GET,
        "/fapi/v1/order",
        &format!("symbol=BTCUSDT&orderId={algo_id}"),
    )
    .await;
    assert_eq!(
        (
            &order["status"],
            &order["executedQty"],
            &order["clientOrderId"]
        ),
        (&"FILLED".into(), &"0.02".into(), &"take-it".into()),
        "{order}"
    );
    let positions = signed(&sim, Method::GET, "/fapi/v2/positionRisk", "symbol=BTCUSDT").await;
    let amount: f64 = positions[0]["positionAmt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(amount, 0.0, "{positions}");
    let (_, late) = signed_raw(
        &sim,
        Method::DELETE,
        "/fapi/v1/algoOrder",
        &format!("algoId={algo_id}"),
    )
    .await;
    assert_eq!(
        late["code"],
        codes::CANCEL_REJECTED,
        "a triggered algo order no longer cancels: {late}"
    );
}

#[tokio::test]
async fn algo_orders_are_refused_as_binance_refuses_them_and_cancelled_all_at_once() {
    let sim = start_sim(73).await;
    wait_for_candles(&sim, 2).await;
    let price = last_price(&sim).await;
    let far = price * 2.0;
    let base = "symbol=BTCUSDT&side=BUY&quantity=0.01";
    let cases = [
        (
            format!("{base}&type=STOP_MARKET&triggerPrice={far:.1}"),
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        ),
        (
            format!("algoType=VP&{base}&type=STOP_MARKET&triggerPrice={far:.1}"),
            codes::INVALID_PARAMETER,
        ),
        (
            format!("algoType=CONDITIONAL&{base}&type=STOP_MARKET"),
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        ),
        (
            format!("algoType=CONDITIONAL&{base}&type=LIMIT&price=1&triggerPrice={far:.1}"),
            codes::INVALID_ORDER_TYPE,
        ),
        (
            format!(
                "algoType=CONDITIONAL&{base}&type=STOP_MARKET&triggerPrice={:.1}",
                price / 2.0
            ),
            codes::ORDER_WOULD_IMMEDIATELY_TRIGGER,
        ),
        (
            format!(
                "algoType=CONDITIONAL&symbol=BTCUSDT&side=SELL&type=STOP_MARKET\
                 &closePosition=true&quantity=0.01&triggerPrice={:.1}",
                price / 2.0
            ),
            codes::QUANTITY_EXISTS_WITH_CLOSE_POSITION,
        ),
    ];
    for (query, code) in cases {
        let (status, body) = signed_raw(&sim, Method::POST, "/fapi/v1/algoOrder", &query).await;
        assert_eq!(
            (status.as_u16(), &body["code"]),
            (400, &code.into()),
            "{query}: {body}"
        );
    }
    let (_, neither) = signed_raw(&sim, Method::GET, "/fapi/v1/algoOrder", "").await;
    assert_eq!(
        neither["code"],
        codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
        "{neither}"
    );

    for n in 0..3 {
        let query = format!(
            "algoType=CONDITIONAL&{base}&type=TAKE_PROFIT&price={far:.1}&triggerPrice={:.1}\
             &clientAlgoId=tp-{n}",
            price / 2.0
        );
        signed(&sim, Method::POST, "/fapi/v1/algoOrder", &query).await;
    }
    let open = signed(
        &sim,
        Method::GET,
        "/fapi/v1/openAlgoOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(open.as_array().unwrap().len(), 3, "{open}");
    let done = signed(
        &sim,
        Method::DELETE,
        "/fapi/v1/algoOpenOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(done["code"], 200, "{done}");
    let open = signed(
        &sim,
        Method::GET,
        "/fapi/v1/openAlgoOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(open, Value::Array(Vec::new()));
    let history = signed(
        &sim,
        Method::GET,
        "/fapi/v1/allAlgoOrders",
        "symbol=BTCUSDT",
    )
    .await;
    let statuses: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["algoStatus"])
        .collect();
    assert_eq!(statuses, [&Value::from("CANCELED"); 3], "{history}");
}
