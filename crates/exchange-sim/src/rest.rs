//! The simulator's REST endpoints, with Binance's security checks and injected faults.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_exchange::codes;
use keel_kernel::exchange::{Fill, OrderReport, OrderRequest, OrderType, PlaceOutcome};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::Side;
use keel_kernel::money::{Price, Qty};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive as _;
use serde::Serialize;
use serde_json::{Value, json};

use rand::Rng;

use super::account::{Conditional, ConditionalKind, OrderTerms, WorkingType};
use super::{Faults, LISTEN_KEY_TTL_MS, SimKey, SimState, wire};

/// The largest `recvWindow` Binance accepts.
const RECV_WINDOW_MAX_MS: i64 = 60_000;
/// The `recvWindow` when the request gives none.
const RECV_WINDOW_DEFAULT_MS: i64 = 5_000;
/// The most rows `userTrades` returns.
const USER_TRADES_LIMIT_MAX: usize = 1_000;

/// A Binance error answer.
pub(crate) struct ApiError {
    status: StatusCode,
    code: i64,
    msg: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: i64, msg: impl Into<String>) -> Self {
        Self {
            status,
            code,
            msg: msg.into(),
            retry_after_s: None,
        }
    }

    pub(crate) fn bad(code: i64, msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, msg)
    }

    fn mandatory(name: &str) -> Self {
        Self::bad(
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
        )
    }

    /// Binance's answer to an order beyond an order-rate limit: 429 with `TOO_MANY_ORDERS`.
    fn too_many_orders(limit: u32, interval: &str, retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::TOO_MANY_ORDERS,
                format!("Too many new orders; current limit is {limit} orders per {interval}."),
            )
        }
    }

    fn rate_limited(retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::TOO_MANY_REQUESTS,
                "Too many requests; please use the websocket for live updates.",
            )
        }
    }
}

pub(crate) type Reply = Result<Response, ApiError>;

pub(crate) fn finish(state: &SimState, reply: Reply) -> Response {
    let mut response = match reply {
        Ok(response) => response,
        Err(e) => {
            let body = Json(json!({"code": e.code, "msg": e.msg}));
            let mut response = (e.status, body).into_response();
            if let Some(seconds) = e.retry_after_s {
                response
                    .headers_mut()
                    .insert("Retry-After", HeaderValue::from(seconds));
            }
            response
        }
    };
    let window = state.0.window.lock().expect("lock poisoned");
    let headers = response.headers_mut();
    headers.insert("X-MBX-USED-WEIGHT-1M", HeaderValue::from(window.weight));
    headers.insert("X-MBX-ORDER-COUNT-1M", HeaderValue::from(window.orders));
    headers.insert(
        "X-MBX-ORDER-COUNT-10S",
        HeaderValue::from(window.orders_10s),
    );
    response
}

pub(crate) fn ok<T: Serialize>(value: T) -> Reply {
    Ok(Json(value).into_response())
}

/// A signed `GET`/`POST` endpoint answering with `body(state, params)`.
macro_rules! signed_handler {
    ($(#[$doc:meta])* $name:ident, $weight:expr, $body:expr) => {
        $(#[$doc])*
        pub(crate) async fn $name(
            State(state): State<SimState>,
            headers: HeaderMap,
            RawQuery(query): RawQuery,
            body: Bytes,
        ) -> Response {
            let reply = match gate(&state, &headers, signed($weight, &query, &body)).await {
                Ok(params) => $body(&state, &account_name(&state, &headers), &params),
                Err(e) => Err(e),
            };
            finish(&state, reply)
        }
    };
}

mod account;
pub(crate) use account::*;
mod algo;
pub(crate) use algo::*;

#[derive(Clone, Copy, PartialEq)]
enum Security {
    None,
    ApiKey,
    Signed,
}

pub(crate) struct Gate<'a> {
    security: Security,
    weight: u32,
    is_order: bool,
    query: Option<&'a str>,
    body: &'a [u8],
}

impl<'a> Gate<'a> {
    /// A public endpoint of this weight, with its query string.
    pub(crate) fn public_query(weight: u32, query: Option<&'a str>) -> Self {
        Gate {
            query,
            ..public(weight)
        }
    }
}

pub(crate) type Params = HashMap<String, String>;

/// Applies latency, injected and real rate limits, injected outages, and Binance's key,
/// signature and timestamp checks, in that order. Returns the request's parameters.
pub(crate) async fn gate(
    state: &SimState,
    headers: &HeaderMap,
    gate: Gate<'_>,
) -> Result<Params, ApiError> {
    let faults = state.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if state.draw(faults.rate_limit_rate) {
        return Err(ApiError::rate_limited(faults.retry_after_s));
    }
    count_weight(state, gate.weight, gate.is_order)?;
    if state.draw(faults.unavailable_rate) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::DISCONNECTED,
            "Internal error; unable to process your request. Please try again.",
        ));
    }
    let query = gate.query.unwrap_or("");
    let body = std::str::from_utf8(gate.body).map_err(|_| {
        ApiError::bad(
            codes::ILLEGAL_CHARS,
            "Illegal characters found in a parameter.",
        )
    })?;
    let params: Params = url::form_urlencoded::parse(query.as_bytes())
        .chain(url::form_urlencoded::parse(body.as_bytes()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if gate.security == Security::None {
        return Ok(params);
    }
    let key = api_key(state, headers)?;
    if gate.security == Security::Signed {
        check_signature(&key, query, body, &params)?;
        check_timestamp(state, &params)?;
    }
    Ok(params)
}

fn count_weight(state: &SimState, weight: u32, is_order: bool) -> Result<(), ApiError> {
    let now = state.now_ms();
    let minute = now / 60_000;
    let mut window = state.0.window.lock().expect("lock poisoned");
    if window.minute != minute {
        window.minute = minute;
        window.weight = 0;
        window.orders = 0;
    }
    let ten_seconds = now / 10_000;
    if window.ten_seconds != ten_seconds {
        window.ten_seconds = ten_seconds;
        window.orders_10s = 0;
    }
    window.weight += weight;
    window.orders += u32::from(is_order);
    window.orders_10s += u32::from(is_order);
    // Whole seconds to the end of the window, rounded up: a client that waits them out is in
    // the next window.
    let until_s =
        |width_ms: i64| u64::try_from((width_ms - now % width_ms + 999) / 1000).unwrap_or(60);
    let config = &state.0.config;
    if window.weight > config.weight_limit_1m {
        return Err(ApiError::rate_limited(until_s(60_000)));
    }
    if window.orders_10s > config.order_limit_10s {
        return Err(ApiError::too_many_orders(
            config.order_limit_10s,
            "TEN_SECONDS",
            until_s(10_000),
        ));
    }
    if window.orders > config.order_limit_1m {
        return Err(ApiError::too_many_orders(
            config.order_limit_1m,
            "MINUTE",
            until_s(60_000),
        ));
    }
    Ok(())
}

fn api_key(state: &SimState, headers: &HeaderMap) -> Result<SimKey, ApiError> {
    let unauthorized = |code, msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, msg);
    let name = headers
        .get("X-MBX-APIKEY")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized(codes::BAD_API_KEY_FMT, "API-key format invalid."))?;
    state.0.config.keys.get(name).cloned().ok_or_else(|| {
        unauthorized(
            codes::REJECTED_MBX_KEY,
            "Invalid API-key, IP, or permissions for action.",
        )
    })
}

