//! The Binance USDⓈ-M Futures adapter: REST over reqwest, streams over tokio-tungstenite.
//!
//! What it guarantees on top of the wire:
//! - every request is signed (HMAC-SHA256 or Ed25519) with `timestamp` and `recvWindow`, the
//!   clock offset to the server is kept fresh, and an [`codes::INVALID_TIMESTAMP`] answer
//!   resyncs it and retries once;
//! - an order whose answer is lost, late, a 5xx, [`codes::UNEXPECTED_RESP`] or
//!   [`codes::TIMEOUT`] becomes [`PlaceOutcome::Unknown`] only after a query by client order id
//!   failed to settle it; [`codes::DUPLICATED_CLIENT_TRAN_ID`] (a client order id in use) is
//!   settled by the same query;
//! - 503 answers Binance documents as certain failures are retried with backoff;
//! - the `X-MBX-USED-WEIGHT-1M` / `X-MBX-ORDER-COUNT-1M` headers throttle requests before the
//!   exchange has to answer 429; after a 429/418 nothing is sent until `Retry-After` has passed;
//! - `exchangeInfo` filters are applied before an order leaves;
//! - streams reconnect with backoff and re-fetch missed updates and fills over REST, and the
//!   [`UpdateFilter`] keeps the result monotonic and free of duplicate trades.

pub mod sign;
mod stream;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use keel_kernel::exchange::{
    Balance, Exchange, ExchangeError, Fill, Interval, OrderReport, OrderRequest, OrderType,
    PlaceOutcome, Position, SymbolRules, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::Candle;
use keel_kernel::money::{Amount, Price};
use reqwest::Method;
use tokio::sync::mpsc;

use crate::codes;

pub use sign::Signer;
use wire::{WireBalance, WireError, WireOrder, WirePosition, WireTrade};

/// Every REST call gives up after this long (the answer is then unknown).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The `recvWindow` sent with signed requests.
pub const RECV_WINDOW_MS: u64 = 5_000;
/// The server-time offset is re-measured when older than this.
pub const TIME_SYNC_INTERVAL_MS: i64 = 60_000;
/// How many times a certain failure (a documented 503) is retried.
pub const CERTAIN_FAILURE_RETRIES_MAX: u32 = 3;
/// The first backoff after a certain failure; it doubles each retry.
pub const RETRY_BACKOFF_BASE_MS: u64 = 200;
/// How many times a read is retried after a rate-limit answer.
pub const RATE_LIMITED_READ_RETRIES_MAX: u32 = 3;
/// The longest the adapter waits for a rate-limit window on its own before reporting it.
pub const RATE_LIMIT_WAIT_MAX_MS: u64 = 60_000;
/// Requests wait for the next minute once this percentage of a per-minute limit is used.
pub const THROTTLE_PERCENT: u32 = 90;
/// The `Retry-After` assumed when a 429 carries none.
pub const RETRY_AFTER_DEFAULT_MS: u64 = 1_000;
/// Binance's pattern for client order ids, checked before sending.
pub const CLIENT_ORDER_ID_PATTERN: &str = r"^[\.A-Z\:/a-z0-9_-]{1,36}$";
/// Local refusals (filters, invalid ids) are reported as rejections with this code.
pub const LOCAL_REFUSAL_CODE: i64 = 0;

/// Where and how the adapter connects. Its `Debug` shows the API key only by its last four
/// characters and the signer without its secret.
#[derive(Clone)]
pub struct BinanceConfig {
    /// The REST base URL, such as `https://fapi.binance.com`.
    pub rest_url: String,
    /// The WebSocket base URL, such as `wss://fstream.binance.com` (streams are under `/ws/`).
    pub ws_url: String,
    /// The API key (`X-MBX-APIKEY`).
    pub api_key: String,
    /// How requests are signed.
    pub signer: Signer,
    /// The `recvWindow` of signed requests.
    pub recv_window_ms: u64,
    /// The timeout of every REST call and WebSocket connect.
    pub request_timeout_ms: u64,
    /// How often the user-data stream re-fetches orders and fills over REST even without a
    /// reconnect (covers events the stream lost silently).
    pub resync_interval_ms: u64,
}

impl std::fmt::Debug for BinanceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key_tail: String = {
            let chars: Vec<char> = self.api_key.chars().collect();
            chars[chars.len().saturating_sub(4)..].iter().collect()
        };
        f.debug_struct("BinanceConfig")
            .field("rest_url", &self.rest_url)
            .field("ws_url", &self.ws_url)
            .field("api_key", &format_args!("..{key_tail}"))
            .field("signer", &self.signer)
            .field("recv_window_ms", &self.recv_window_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("resync_interval_ms", &self.resync_interval_ms)
            .finish()
    }
}

