//! Binance's Algo Order API for conditional orders (`/fapi/v1/algoOrder` and friends), which
//! Binance moved `STOP`, `STOP_MARKET`, `TAKE_PROFIT` and `TAKE_PROFIT_MARKET` orders to and
//! ccxt places them through. An algo order is the simulator's conditional order, marked as
//! placed through this API: it waits for its trigger under its `algoId` (the order id it
//! keeps through the trigger), listed by `openAlgoOrders` rather than `openOrders`, and
//! becomes a market or limit order as any conditional order does.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use keel_exchange::codes;
use keel_kernel::ids::{ClientOrderId, Symbol};
use serde::Serialize;
use serde_json::Value;

use super::{
    ApiError, Gate, Params, Reply, account_name, api_key_of, cancel_all, finish, gate, number, ok,
    optional_symbol, param, place_checked, signed, symbol_param,
};
use crate::SimState;
use crate::account::{Account, ConditionalKind, KeptOrder};
use crate::wire;

/// The most rows `allAlgoOrders` returns, and its default.
const ALL_ALGO_ORDERS_LIMIT_MAX: i64 = 1_000;
const ALL_ALGO_ORDERS_LIMIT_DEFAULT: i64 = 500;

/// `POST /fapi/v1/algoOrder`: a conditional order (`algoType=CONDITIONAL`) with its
/// `triggerPrice` and `clientAlgoId`, checked and placed as `POST /fapi/v1/order` places a
/// conditional order with `stopPrice` and `newClientOrderId`; answered as an algo order.
pub(crate) async fn place_algo(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let gate_spec = Gate {
        is_order: true,
        ..signed(0, &query, &body)
    };
    let reply = match gate(&state, &headers, gate_spec).await {
        Ok(params) => match order_params(&params) {
            Ok(order) => place_checked(&state, &order, api_key_of(&headers), true)
                .await
                .and_then(ok),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

/// The `POST /fapi/v1/order` parameters an algo order's parameters stand for.
fn order_params(params: &Params) -> Result<Params, ApiError> {
    if param(params, "algoType")? != "CONDITIONAL" {
        return Err(ApiError::bad(
            codes::INVALID_PARAMETER,
            "Data sent for parameter 'algoType' is not valid.",
        ));
    }
    let type_name = param(params, "type")?;
    if ConditionalKind::parse(type_name).is_none() {
        // MARKET and LIMIT are not algo orders; TRAILING_STOP_MARKET is not simulated.
        return Err(ApiError::bad(
            codes::INVALID_ORDER_TYPE,
            "Invalid orderType.",
        ));
    }
    param(params, "triggerPrice")?;
    let mut order: Params = params
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "algoType" | "triggerPrice" | "clientAlgoId" | "stopPrice" | "newClientOrderId"
            )
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    order.insert("stopPrice".to_owned(), params["triggerPrice"].clone());
    if let Some(id) = params.get("clientAlgoId") {
        order.insert("newClientOrderId".to_owned(), id.clone());
    }
    Ok(order)
}

/// The algo order named by `algoId`, or else the newest with `clientAlgoId`.
fn find_algo<'a>(account: &'a Account, params: &Params) -> Result<&'a KeptOrder, ApiError> {
    let algo_id = number(params, "algoId")?;
    let client_algo_id = params.get("clientAlgoId");
    if algo_id.is_none() && client_algo_id.is_none() {
        return Err(ApiError::bad(
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            "Param 'clientAlgoId' or 'algoId' must be sent, but both were empty/null!",
        ));
    }
    let found = match algo_id {
        Some(id) => account.orders.get(&id),
        None => {
            let cid = client_algo_id.and_then(|text| ClientOrderId::new(text).ok());
            account
                .orders
                .values()
                .rev()
                .find(|k| cid.as_ref() == Some(&k.report.client_order_id) && k.is_algo())
        }
    };
    found
        .filter(|k| k.is_algo())
        .ok_or_else(|| ApiError::bad(codes::NO_SUCH_ORDER, "Order does not exist."))
}