/// Binance signs `totalParams`: the query string followed by the body, without `signature`.
fn check_signature(key: &SimKey, query: &str, body: &str, params: &Params) -> Result<(), ApiError> {
    let invalid = || {
        ApiError::bad(
            codes::INVALID_SIGNATURE,
            "Signature for this request is not valid.",
        )
    };
    let signature = params
        .get("signature")
        .ok_or_else(|| ApiError::mandatory("signature"))?;
    let strip = |text: &str| -> String {
        text.split('&')
            .filter(|pair| !pair.starts_with("signature="))
            .collect::<Vec<_>>()
            .join("&")
    };
    let payload = format!("{}{}", strip(query), strip(body));
    let valid = match key {
        SimKey::Hmac { secret } => super::sign::hmac_sha256_valid(secret, &payload, signature),
        SimKey::Ed25519 { public } => super::sign::ed25519_valid(public, &payload, signature),
    };
    if valid { Ok(()) } else { Err(invalid()) }
}

fn check_timestamp(state: &SimState, params: &Params) -> Result<(), ApiError> {
    let timestamp: i64 = params
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ApiError::mandatory("timestamp"))?;
    let recv_window: i64 = match params.get("recvWindow") {
        None => RECV_WINDOW_DEFAULT_MS,
        Some(text) => text
            .parse()
            .ok()
            .filter(|w| (1..=RECV_WINDOW_MAX_MS).contains(w))
            .ok_or_else(|| {
                ApiError::bad(codes::BAD_RECV_WINDOW, "recvWindow must be less than 60000")
            })?,
    };
    let server = state.now_ms();
    if timestamp < server + 1000 && server - timestamp <= recv_window {
        Ok(())
    } else {
        Err(ApiError::bad(
            codes::INVALID_TIMESTAMP,
            "Timestamp for this request is outside of the recvWindow.",
        ))
    }
}

pub(crate) fn param<'a>(params: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::mandatory(name))
}

pub(crate) fn symbol_param(params: &Params) -> Result<Symbol, ApiError> {
    Symbol::new(param(params, "symbol")?)
        .map_err(|_| ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."))
}

pub(crate) fn decimal_param(params: &Params, name: &str) -> Result<Decimal, ApiError> {
    param(params, name)?.parse().map_err(|_| {
        ApiError::bad(
            codes::BAD_PRECISION,
            format!("Parameter '{name}' is malformed."),
        )
    })
}

pub(crate) async fn ping(State(state): State<SimState>) -> Response {
    let reply = gate(&state, &HeaderMap::new(), public(1))
        .await
        .and_then(|_| ok(json!({})));
    finish(&state, reply)
}

fn public(weight: u32) -> Gate<'static> {
    Gate {
        security: Security::None,
        weight,
        is_order: false,
        query: None,
        body: &[],
    }
}

pub(crate) async fn time(State(state): State<SimState>) -> Response {
    let reply = gate(&state, &HeaderMap::new(), public(1))
        .await
        .and_then(|_| ok(json!({"serverTime": state.now_ms()})));
    finish(&state, reply)
}