impl BinanceConfig {
    /// Binance's USDⓈ-M Futures testnet.
    pub fn testnet(api_key: String, signer: Signer) -> Self {
        Self::at(
            "https://testnet.binancefuture.com",
            "wss://fstream.binancefuture.com",
            api_key,
            signer,
        )
    }

    /// Binance's USDⓈ-M Futures production endpoints.
    pub fn mainnet(api_key: String, signer: Signer) -> Self {
        Self::at(
            "https://fapi.binance.com",
            "wss://fstream.binance.com",
            api_key,
            signer,
        )
    }

    /// Any Binance-compatible server, such as `keel exchange-sim`.
    pub fn at(rest_url: &str, ws_url: &str, api_key: String, signer: Signer) -> Self {
        Self {
            rest_url: rest_url.trim_end_matches('/').to_owned(),
            ws_url: ws_url.trim_end_matches('/').to_owned(),
            api_key,
            signer,
            recv_window_ms: RECV_WINDOW_MS,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            resync_interval_ms: 60_000,
        }
    }
}

/// Why one REST call failed, before it is mapped to the kernel's outcomes.
#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// The exchange answered with `{code, msg}`: a definite answer.
    Api { code: i64, msg: String },
    /// No definite answer: the request may have been executed.
    Unknown(String),
    /// 429 / 418: not executed.
    RateLimited { retry_after_ms: u64 },
    /// A failure Binance documents as certain (not executed), after retries.
    Certain { code: i64, msg: String },
}