fn algo_json(account: &Account, kept: &KeptOrder) -> Value {
    let id = kept.report.exchange_order_id.0;
    wire::algo_order(kept, account.was_placed_at_trigger(id))
}

signed_handler!(
    /// `GET /fapi/v1/algoOrder`: an algo order by `algoId` or `clientAlgoId`, in any state.
    query_algo,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let found = state.with_account(account, |a| {
            find_algo(a, params).map(|kept| algo_json(a, kept))
        })?;
        ok(found)
    }
);

/// Binance's answer to `DELETE /fapi/v1/algoOrder`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CancelAlgoAnswer {
    algo_id: i64,
    client_algo_id: String,
    code: &'static str,
    msg: &'static str,
}

signed_handler!(
    /// `DELETE /fapi/v1/algoOrder`: cancels an algo order still waiting for its trigger; one
    /// that triggered or ended is `CANCEL_REJECTED` (its order, once triggered, cancels through
    /// `/fapi/v1/order`).
    cancel_algo,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let now = state.now_ms();
        let answer = state.with_account(account, |a| {
            let kept = find_algo(a, params)?;
            if !kept.is_waiting() {
                return Err(ApiError::bad(codes::CANCEL_REJECTED, "Unknown order sent."));
            }
            let id = kept.report.exchange_order_id.0;
            a.engine.advance_clock(now);
            let report = a
                .cancel(id, now)
                .map_err(|(code, msg)| ApiError::bad(code, msg))?;
            Ok(CancelAlgoAnswer {
                algo_id: id,
                client_algo_id: report.client_order_id.to_string(),
                code: "200",
                msg: "success",
            })
        })?;
        ok(answer)
    }
);

signed_handler!(
    /// `GET /fapi/v1/openAlgoOrders`: the algo orders waiting for their trigger, of `symbol`
    /// or all, oldest first.
    open_algo_orders,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let symbol: Option<Symbol> = optional_symbol(params)?;
        let rows: Vec<Value> = state.with_account(account, |a| {
            a.open_algo_orders(symbol.as_ref())
                .into_iter()
                .map(|kept| algo_json(a, kept))
                .collect()
        });
        ok(rows)
    }
);

signed_handler!(
    /// `GET /fapi/v1/allAlgoOrders`: the symbol's algo orders in every state, from `algoId`
    /// up, else within `startTime`/`endTime`, else the newest `limit`, oldest first.
    all_algo_orders,
    5,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let symbol = symbol_param(params)?;
        let from_id = number(params, "algoId")?;
        let (start, end) = (number(params, "startTime")?, number(params, "endTime")?);
        let limit = number(params, "limit")?.unwrap_or(ALL_ALGO_ORDERS_LIMIT_DEFAULT);
        let limit = usize::try_from(limit.clamp(1, ALL_ALGO_ORDERS_LIMIT_MAX)).expect("positive");
        let rows: Vec<Value> = state.with_account(account, |a| {
            let matching = a.orders.values().filter(|k| {
                k.is_algo()
                    && k.report.symbol == symbol
                    && from_id.is_none_or(|id| k.report.exchange_order_id.0 >= id)
                    && start.is_none_or(|t| k.created_ms >= t)
                    && end.is_none_or(|t| k.created_ms <= t)
            });
            let kept: Vec<&KeptOrder> = if from_id.is_some() || start.is_some() {
                matching.take(limit).collect()
            } else {
                let mut newest: Vec<&KeptOrder> = matching.rev().take(limit).collect();
                newest.reverse();
                newest
            };
            kept.into_iter().map(|k| algo_json(a, k)).collect()
        });
        ok(rows)
    }
);

signed_handler!(
    /// `DELETE /fapi/v1/algoOpenOrders`: cancels every algo order of the symbol still waiting
    /// for its trigger, and answers Binance's acknowledgement.
    cancel_all_algo_orders,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        cancel_all(state, account, params, Account::open_algo_orders)
    }
);