pub(crate) async fn exchange_info(State(state): State<SimState>) -> Response {
    let reply = gate(&state, &HeaderMap::new(), public(1))
        .await
        .and_then(|_| {
            let symbols: Vec<Value> = super::sim_symbols()
                .iter()
                .map(|(rules, _)| wire::symbol_info(rules))
                .collect();
            ok(json!({
                "timezone": "UTC",
                "serverTime": state.now_ms(),
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                     "limit": state.0.config.weight_limit_1m},
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                     "limit": state.0.config.order_limit_1m},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                     "limit": state.0.config.order_limit_10s},
                ],
                "exchangeFilters": [],
                "assets": [{"asset": "USDT", "marginAvailable": true, "autoAssetExchange": "0"}],
                "symbols": symbols,
            }))
        });
    finish(&state, reply)
}

pub(crate) fn signed<'a>(weight: u32, query: &'a Option<String>, body: &'a Bytes) -> Gate<'a> {
    Gate {
        security: Security::Signed,
        weight,
        is_order: false,
        query: query.as_deref(),
        body,
    }
}

pub(crate) async fn place(
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
        Ok(params) => place_checked(&state, &params, api_key_of(&headers), false)
            .await
            .and_then(ok),
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

/// A post-only (GTX) limit order that would take liquidity now — a buy at or above the best
/// ask, a sell at or below the best bid — is refused as Binance refuses it, unrecorded.
fn post_only_check(state: &SimState, request: &OrderRequest) -> Result<(), ApiError> {
    let OrderType::Limit { price } = request.order_type else {
        return Ok(());
    };
    let price = price.get().to_f64().unwrap_or(f64::NAN);
    let Some((bid, ask)) = super::market::best_bid_ask(state, &request.symbol) else {
        return Err(ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."));
    };
    let takes = match request.side {
        Side::Buy => price >= ask,
        Side::Sell => price <= bid,
    };
    if takes {
        return Err(ApiError::bad(
            codes::GTX_ORDER_REJECT,
            "Due to the order could not be executed as maker, the Post Only order will be \
             rejected. The order will not be recorded in the order history",
        ));
    }
    Ok(())
}

/// Most orders one `batchOrders` request may carry, as on Binance.
const BATCH_ORDERS_MAX: usize = 5;

/// `POST /fapi/v1/batchOrders`: up to five orders, each placed as `POST /fapi/v1/order` would
/// place it (and counted as an order); the answer lists, in the request's order, each order
/// or the `{code, msg}` of its refusal.
pub(crate) async fn place_batch(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let gate_spec = Gate {
        is_order: true,
        ..signed(5, &query, &body)
    };
    let reply = match gate(&state, &headers, gate_spec).await {
        Ok(params) => match batch_orders(&params) {
            Ok(batch) => {
                let key = api_key_of(&headers);
                // The gate counted the request as one order; Binance counts each.
                count_orders(&state, batch.len().saturating_sub(1));
                let mut answers = Vec::with_capacity(batch.len());
                for order in &batch {
                    answers.push(match place_checked(&state, order, key, false).await {
                        Ok(placed) => placed,
                        Err(refused) => json!({"code": refused.code, "msg": refused.msg}),
                    });
                }
                ok(answers)
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

/// The orders of a `batchOrders` parameter: a JSON list of objects whose values are the
/// parameters of `POST /fapi/v1/order` (strings, or numbers and booleans as their text).
fn batch_orders(params: &Params) -> Result<Vec<Params>, ApiError> {
    let invalid = || {
        ApiError::bad(
            codes::INVALID_PARAMETER,
            "Data sent for parameter 'batchOrders' is not valid.",
        )
    };
    let text = param(params, "batchOrders")?;
    let list: Vec<serde_json::Map<String, Value>> =
        serde_json::from_str(text).map_err(|_| invalid())?;
    if list.is_empty() || list.len() > BATCH_ORDERS_MAX {
        return Err(invalid());
    }
    list.into_iter()
        .map(|order| {
            order
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key, text)),
                    Value::Number(n) => Ok((key, n.to_string())),
                    Value::Bool(b) => Ok((key, b.to_string())),
                    _ => Err(invalid()),
                })
                .collect()
        })
        .collect()
}

/// Counts `extra` orders in the order windows beyond the one the gate counted.
fn count_orders(state: &SimState, extra: usize) {
    let extra = u32::try_from(extra).unwrap_or(u32::MAX);
    let mut window = state.0.window.lock().expect("lock poisoned");
    window.orders = window.orders.saturating_add(extra);
    window.orders_10s = window.orders_10s.saturating_add(extra);
}

/// The time in force of an order: `GTC` unless it names another. GTX (post-only) rests like
/// GTC once `post_only_check` let it through; IOC and FOK rest until the next candle has had
/// its chance to fill them, then expire: a candle that reaches the price fills the whole order
/// at once (fills are whole unless partial fills are configured), so FOK fills entirely or
/// expires.
fn time_in_force(params: &Params, mandatory: bool) -> Result<&'static str, ApiError> {
    let text = if mandatory {
        param(params, "timeInForce")?
    } else {
        params.get("timeInForce").map_or("GTC", String::as_str)
    };
    ["GTC", "GTX", "IOC", "FOK"]
        .into_iter()
        .find(|tif| *tif == text)
        .ok_or_else(|| ApiError::bad(codes::INVALID_TIMEINFORCE, "Invalid timeInForce."))
}

fn not_required(name: &str) -> ApiError {
    ApiError::bad(
        codes::PARAM_NOT_REQUIRED,
        format!("Parameter '{name}' sent when not required."),
    )
}

/// A `true`/`false` parameter, `false` when absent; Binance takes either case.
fn flag(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad(
            codes::INVALID_PARAMETER,
            format!("Data sent for parameter '{name}' is not valid."),
        )),
    }
}