impl From<CallError> for ExchangeError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Api { code, msg } | CallError::Certain { code, msg } => {
                ExchangeError::Rejected { code, msg }
            }
            CallError::Unknown(reason) => ExchangeError::Unknown { reason },
            CallError::RateLimited { retry_after_ms } => {
                ExchangeError::RateLimited { retry_after_ms }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Security {
    Public,
    ApiKey,
    Signed,
}

#[derive(Default)]
struct Usage {
    weight_limit_1m: u32,
    order_limit_1m: u32,
    minute: i64,
    used_weight_1m: u32,
    used_orders_1m: u32,
    banned_until_ms: i64,
}

impl Usage {
    /// Until when a request of `weight` must wait at server time `now_ms`: the end of a ban,
    /// or the next minute when the request would pass [`THROTTLE_PERCENT`] of a limit.
    fn wait_until_ms(&self, now_ms: i64, weight: u32, is_order: bool) -> i64 {
        let near = |used: u32, add: u32, limit: u32| {
            limit > 0
                && u64::from(used + add) * 100 > u64::from(limit) * u64::from(THROTTLE_PERCENT)
        };
        let same_minute = self.minute == now_ms / 60_000;
        let full = same_minute
            && (near(self.used_weight_1m, weight, self.weight_limit_1m)
                || (is_order && near(self.used_orders_1m, 1, self.order_limit_1m)));
        let window_end = if full {
            (now_ms / 60_000 + 1) * 60_000
        } else {
            0
        };
        self.banned_until_ms.max(window_end)
    }
}

pub(crate) struct Client {
    http: reqwest::Client,
    config: BinanceConfig,
    offset_ms: AtomicI64,
    synced_at_ms: AtomicI64,
    rules: Mutex<HashMap<Symbol, SymbolRules>>,
    usage: Mutex<Usage>,
    /// Symbols this adapter placed orders on: the user stream re-fetches their fills.
    traded: Mutex<HashSet<Symbol>>,
}

/// The Binance USDⓈ-M Futures exchange.
#[derive(Clone)]
pub struct BinanceExchange {
    client: Arc<Client>,
}

fn local_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

/// True when `text` matches [`CLIENT_ORDER_ID_PATTERN`].
pub fn is_valid_client_order_id(text: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b".:/_-".contains(&b);
    (1..=36).contains(&text.len()) && text.bytes().all(allowed)
}

impl BinanceExchange {
    /// Connects: measures the server-time offset and loads `exchangeInfo`.
    pub async fn connect(config: BinanceConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .context("building the HTTP client")?;
        let client = Arc::new(Client {
            http,
            config,
            offset_ms: AtomicI64::new(0),
            synced_at_ms: AtomicI64::new(i64::MIN / 2),
            rules: Mutex::new(HashMap::new()),
            usage: Mutex::new(Usage::default()),
            traded: Mutex::new(HashSet::new()),
        });
        client
            .sync_time()
            .await
            .map_err(|e| anyhow::anyhow!("measuring the server time: {e:?}"))?;
        client
            .load_exchange_info()
            .await
            .map_err(|e| anyhow::anyhow!("loading exchangeInfo: {e:?}"))?;
        Ok(Self { client })
    }

    /// The measured offset of the server's clock to ours, in milliseconds.
    pub fn server_offset_ms(&self) -> i64 {
        self.client.offset_ms.load(Ordering::Relaxed)
    }
}

impl Client {
    fn now_ms(&self) -> i64 {
        local_now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    async fn sync_time(&self) -> Result<(), CallError> {
        let before = local_now_ms();
        let body = self
            .send_once(Method::GET, "/fapi/v1/time", &[], Security::Public, 1)
            .await?;
        let after = local_now_ms();
        let time: wire::ServerTime = parse_json(&body)?;
        // The server read its clock about halfway through the round trip.
        let offset = time.server_time - (before + (after - before) / 2);
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.synced_at_ms.store(after, Ordering::Relaxed);
        Ok(())
    }

    async fn load_exchange_info(&self) -> Result<(), CallError> {
        let body = self
            .request(
                Method::GET,
                "/fapi/v1/exchangeInfo",
                &[],
                Security::Public,
                1,
            )
            .await?;
        let info: serde_json::Value = parse_json(&body)?;
        let mut rules = HashMap::new();
        for symbol in info["symbols"].as_array().into_iter().flatten() {
            // Symbols with filters Keel does not know are skipped, not fatal.
            if let Ok(parsed) = wire::parse_symbol_rules(symbol) {
                rules.insert(parsed.symbol.clone(), parsed);
            }
        }
        let mut usage = self.usage.lock().expect("lock poisoned");
        for limit in info["rateLimits"].as_array().into_iter().flatten() {
            let per_minute = limit["interval"] == "MINUTE" && limit["intervalNum"] == 1;
            let value = limit["limit"].as_u64().and_then(|l| u32::try_from(l).ok());
            match (limit["rateLimitType"].as_str(), per_minute, value) {
                (Some("REQUEST_WEIGHT"), true, Some(v)) => usage.weight_limit_1m = v,
                (Some("ORDERS"), true, Some(v)) => usage.order_limit_1m = v,
                _ => {}
            }
        }
        *self.rules.lock().expect("lock poisoned") = rules;
        Ok(())
    }

    /// One request with the retry policy: [`codes::INVALID_TIMESTAMP`] resyncs the clock and
    /// retries once; certain
    /// failures are retried with backoff; reads wait out rate limits a few times.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        security: Security,
        weight: u32,
    ) -> Result<String, CallError> {
        let mut resynced = false;
        let mut certain_retries = 0;
        let mut rate_retries = 0;
        let is_order = method == Method::POST && path == "/fapi/v1/order";
        loop {
            if security == Security::Signed && self.time_is_stale() {
                // Best effort: a failed resync leaves the old offset in use.
                let _ = self.sync_time().await;
            }
            match self
                .send_once(method.clone(), path, params, security, weight)
                .await
            {
                Err(CallError::Api {
                    code: codes::INVALID_TIMESTAMP,
                    ..
                }) if !resynced => {
                    resynced = true;
                    self.sync_time().await?;
                }
                Err(CallError::Certain { .. }) if certain_retries < CERTAIN_FAILURE_RETRIES_MAX => {
                    let backoff = RETRY_BACKOFF_BASE_MS << certain_retries;
                    certain_retries += 1;
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                Err(CallError::RateLimited { .. })
                    if !is_order && rate_retries < RATE_LIMITED_READ_RETRIES_MAX =>
                {
                    // The next attempt waits in `throttle` until the ban is over.
                    rate_retries += 1;
                }
                other => return other,
            }
        }
    }

    fn time_is_stale(&self) -> bool {
        local_now_ms() - self.synced_at_ms.load(Ordering::Relaxed) > TIME_SYNC_INTERVAL_MS
    }

    /// Waits while a ban is in force or a per-minute limit is nearly used up. Reports the
    /// rate limit instead when the wait would be longer than [`RATE_LIMIT_WAIT_MAX_MS`].
    async fn throttle(&self, weight: u32, is_order: bool) -> Result<(), CallError> {
        let now = self.now_ms();
        let wait_until = self
            .usage
            .lock()
            .expect("lock poisoned")
            .wait_until_ms(now, weight, is_order);
        if wait_until <= now {
            return Ok(());
        }
        let wait_ms = u64::try_from(wait_until - now).unwrap_or(0);
        if wait_ms > RATE_LIMIT_WAIT_MAX_MS {
            return Err(CallError::RateLimited {
                retry_after_ms: wait_ms,
            });
        }
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        Ok(())
    }

    fn note_usage(&self, headers: &reqwest::header::HeaderMap) {
        let read = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        };
        let mut usage = self.usage.lock().expect("lock poisoned");
        usage.minute = self.now_ms() / 60_000;
        if let Some(weight) = read("X-MBX-USED-WEIGHT-1M") {
            usage.used_weight_1m = weight;
        }
        if let Some(orders) = read("X-MBX-ORDER-COUNT-1M") {
            usage.used_orders_1m = orders;
        }
    }

    fn query_string(&self, params: &[(&str, String)], security: Security) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in params {
            query.append_pair(key, value);
        }
        if security != Security::Signed {
            return query.finish();
        }
        query.append_pair("recvWindow", &self.config.recv_window_ms.to_string());
        query.append_pair("timestamp", &self.now_ms().to_string());
        let unsigned = query.finish();
        let signature = self.config.signer.sign(&unsigned);
        let mut signed = url::form_urlencoded::Serializer::new(unsigned);
        signed.append_pair("signature", &signature);
        signed.finish()
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        security: Security,
        weight: u32,
    ) -> Result<String, CallError> {
        let is_order = method == Method::POST && path == "/fapi/v1/order";
        self.throttle(weight, is_order).await?;
        let query = self.query_string(params, security);
        let url = if query.is_empty() {
            format!("{}{path}", self.config.rest_url)
        } else {
            format!("{}{path}?{query}", self.config.rest_url)
        };
        let mut builder = self.http.request(method, url);
        if security != Security::Public {
            builder = builder.header("X-MBX-APIKEY", &self.config.api_key);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            // Nothing reached the server: a certain failure.
            Err(e) if e.is_connect() => {
                return Err(CallError::Certain {
                    code: LOCAL_REFUSAL_CODE,
                    msg: format!("connecting: {e}"),
                });
            }
            Err(e) => return Err(CallError::Unknown(format!("{path}: {e}"))),
        };
        self.note_usage(response.headers());
        let status = response.status();
        let retry_after_ms = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(RETRY_AFTER_DEFAULT_MS, |s| s * 1000);
        let body = response
            .text()
            .await
            .map_err(|e| CallError::Unknown(format!("{path}: reading the answer: {e}")))?;
        self.classify(status, retry_after_ms, body)
    }

    fn classify(
        &self,
        status: reqwest::StatusCode,
        retry_after_ms: u64,
        body: String,
    ) -> Result<String, CallError> {
        if status.is_success() {
            return Ok(body);
        }
        if status.as_u16() == 429 || status.as_u16() == 418 {
            let mut usage = self.usage.lock().expect("lock poisoned");
            usage.banned_until_ms =
                self.now_ms() + i64::try_from(retry_after_ms).unwrap_or(i64::MAX / 2);
            return Err(CallError::RateLimited { retry_after_ms });
        }
        let error: Option<WireError> = serde_json::from_str(&body).ok();
        if status.is_server_error() {
            return Err(match error {
                Some(e) if is_certain_failure(status, &e.msg) => CallError::Certain {
                    code: e.code,
                    msg: e.msg,
                },
                Some(e) => CallError::Unknown(format!("HTTP {status}: {} {}", e.code, e.msg)),
                None => CallError::Unknown(format!("HTTP {status}")),
            });
        }
        match error {
            // Binance's "execution status unknown" codes, whatever the HTTP status.
            Some(e) if e.code == codes::UNEXPECTED_RESP || e.code == codes::TIMEOUT => {
                Err(CallError::Unknown(format!("{} {}", e.code, e.msg)))
            }
            Some(e) => Err(CallError::Api {
                code: e.code,
                msg: e.msg,
            }),
            None => Err(CallError::Unknown(format!(
                "HTTP {status} with an unreadable body"
            ))),
        }
    }

    fn rules_of(&self, symbol: &Symbol) -> Option<SymbolRules> {
        self.rules
            .lock()
            .expect("lock poisoned")
            .get(symbol)
            .cloned()
    }

    async fn query_order(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, CallError> {
        let params = [
            ("symbol", symbol.to_string()),
            ("origClientOrderId", id.to_string()),
        ];
        match self
            .request(Method::GET, "/fapi/v1/order", &params, Security::Signed, 1)
            .await
        {
            Ok(body) => Ok(Some(parse_order(&body)?)),
            Err(CallError::Api {
                code: codes::NO_SUCH_ORDER,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn trades(
        &self,
        symbol: &Symbol,
        extra: (&str, String),
    ) -> Result<Vec<WireTrade>, CallError> {
        let params = [
            ("symbol", symbol.to_string()),
            extra,
            ("limit", "1000".to_owned()),
        ];
        let body = self
            .request(
                Method::GET,
                "/fapi/v1/userTrades",
                &params,
                Security::Signed,
                5,
            )
            .await?;
        parse_json(&body)
    }

    pub(crate) async fn open_orders(
        &self,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<OrderReport>, CallError> {
        let params: Vec<(&str, String)> = symbol
            .map(|s| ("symbol", s.to_string()))
            .into_iter()
            .collect();
        let weight = if symbol.is_some() { 1 } else { 40 };
        let body = self
            .request(
                Method::GET,
                "/fapi/v1/openOrders",
                &params,
                Security::Signed,
                weight,
            )
            .await?;
        let orders: Vec<WireOrder> = parse_json(&body)?;
        orders
            .iter()
            .map(|o| {
                o.to_report()
                    .map_err(|e| CallError::Unknown(format!("malformed order: {e:#}")))
            })
            .collect()
    }

    async fn order_fills(&self, report: &OrderReport) -> Result<Vec<Fill>, CallError> {
        let trades = self
            .trades(
                &report.symbol,
                ("orderId", report.exchange_order_id.0.to_string()),
            )
            .await?;
        trades
            .iter()
            .map(|t| t.to_fill(report.client_order_id.clone()))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| CallError::Unknown(format!("malformed trade: {e:#}")))
    }

    /// Settles an order whose placement answer was unknown or a duplicate: the query by client
    /// order id is the truth.
    async fn settle(&self, request: &OrderRequest, reason: String) -> PlaceOutcome {
        match self
            .query_order(&request.symbol, &request.client_order_id)
            .await
        {
            Ok(Some(report)) => self.outcome_of(report).await,
            Ok(None) => PlaceOutcome::Unknown {
                reason: format!("{reason}; the order was not found by its client order id yet"),
            },
            Err(e) => PlaceOutcome::Unknown {
                reason: format!("{reason}; the query by client order id failed too: {e:?}"),
            },
        }
    }

    async fn outcome_of(&self, report: OrderReport) -> PlaceOutcome {
        let fills = if report.executed_qty.is_zero() {
            Vec::new()
        } else {
            // Best effort: the fills also arrive on the user-data stream.
            self.order_fills(&report).await.unwrap_or_default()
        };
        PlaceOutcome::from_report(report, fills)
    }
}

/// Binance documents these 503 answers as failures: the request was not executed.
fn is_certain_failure(status: reqwest::StatusCode, msg: &str) -> bool {
    status.as_u16() == 503
        && (msg.contains("Service Unavailable")
            || msg.contains("Internal error; unable to process your request"))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, CallError> {
    serde_json::from_str(body).map_err(|e| CallError::Unknown(format!("unreadable answer: {e}")))
}

fn parse_order(body: &str) -> Result<OrderReport, CallError> {
    let order: WireOrder = parse_json(body)?;
    order
        .to_report()
        .map_err(|e| CallError::Unknown(format!("malformed order: {e:#}")))
}

/// The request parameters of a new order, in the order Binance documents them.
pub fn order_params(request: &OrderRequest) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("symbol", request.symbol.to_string()),
        ("side", wire::side_str(request.side).to_owned()),
        ("quantity", request.qty.get().normalize().to_string()),
    ];
    match request.order_type {
        OrderType::Market => params.push(("type", "MARKET".to_owned())),
        OrderType::Limit { price } => {
            params.push(("type", "LIMIT".to_owned()));
            params.push(("price", price.get().normalize().to_string()));
            params.push(("timeInForce", "GTC".to_owned()));
        }
    }
    if request.reduce_only {
        params.push(("reduceOnly", "true".to_owned()));
    }
    params.push(("newClientOrderId", request.client_order_id.to_string()));
    params.push(("newOrderRespType", "RESULT".to_owned()));
    params
}

#[async_trait]
impl Exchange for BinanceExchange {
    fn name(&self) -> &str {
        "binance-usdm"
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.client
            .rules_of(symbol)
            .ok_or_else(|| ExchangeError::UnknownSymbol(symbol.clone()))
    }

    async fn place(&self, request: &OrderRequest) -> PlaceOutcome {
        let client = &self.client;
        if !is_valid_client_order_id(request.client_order_id.as_str()) {
            let msg = format!("client order id must match {CLIENT_ORDER_ID_PATTERN}");
            return PlaceOutcome::Rejected {
                code: LOCAL_REFUSAL_CODE,
                msg,
            };
        }
        let Some(rules) = client.rules_of(&request.symbol) else {
            let msg = format!("{} is not listed in exchangeInfo", request.symbol);
            return PlaceOutcome::Rejected {
                code: LOCAL_REFUSAL_CODE,
                msg,
            };
        };
        let prepared = match rules.apply(request, None) {
            Ok(prepared) => prepared,
            Err(violation) => {
                return PlaceOutcome::Rejected {
                    code: LOCAL_REFUSAL_CODE,
                    msg: violation.to_string(),
                };
            }
        };
        client
            .traded
            .lock()
            .expect("lock poisoned")
            .insert(prepared.symbol.clone());
        let params = order_params(&prepared);
        match client
            .request(Method::POST, "/fapi/v1/order", &params, Security::Signed, 0)
            .await
        {
            Ok(body) => match parse_order(&body) {
                Ok(report) => client.outcome_of(report).await,
                Err(CallError::Unknown(reason)) => client.settle(&prepared, reason).await,
                Err(e) => PlaceOutcome::Unknown {
                    reason: format!("{e:?}"),
                },
            },
            Err(CallError::Api {
                code: codes::DUPLICATED_CLIENT_TRAN_ID,
                msg,
            }) => {
                client
                    .settle(&prepared, format!("duplicate client order id ({msg})"))
                    .await
            }
            Err(CallError::Api { code, msg }) => PlaceOutcome::Rejected { code, msg },
            // Not executed, and not refused for a reason of the order's own: the kernel sends
            // it again.
            Err(CallError::Certain { code, msg }) => PlaceOutcome::Unavailable { code, msg },
            Err(CallError::RateLimited { retry_after_ms }) => {
                PlaceOutcome::RateLimited { retry_after_ms }
            }
            Err(CallError::Unknown(reason)) => client.settle(&prepared, reason).await,
        }
    }

    async fn cancel(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, ExchangeError> {
        let params = [
            ("symbol", symbol.to_string()),
            ("origClientOrderId", id.to_string()),
        ];
        let body = self
            .client
            .request(
                Method::DELETE,
                "/fapi/v1/order",
                &params,
                Security::Signed,
                1,
            )
            .await?;
        Ok(parse_order(&body)?)
    }

    async fn order(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, ExchangeError> {
        Ok(self.client.query_order(symbol, id).await?)
    }

    async fn open_orders(
        &self,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<OrderReport>, ExchangeError> {
        Ok(self.client.open_orders(symbol).await?)
    }

    async fn fills(&self, symbol: &Symbol, id: &ClientOrderId) -> Result<Vec<Fill>, ExchangeError> {
        match self.client.query_order(symbol, id).await? {
            Some(report) => Ok(self.client.order_fills(&report).await?),
            None => Ok(Vec::new()),
        }
    }

    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        let body = self
            .client
            .request(
                Method::GET,
                "/fapi/v2/positionRisk",
                &[],
                Security::Signed,
                5,
            )
            .await?;
        let rows: Vec<WirePosition> = parse_json(&body)?;
        let malformed = |e: anyhow::Error| ExchangeError::Unknown {
            reason: format!("malformed position: {e:#}"),
        };
        rows.into_iter()
            .filter(|p| !p.position_amt.is_zero())
            .map(|p| {
                Ok(Position {
                    symbol: Symbol::new(&p.symbol).map_err(|e| malformed(e.into()))?,
                    qty: p.position_amt,
                    entry_price: Price::new(p.entry_price).ok(),
                    unrealized_pnl: Amount::new(p.un_realized_profit)
                        .map_err(|e| malformed(e.into()))?,
                })
            })
            .collect()
    }

    async fn balances(&self) -> Result<Vec<Balance>, ExchangeError> {
        let body = self
            .client
            .request(Method::GET, "/fapi/v2/balance", &[], Security::Signed, 5)
            .await?;
        let rows: Vec<WireBalance> = parse_json(&body)?;
        let malformed = |e: keel_kernel::money::MoneyError| ExchangeError::Unknown {
            reason: format!("malformed balance: {e}"),
        };
        rows.into_iter()
            .map(|b| {
                Ok(Balance {
                    asset: b.asset,
                    wallet_balance: Amount::new(b.balance).map_err(malformed)?,
                    available_balance: Amount::new(b.available_balance).map_err(malformed)?,
                })
            })
            .collect()
    }

    /// `GET /fapi/v1/klines`: the candle still open (closing after the server's now) is left out.
    async fn recent_candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
        limit: usize,
    ) -> Result<Vec<Candle>, ExchangeError> {
        if self.client.rules_of(symbol).is_none() {
            return Err(ExchangeError::UnknownSymbol(symbol.clone()));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One more than asked: the last one is usually still open.
        let asked = (limit + 1).min(wire::KLINES_LIMIT_MAX);
        let params = [
            ("symbol", symbol.as_str().to_owned()),
            ("interval", interval.as_str().to_owned()),
            ("limit", asked.to_string()),
        ];
        let body = self
            .client
            .request(
                Method::GET,
                "/fapi/v1/klines",
                &params,
                Security::Public,
                wire::klines_weight(asked),
            )
            .await?;
        let rows: Vec<serde_json::Value> = parse_json(&body)?;
        let now_ms = self.client.now_ms();
        let mut candles = rows
            .iter()
            .map(|row| wire::parse_kline_row(symbol, row))
            .collect::<anyhow::Result<Vec<Candle>>>()
            .map_err(|e| ExchangeError::Unknown {
                reason: format!("malformed kline: {e:#}"),
            })?;
        candles.retain(|c| c.close_time_ms <= now_ms);
        let skip = candles.len().saturating_sub(limit);
        Ok(candles.split_off(skip))
    }

    async fn user_events(&self) -> Result<mpsc::Receiver<UserEvent>, ExchangeError> {
        Ok(stream::spawn_user_stream(self.client.clone()))
    }

    async fn candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
    ) -> Result<mpsc::Receiver<Candle>, ExchangeError> {
        if self.client.rules_of(symbol).is_none() {
            return Err(ExchangeError::UnknownSymbol(symbol.clone()));
        }
        Ok(stream::spawn_kline_stream(
            self.client.clone(),
            symbol.clone(),
            interval,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used_weight_1m: u32, used_orders_1m: u32) -> Usage {
        Usage {
            weight_limit_1m: 2400,
            order_limit_1m: 1200,
            minute: 1_000,
            used_weight_1m,
            used_orders_1m,
            banned_until_ms: 0,
        }
    }

    #[test]
    fn requests_wait_for_the_next_minute_near_the_weight_limit() {
        let now = 1_000 * 60_000 + 12_345;
        assert_eq!(usage(100, 0).wait_until_ms(now, 1, false), 0);
        assert_eq!(usage(2_160, 0).wait_until_ms(now, 1, false), 1_001 * 60_000);
        // The count belongs to a past minute: it no longer applies.
        assert_eq!(usage(2_160, 0).wait_until_ms(now + 60_000, 1, false), 0);
    }

    #[test]
    fn orders_wait_near_the_order_limit_and_reads_do_not() {
        let now = 1_000 * 60_000;
        assert_eq!(usage(0, 1_080).wait_until_ms(now, 0, true), 1_001 * 60_000);
        assert_eq!(usage(0, 1_080).wait_until_ms(now, 1, false), 0);
    }

    #[test]
    fn a_ban_holds_every_request_until_it_ends() {
        let mut banned = usage(0, 0);
        banned.banned_until_ms = 1_000 * 60_000 + 5_000;
        assert_eq!(
            banned.wait_until_ms(1_000 * 60_000, 1, false),
            1_000 * 60_000 + 5_000
        );
    }

    #[test]
    fn client_order_ids_are_checked_against_binances_pattern() {
        assert!(is_valid_client_order_id("kE7-abc.DEF:/_"));
        assert!(!is_valid_client_order_id(""));
        assert!(!is_valid_client_order_id(&"a".repeat(37)));
        assert!(!is_valid_client_order_id("with space"));
        assert!(!is_valid_client_order_id("emoji✓"));
    }
}