/// What a conditional order's parameters say: its condition, and whether it closes the
/// position rather than naming a quantity.
fn condition(params: &Params, kind: ConditionalKind) -> Result<Conditional, ApiError> {
    let stop_price = decimal_param(params, "stopPrice")?;
    if stop_price <= Decimal::ZERO {
        return Err(ApiError::bad(
            codes::STOP_PRICE_LESS_THAN_ZERO,
            "Stop price less than zero.",
        ));
    }
    let working_type = match params.get("workingType") {
        None => WorkingType::ContractPrice,
        Some(text) => WorkingType::parse(text).ok_or_else(|| {
            ApiError::bad(
                codes::INVALID_WORKING_TYPE,
                format!("Invalid parameter working type: {text}"),
            )
        })?,
    };
    let close_position = flag(params, "closePosition")?;
    if close_position {
        if !kind.is_market() {
            return Err(ApiError::bad(
                codes::TARGET_STRATEGY_INVALID,
                format!(
                    "Target strategy invalid for orderType {},closePosition true",
                    kind.as_str()
                ),
            ));
        }
        if params.contains_key("quantity") {
            return Err(ApiError::bad(
                codes::QUANTITY_EXISTS_WITH_CLOSE_POSITION,
                "Quantity must be zero with closePosition equals true",
            ));
        }
        if params.contains_key("reduceOnly") {
            return Err(not_required("reduceOnly"));
        }
    }
    Ok(Conditional {
        kind,
        stop_price,
        working_type,
        close_position,
        price_protect: flag(params, "priceProtect")?,
        algo: false,
        triggered: false,
        triggered_ms: 0,
    })
}

fn price_param(params: &Params) -> Result<Price, ApiError> {
    Price::new(decimal_param(params, "price")?)
        .map_err(|_| ApiError::bad(codes::PRICE_LESS_THAN_ZERO, "Price less than 0."))
}

/// The order a `POST /fapi/v1/order` asks for, and its terms. A `closePosition` order's
/// quantity is a placeholder of one lot: it takes the position's when it triggers.
fn order_request(
    state: &SimState,
    params: &Params,
) -> Result<(OrderRequest, OrderTerms), ApiError> {
    let symbol = symbol_param(params)?;
    let side = wire::parse_side(param(params, "side")?)
        .ok_or_else(|| ApiError::bad(codes::INVALID_SIDE, "Invalid side."))?;
    let type_name = param(params, "type")?;
    let kind = ConditionalKind::parse(type_name);
    let (order_type, terms) = match (type_name, kind) {
        ("MARKET", _) if params.contains_key("price") => return Err(not_required("price")),
        ("MARKET", _) => (OrderType::Market, OrderTerms::default()),
        ("LIMIT", _) => {
            let time_in_force = time_in_force(params, true)?;
            let terms = OrderTerms {
                time_in_force,
                conditional: None,
            };
            (
                OrderType::Limit {
                    price: price_param(params)?,
                },
                terms,
            )
        }
        (_, Some(kind)) => {
            let conditional = condition(params, kind)?;
            let order_type = if kind.is_market() {
                if params.contains_key("price") {
                    return Err(not_required("price"));
                }
                OrderType::Market
            } else {
                OrderType::Limit {
                    price: price_param(params)?,
                }
            };
            let terms = OrderTerms {
                time_in_force: time_in_force(params, false)?,
                conditional: Some(conditional),
            };
            (order_type, terms)
        }
        _ => {
            return Err(ApiError::bad(
                codes::INVALID_ORDER_TYPE,
                "Invalid orderType.",
            ));
        }
    };
    let closes = terms.conditional.as_ref().is_some_and(|c| c.close_position);
    let qty = if closes {
        let lot = super::sim_symbols()
            .into_iter()
            .find(|(rules, _)| rules.symbol == symbol)
            .map(|(rules, _)| rules.market_min_qty)
            .ok_or_else(|| ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."))?;
        Qty::new(lot).expect("a lot is positive")
    } else {
        Qty::new(decimal_param(params, "quantity")?).map_err(|_| {
            ApiError::bad(
                codes::QTY_LESS_THAN_ZERO,
                "Quantity less than or equal to zero.",
            )
        })?
    };
    let client_order_id = match params.get("newClientOrderId") {
        Some(text) => ClientOrderId::new(text).map_err(|_| {
            ApiError::bad(
                codes::ILLEGAL_CHARS,
                "Illegal characters found in parameter 'newClientOrderId'; legal range is \
                 '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.",
            )
        })?,
        None => {
            let n = state.0.placements.lock().expect("lock poisoned").len();
            ClientOrderId::new(&format!("sim-auto-{n}")).expect("valid id")
        }
    };
    let reduce_only = match params.get("reduceOnly").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(not_required("reduceOnly")),
    };
    let request = OrderRequest {
        client_order_id,
        symbol,
        side,
        order_type,
        qty,
        reduce_only,
    };
    Ok((request, terms))
}

/// Binance's filters on a conditional order, which the engine checks only once it triggers:
/// quantity precision and lot size, price and stop price on the tick, and that the stop price
/// has not been reached already (`ORDER_WOULD_IMMEDIATELY_TRIGGER`).
fn check_conditional(
    engine: &keel_exchange::paper::PaperEngine,
    request: &OrderRequest,
    condition: &Conditional,
) -> Result<(), ApiError> {
    let rules = engine
        .rules(&request.symbol)
        .ok_or_else(|| ApiError::bad(codes::BAD_SYMBOL, "Invalid symbol."))?;
    let on_tick = |price: Decimal| rules.round_price(price) == price.normalize();
    let prices_on_tick = request
        .order_type
        .limit_price()
        .is_none_or(|p| on_tick(p.get()))
        && on_tick(condition.stop_price);
    if !prices_on_tick {
        return Err(ApiError::bad(
            codes::PRICE_NOT_INCREASED_BY_TICK_SIZE,
            "Price not increased by tick size.",
        ));
    }
    let last = engine.last_price(&request.symbol);
    if !condition.close_position {
        let qty = request.qty.get();
        if rules.round_qty(qty, request.order_type) != qty.normalize() {
            return Err(ApiError::bad(
                codes::BAD_PRECISION,
                "Precision is over the maximum defined for this asset.",
            ));
        }
        rules.apply(request, last).map_err(|violation| {
            let code = match violation {
                keel_kernel::exchange::RuleViolation::NotionalBelowMin { .. } => {
                    codes::MIN_NOTIONAL
                }
                _ => codes::QTY_LESS_THAN_ZERO,
            };
            ApiError::bad(code, violation.to_string())
        })?;
    }
    let last = last.and_then(|p| p.get().to_f64());
    if last.is_some_and(|p| condition.reached_by(request.side, p, p)) {
        return Err(ApiError::bad(
            codes::ORDER_WOULD_IMMEDIATELY_TRIGGER,
            "Order would immediately trigger.",
        ));
    }
    Ok(())
}

/// Places the order `params` describe (a conditional order through the Algo Order API when
/// `algo`: then it answers as an algo order) and answers it.
pub(crate) async fn place_checked(
    state: &SimState,
    params: &Params,
    api_key: &str,
    algo: bool,
) -> Result<Value, ApiError> {
    let account = state.account_of(api_key);
    let (request, mut terms) = order_request(state, params)?;
    if let Some(condition) = terms.conditional.as_mut() {
        condition.algo = algo;
    }
    if terms.time_in_force == "GTX" && terms.conditional.is_none() {
        post_only_check(state, &request)?;
    }
    let now = state.now_ms();
    let conditional = terms.conditional.is_some();
    let outcome = state.with_account(account, |a| {
        a.engine.advance_clock(now);
        match &terms.conditional {
            Some(condition) => {
                check_conditional(&a.engine, &request, condition)?;
                Ok(a.place_conditional(&request, terms.clone(), now))
            }
            None => Ok(a.place(&request, terms.clone())),
        }
    })?;
    let report = match outcome {
        PlaceOutcome::Rejected { code, msg } => return Err(ApiError::bad(code, msg)),
        other => other
            .report()
            .cloned()
            .expect("the engine answers with a report"),
    };
    *state
        .0
        .placements
        .lock()
        .expect("lock poisoned")
        .entry(report.client_order_id.to_string())
        .or_default() += 1;
    state
        .0
        .placed_by
        .lock()
        .expect("lock poisoned")
        .insert(report.client_order_id.to_string(), api_key.to_owned());
    let faults: Faults = state.faults();
    if state.draw(faults.unknown_rate) {
        // The order exists; the client is told nothing useful.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::TIMEOUT,
            "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        ));
    }
    if state.draw(faults.lost_response_rate) {
        tokio::time::sleep(Duration::from_millis(faults.lost_response_hold_ms)).await;
    }
    if algo {
        let id = report.exchange_order_id.0;
        return Ok(state.with_account(account, |a| {
            a.orders.get(&id).map_or(Value::Null, |kept| {
                wire::algo_order(kept, a.was_placed_at_trigger(id))
            })
        }));
    }
    let wants_result = params.get("newOrderRespType").map(String::as_str) == Some("RESULT");
    if wants_result && !conditional && report.order_type == OrderType::Market {
        let settled = market_result(state, account, &report).await;
        return Ok(state.with_account(account, |a| a.order_json(&settled)));
    }
    Ok(state.with_account(account, |a| a.order_json(&report)))
}

/// How long a `RESULT` answer waits for a market order to fill, in candles: it fills at the
/// open of the next one.
const MARKET_RESULT_WAIT_CANDLES_MAX: u64 = 3;

/// The market order `report` once it filled (Binance's `RESULT` answer), or as it stands
/// when the market did not move within [`MARKET_RESULT_WAIT_CANDLES_MAX`] candles.
async fn market_result(state: &SimState, account: &str, report: &OrderReport) -> OrderReport {
    let candle_ms = state.0.config.candle_ms;
    let poll = Duration::from_millis((candle_ms / 10).clamp(5, 100));
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(candle_ms * MARKET_RESULT_WAIT_CANDLES_MAX);
    let id = report.exchange_order_id.0;
    loop {
        let now = state.with_account(account, |a| a.orders.get(&id).map(|k| k.report.clone()));
        let now = now.unwrap_or_else(|| report.clone());
        if !now.status.is_open() || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(poll).await;
    }
}

/// The order a query, cancel or `openOrder` names by `orderId` or `origClientOrderId`.
pub(crate) fn find_order(
    state: &SimState,
    account: &str,
    params: &Params,
) -> Result<super::account::KeptOrder, ApiError> {
    let symbol = symbol_param(params)?;
    if !params.contains_key("origClientOrderId") && !params.contains_key("orderId") {
        return Err(ApiError::bad(
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
        ));
    }
    let order_id = number(params, "orderId")?;
    let client_order_id = params
        .get("origClientOrderId")
        .and_then(|text| ClientOrderId::new(text).ok());
    let found = state.with_account(account, |a| {
        a.find(&symbol, order_id, client_order_id.as_ref()).cloned()
    });
    found.ok_or_else(|| ApiError::bad(codes::NO_SUCH_ORDER, "Order does not exist."))
}

pub(crate) async fn query(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, signed(1, &query, &body)).await {
        Ok(params) => find_order(&state, &account_name(&state, &headers), &params)
            .and_then(|kept| ok(wire::order(&kept.report, &kept.terms, kept.created_ms))),
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

pub(crate) async fn cancel(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, signed(1, &query, &body)).await {
        Ok(params) => {
            let account = account_name(&state, &headers);
            match find_order(&state, &account, &params) {
                Ok(found) => {
                    let now = state.now_ms();
                    state
                        .with_account(&account, |a| {
                            a.engine.advance_clock(now);
                            let id = found.report.exchange_order_id.0;
                            a.cancel(id, now).map(|r| a.order_json(&r))
                        })
                        .map_err(|(code, msg)| ApiError::bad(code, msg))
                        .and_then(ok)
                }
                Err(e) if e.code == codes::NO_SUCH_ORDER => {
                    Err(ApiError::bad(codes::CANCEL_REJECTED, "Unknown order sent."))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

pub(crate) fn optional_symbol(params: &Params) -> Result<Option<Symbol>, ApiError> {
    params
        .get("symbol")
        .map(|_| symbol_param(params))
        .transpose()
}

pub(crate) async fn open_orders(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, signed(1, &query, &body)).await {
        Ok(params) => optional_symbol(&params).and_then(|symbol| {
            let open = state.with_account(&account_name(&state, &headers), |a| {
                let open = a.open_orders(symbol.as_ref());
                open.into_iter().map(kept_json).collect::<Vec<_>>()
            });
            ok(open)
        }),
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

pub(crate) async fn user_trades(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, signed(5, &query, &body)).await {
        Ok(params) => trades(&state, &account_name(&state, &headers), &params),
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

/// Binance's `userTrades`: from `fromId` up, else from `startTime` up, else the newest
/// `limit` (before `endTime` when sent), always oldest first.
fn trades(state: &SimState, account: &str, params: &Params) -> Reply {
    let symbol = symbol_param(params)?;
    let order_id = number(params, "orderId")?;
    let from_id = number(params, "fromId")?;
    let (start, end) = (number(params, "startTime")?, number(params, "endTime")?);
    let limit = number(params, "limit")?.map_or(500, |l| l.clamp(1, USER_TRADES_LIMIT_MAX as i64));
    let limit = usize::try_from(limit).expect("positive");
    let asset = state.0.config.paper.quote_asset.clone();
    let rows: Vec<Value> = state.with_account(account, |a| {
        let matching = a.trades.values().filter(|f| {
            f.symbol == symbol
                && order_id.is_none_or(|id| f.exchange_order_id.0 == id)
                && from_id.is_none_or(|id| f.trade_id.0 >= id)
                && start.is_none_or(|t| f.time_ms >= t)
                && end.is_none_or(|t| f.time_ms <= t)
        });
        let fills: Vec<&Fill> = if from_id.is_some() || start.is_some() {
            matching.take(limit).collect()
        } else {
            let mut newest: Vec<&Fill> = matching.rev().take(limit).collect();
            newest.reverse();
            newest
        };
        fills.into_iter().map(|f| wire::trade(f, &asset)).collect()
    });
    ok(rows)
}

/// Most income rows one answer holds, and how many it holds by default.
const INCOME_ROWS_MAX: i64 = 1_000;
const INCOME_ROWS_DEFAULT: i64 = 100;
/// The window `income` answers for when neither `startTime` nor `endTime` is sent.
const INCOME_WINDOW_DEFAULT_MS: i64 = 7 * 86_400_000;

signed_handler!(
    /// `GET /fapi/v1/income`: the account's income from its fills, a `COMMISSION` row for every
    /// fee and a `REALIZED_PNL` row for every fill that closed quantity (funding is quoted, never
    /// charged: no `FUNDING_FEE` rows). Filtered by `symbol`, `incomeType` and
    /// `startTime`/`endTime` (neither: the last seven days), oldest first, at most `limit`.
    income,
    30,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let symbol = optional_symbol(params)?;
        let kind = params.get("incomeType").map(String::as_str);
        let limit = number(params, "limit")?
            .map_or(INCOME_ROWS_DEFAULT, |l| l.clamp(1, INCOME_ROWS_MAX));
        let (start, end) = (number(params, "startTime")?, number(params, "endTime")?);
        let start = match (start, end) {
            (None, None) => Some(state.now_ms() - INCOME_WINDOW_DEFAULT_MS),
            (start, _) => start,
        };
        let asset = state.0.config.paper.quote_asset.as_str();
        let rows: Vec<WireIncome> = state.with_account(account, |a| {
            a.trades
                .values()
                .filter(|f| {
                    symbol.as_ref().is_none_or(|s| &f.symbol == s)
                        && start.is_none_or(|t| f.time_ms >= t)
                        && end.is_none_or(|t| f.time_ms <= t)
                })
                .flat_map(|f| {
                    let fee = Decimal::ZERO - f.fee.get();
                    let pnl = f.realized_pnl.get();
                    [
                        ("COMMISSION", fee, 0),
                        ("REALIZED_PNL", pnl, 1),
                    ]
                    .into_iter()
                    .filter(move |(what, amount, _)| *what == "COMMISSION" || !amount.is_zero())
                    .map(move |(what, amount, slot)| WireIncome {
                        symbol: f.symbol.to_string(),
                        income_type: what,
                        income: format!("{amount:.8}"),
                        asset: asset.to_owned(),
                        info: what,
                        time: f.time_ms,
                        tran_id: f.trade_id.0 * 2 + slot,
                        trade_id: f.trade_id.0.to_string(),
                    })
                })
                .filter(|row| kind.is_none_or(|k| row.income_type == k))
                .take(usize::try_from(limit).unwrap_or(100))
                .collect()
        });
        ok(rows)
    }
);

/// One row of Binance's income history.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireIncome {
    symbol: String,
    income_type: &'static str,
    income: String,
    asset: String,
    info: &'static str,
    time: i64,
    tran_id: i64,
    trade_id: String,
}

fn api_key_gate<'a>(query: &'a Option<String>, body: &'a Bytes) -> Gate<'a> {
    Gate {
        security: Security::ApiKey,
        ..signed(1, query, body)
    }
}

pub(crate) async fn listen_key_create(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, api_key_gate(&query, &body)).await {
        Ok(_) => {
            let now = state.now_ms();
            let account = account_name(&state, &headers);
            let mut keys = state.0.listen_keys.lock().expect("lock poisoned");
            keys.retain(|_, (_, expiry)| *expiry > now);
            // Binance hands out the account's live key again rather than a second one.
            let live = keys.iter().find(|(_, (of, _))| *of == account);
            let key = live.map(|(key, _)| key.clone()).unwrap_or_else(|| {
                let n: u64 = state.0.rng.lock().expect("lock poisoned").r#gen();
                format!("{}{n:016x}", crate::ws::LISTEN_KEY_PREFIX)
            });
            keys.insert(key.clone(), (account, now + LISTEN_KEY_TTL_MS));
            ok(json!({"listenKey": key}))
        }
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

pub(crate) async fn listen_key_keepalive(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, api_key_gate(&query, &body)).await {
        Ok(_) => {
            let now = state.now_ms();
            let account = account_name(&state, &headers);
            let mut keys = state.0.listen_keys.lock().expect("lock poisoned");
            let live = keys
                .iter_mut()
                .find(|(_, (of, expiry))| *of == account && *expiry > now);
            match live {
                Some((key, (_, expiry))) => {
                    *expiry = now + LISTEN_KEY_TTL_MS;
                    ok(json!({"listenKey": key}))
                }
                None => Err(ApiError::bad(
                    codes::INVALID_LISTEN_KEY,
                    "This listenKey does not exist.",
                )),
            }
        }
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

pub(crate) async fn listen_key_delete(
    State(state): State<SimState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let reply = match gate(&state, &headers, api_key_gate(&query, &body)).await {
        Ok(_) => {
            let account = account_name(&state, &headers);
            let mut keys = state.0.listen_keys.lock().expect("lock poisoned");
            keys.retain(|_, (of, _)| *of != account);
            ok(json!({}))
        }
        Err(e) => Err(e),
    };
    finish(&state, reply)
}

pub(crate) async fn faults_get(State(state): State<SimState>) -> Json<Faults> {
    Json(state.faults())
}

pub(crate) async fn faults_put(State(state): State<SimState>, body: Bytes) -> Response {
    let parsed = std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(Faults::parse);
    match parsed {
        Ok(faults) => {
            state.set_faults(faults.clone());
            Json(faults).into_response()
        }
        Err(msg) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": codes::ILLEGAL_CHARS, "msg": msg})),
        )
            .into_response(),
    }
}

pub(crate) async fn placements(State(state): State<SimState>) -> Json<HashMap<String, u32>> {
    Json(state.placements())
}

pub(crate) async fn placed_by(State(state): State<SimState>) -> Json<HashMap<String, String>> {
    Json(state.placed_by())
}

/// The request's API key (once the gate accepted it: it is there and known).
pub(crate) fn api_key_of(headers: &HeaderMap) -> &str {
    headers
        .get("X-MBX-APIKEY")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The account the request's API key trades on (the gate checked the key).
pub(crate) fn account_name(state: &SimState, headers: &HeaderMap) -> String {
    state.account_of(api_key_of(headers)).to_owned()
}

/// A kept order as the order endpoints write it.
fn kept_json(kept: &super::account::KeptOrder) -> Value {
    wire::order(&kept.report, &kept.terms, kept.created_ms)
}

signed_handler!(
    /// `GET /fapi/v1/openOrder`: an open order, or `NO_SUCH_ORDER` once it closed.
    open_order,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let found = find_order(state, account, params)?;
        if !found.report.status.is_open() {
            return Err(ApiError::bad(codes::NO_SUCH_ORDER, "Order does not exist."));
        }
        ok(kept_json(&found))
    }
);

/// The most rows `allOrders` returns, and its default.
const ALL_ORDERS_LIMIT_MAX: i64 = 1_000;
const ALL_ORDERS_LIMIT_DEFAULT: i64 = 500;

signed_handler!(
    /// `GET /fapi/v1/positionSide/dual`: one-way mode, the only mode the simulator keeps.
    position_mode,
    30,
    |_: &SimState, _: &str, _: &Params| -> Reply { ok(PositionMode { dual_side_position: false }) }
);

signed_handler!(
    /// `POST /fapi/v1/positionSide/dual`: staying in one-way mode answers Binance's
    /// `NO_NEED_TO_CHANGE_POSITION_SIDE`;
    /// hedge mode is refused as a value the simulator does not accept.
    set_position_mode,
    1,
    |_: &SimState, _: &str, params: &Params| -> Reply {
        match param(params, "dualSidePosition")? {
            "false" => Err(ApiError::bad(codes::NO_NEED_TO_CHANGE_POSITION_SIDE, "No need to change position side.")),
            _ => Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "Data sent for parameter 'dualSidePosition' is not valid.",
            )),
        }
    }
);

/// Binance's answer to `GET /fapi/v1/positionSide/dual`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PositionMode {
    dual_side_position: bool,
}

signed_handler!(
    /// `DELETE /fapi/v1/allOpenOrders`: cancels every open order of the symbol, each reported on
    /// the user-data stream as a cancel of its own would be, and answers Binance's acknowledgement
    /// (not the orders).
    cancel_all_open_orders,
    1,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        cancel_all(state, account, params, super::account::Account::open_orders)
    }
);

/// Cancels every order of the request's symbol that `listed` names on `account`, each as a
/// cancel of its own would be, and answers Binance's acknowledgement (`allOpenOrders`,
/// `algoOpenOrders`).
pub(super) fn cancel_all(
    state: &SimState,
    account: &str,
    params: &Params,
    listed: for<'a> fn(
        &'a super::account::Account,
        Option<&Symbol>,
    ) -> Vec<&'a super::account::KeptOrder>,
) -> Reply {
    let symbol = symbol_param(params)?;
    let now = state.now_ms();
    state
        .with_account(account, |a| {
            a.engine.advance_clock(now);
            let open: Vec<i64> = listed(a, Some(&symbol))
                .iter()
                .map(|k| k.report.exchange_order_id.0)
                .collect();
            open.into_iter()
                .try_for_each(|id| a.cancel(id, now).map(drop))
        })
        .map_err(|(code, msg)| ApiError::bad(code, msg))?;
    ok(CancelAllAnswer {
        code: 200,
        msg: "The operation of cancel all open order is done.",
    })
}

/// Binance's answer to `DELETE /fapi/v1/allOpenOrders`.
#[derive(Serialize)]
struct CancelAllAnswer {
    code: u16,
    msg: &'static str,
}

signed_handler!(
    /// `GET /fapi/v1/allOrders`: from `orderId` up, else within `startTime`/`endTime`, else
    /// the newest `limit`, oldest first.
    all_orders,
    5,
    |state: &SimState, account: &str, params: &Params| -> Reply {
        let symbol = symbol_param(params)?;
        let from_id = number(params, "orderId")?;
        let (start, end) = (number(params, "startTime")?, number(params, "endTime")?);
        let limit = number(params, "limit")?.unwrap_or(ALL_ORDERS_LIMIT_DEFAULT);
        let limit = usize::try_from(limit.clamp(1, ALL_ORDERS_LIMIT_MAX)).expect("positive");
        let rows: Vec<Value> = state.with_account(account, |a| {
            let matching = a.orders.values().filter(|k| {
                k.report.symbol == symbol
                    && from_id.is_none_or(|id| k.report.exchange_order_id.0 >= id)
                    && start.is_none_or(|t| k.created_ms >= t)
                    && end.is_none_or(|t| k.created_ms <= t)
            });
            let kept: Vec<_> = if from_id.is_some() || start.is_some() {
                matching.take(limit).collect()
            } else {
                let mut newest: Vec<_> = matching.rev().take(limit).collect();
                newest.reverse();
                newest
            };
            kept.into_iter().map(kept_json).collect()
        });
        ok(rows)
    }
);

pub(crate) fn number(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::bad(
                    codes::ILLEGAL_CHARS,
                    format!("Illegal characters found in parameter '{name}'."),
                )
            })
        })
        .transpose()
}

/// Any other path or method: Binance's JSON error, never an empty body.
pub(crate) async fn unknown_route(
    State(state): State<SimState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        codes::INVALID_PATH,
        format!("Path {}, Method {} is invalid", uri.path(), method),
    );
    finish(&state, Err(error))
}
