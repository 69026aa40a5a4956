//! `keel exchange-sim`: a local server that speaks Binance USDⓈ-M Futures' wire format.
//!
//! It serves the REST endpoints and WebSocket streams the Binance adapter uses, and those a bot
//! written with ccxt or Binance's connector calls at start (account, positions, leverage,
//! tickers, book, klines of every interval, order history), with Binance's paths, parameter
//! names, field names, string decimals, `{code, msg}` errors and HTTP statuses; any other path
//! is a JSON error too. Orders go to the paper matching engine of the key's account over a
//! seeded synthetic market (a random walk, one candle every `candle_ms`). Faults (see
//! [`Faults`]) are injected from a seeded RNG and can be changed at run time with
//! `PUT /admin/faults`.
//!
//! It checks Keel's Binance adapter, so it shares none of the adapter's wire code: its JSON
//! (`wire`, `events`, `market`) and its signature check (`sign`) are its own, written from
//! Binance's documentation; only the paper matching engine is shared.

mod account;
pub mod cli;
mod events;
mod faults;
mod market;
mod rest;
mod sign;
mod wire;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{delete, get, post};
use keel_kernel::exchange::{Interval, SymbolRules, UserEvent};
use keel_kernel::ids::Symbol;
use keel_kernel::market::Candle;
use keel_kernel::money::Amount;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub use faults::Faults;

use keel_exchange::paper::{PaperConfig, PaperEngine};

/// How many stream messages a slow WebSocket client may fall behind before it is disconnected.
pub const STREAM_BUFFER_MAX: usize = 4096;
/// The request-weight limit per minute announced in `exchangeInfo` and enforced.
pub const WEIGHT_LIMIT_1M_DEFAULT: u32 = 2400;
/// The order limit per minute announced in `exchangeInfo` and enforced.
pub const ORDER_LIMIT_1M_DEFAULT: u32 = 1200;
/// Binance's order limit per ten seconds on USDⓈ-M futures.
pub const ORDER_LIMIT_10S_DEFAULT: u32 = 300;
/// A listen key expires this long after its creation or last keep-alive, as on Binance.
pub const LISTEN_KEY_TTL_MS: i64 = 60 * 60 * 1000;
/// The name of the account every key without one of its own trades on.
pub const MAIN_ACCOUNT: &str = "";
/// Exchange order and trade ids of the n-th own account start at `n * ACCOUNT_ID_STRIDE + 1`,
/// so ids stay unique across accounts, as on Binance.
pub const ACCOUNT_ID_STRIDE: i64 = 1_000_000_000_000;
/// The width of the bars the simulator keeps of the market it played, for klines of every
/// interval from a minute up.
pub const BAR_MS: i64 = 60_000;
/// Bars kept per symbol: thirty days of minutes.
pub const BARS_KEPT: usize = 30 * 24 * 60;

/// A key the simulator accepts.
#[derive(Clone)]
pub enum SimKey {
    /// An HMAC key and its secret.
    Hmac {
        /// The secret shared with the client.
        secret: String,
    },
    /// An Ed25519 key, by its public half.
    Ed25519 {
        /// The public key that verifies the client's signatures.
        public: ed25519_dalek::VerifyingKey,
    },
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The shared secret never reaches a log.
            SimKey::Hmac { .. } => f.write_str("SimKey::Hmac(..)"),
            SimKey::Ed25519 { public } => f
                .debug_struct("SimKey::Ed25519")
                .field("public", public)
                .finish(),
        }
    }
}

/// How the simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds the synthetic market and the fault draws.
    pub seed: u64,
    /// Accepted API keys (the `X-MBX-APIKEY` header) and how their signatures verify.
    pub keys: HashMap<String, SimKey>,
    /// The faults in force at start.
    pub faults: Faults,
    /// The width of one synthetic candle, in milliseconds.
    pub candle_ms: u64,
    /// The request-weight limit per minute.
    pub weight_limit_1m: u32,
    /// The order limit per minute.
    pub order_limit_1m: u32,
    /// The order limit per ten seconds.
    pub order_limit_10s: u32,
    /// The paper engine's settings (fees, latency, partial fills, starting balance).
    pub paper: PaperConfig,
    /// Candles to replay instead of the random walk, in file order. Their prices are kept and
    /// their times re-stamped onto the simulator's clock, so orders placed now can fill.
    pub replay: Option<Vec<Candle>>,
    /// API keys (also in `keys`) with an account of their own — balances, positions, orders
    /// and user stream — and its starting balance. Every other key trades on the main account,
    /// which starts with `paper.initial_balance`.
    pub own_accounts: HashMap<String, Amount>,
}

impl SimConfig {
    /// The default API key of a simulator started from the command line.
    pub const DEFAULT_API_KEY: &str = "keel-sim-key";
    /// The default HMAC secret of a simulator started from the command line.
    pub const DEFAULT_API_SECRET: &str = "keel-sim-secret";

    /// A simulator with one HMAC key, no faults, one-second candles.
    pub fn new(seed: u64) -> Self {
        let keys = HashMap::from([(
            Self::DEFAULT_API_KEY.to_owned(),
            SimKey::Hmac {
                secret: Self::DEFAULT_API_SECRET.to_owned(),
            },
        )]);
        Self {
            seed,
            keys,
            faults: Faults::default(),
            candle_ms: 1_000,
            weight_limit_1m: WEIGHT_LIMIT_1M_DEFAULT,
            order_limit_1m: ORDER_LIMIT_1M_DEFAULT,
            order_limit_10s: ORDER_LIMIT_10S_DEFAULT,
            paper: PaperConfig {
                seed,
                ..PaperConfig::default()
            },
            replay: None,
            own_accounts: HashMap::new(),
        }
    }
}

/// The symbols the simulator lists, with Binance-like filters, and their starting prices.
pub fn sim_symbols() -> Vec<(SymbolRules, f64)> {
    let rules = |name: &str, tick: Decimal, step: Decimal, notional: Decimal| SymbolRules {
        symbol: Symbol::new(name).expect("valid symbol"),
        tick_size: tick,
        step_size: step,
        min_qty: step,
        max_qty: Decimal::new(1000, 0),
        market_step_size: step,
        market_min_qty: step,
        market_max_qty: Decimal::new(120, 0),
        min_notional: notional,
    };
    vec![
        (
            rules(
                "BTCUSDT",
                Decimal::new(1, 1),
                Decimal::new(1, 3),
                Decimal::new(100, 0),
            ),
            60_000.0,
        ),
        (
            rules(
                "ETHUSDT",
                Decimal::new(1, 2),
                Decimal::new(1, 3),
                Decimal::new(20, 0),
            ),
            3_000.0,
        ),
    ]
}

struct Window {
    minute: i64,
    weight: u32,
    orders: u32,
    /// The current ten-second window (time / 10 s) and the orders created in it.
    ten_seconds: i64,
    orders_10s: u32,
}

pub(crate) struct Inner {
    config: SimConfig,
    /// The accounts by name: [`MAIN_ACCOUNT`] and each own account's API key.
    accounts: HashMap<String, Mutex<account::Account>>,
    /// The open time of the first candle the market plays: the synthetic history ends here.
    market_start_ms: i64,
    /// Each symbol's first price: where the synthetic history ends.
    anchors: HashMap<Symbol, f64>,
    /// The played market in bars of [`BAR_MS`], oldest first, at most [`BARS_KEPT`] a symbol.
    bars: Mutex<HashMap<Symbol, VecDeque<Candle>>>,
    faults: Mutex<Faults>,
    rng: Mutex<ChaCha8Rng>,
    /// User-stream events, with the name of the account they belong to.
    user_stream: broadcast::Sender<(String, String)>,
    /// Kline events: the symbol, the interval and the event.
    klines: broadcast::Sender<(Symbol, &'static str, String)>,
    /// Live listen keys: their account and expiry.
    listen_keys: Mutex<HashMap<String, (String, i64)>>,
    placements: Mutex<HashMap<String, u32>>,
    /// The API key that last created each client order id.
    placed_by: Mutex<HashMap<String, String>>,
    window: Mutex<Window>,
    interval_name: &'static str,
}

/// The simulator's shared state, handed to every handler.
#[derive(Clone)]
pub struct SimState(pub(crate) Arc<Inner>);

impl SimState {
    fn new(config: SimConfig) -> Self {
        let accounts = accounts(&config);
        let interval_name = Interval::ALL
            .into_iter()
            .find(|i| i.as_ms() == config.candle_ms as i64)
            .unwrap_or(Interval::S1)
            .as_str();
        let candle_ms = config.candle_ms as i64;
        // Candles start on a multiple of their width, as Binance's do.
        let market_start_ms = system_now_ms() + config.faults.clock_skew_ms;
        let market_start_ms = market_start_ms - market_start_ms.rem_euclid(candle_ms);
        let anchors = sim_symbols()
            .into_iter()
            .map(|(rules, walk_price)| {
                let first = config.replay.as_ref().and_then(|candles| {
                    candles
                        .iter()
                        .find(|c| c.symbol == rules.symbol)
                        .map(|c| c.open)
                });
                (rules.symbol, first.unwrap_or(walk_price))
            })
            .collect();
        Self(Arc::new(Inner {
            accounts,
            bars: Mutex::new(HashMap::new()),
            market_start_ms,
            anchors,
            faults: Mutex::new(config.faults.clone()),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_fa17)),
            user_stream: broadcast::channel(STREAM_BUFFER_MAX).0,
            klines: broadcast::channel(STREAM_BUFFER_MAX).0,
            listen_keys: Mutex::new(HashMap::new()),
            placements: Mutex::new(HashMap::new()),
            placed_by: Mutex::new(HashMap::new()),
            window: Mutex::new(Window {
                minute: 0,
                weight: 0,
                orders: 0,
                ten_seconds: 0,
                orders_10s: 0,
            }),
            interval_name,
            config,
        }))
    }

    /// The faults now in force.
    pub fn faults(&self) -> Faults {
        self.0.faults.lock().expect("lock poisoned").clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: Faults) {
        *self.0.faults.lock().expect("lock poisoned") = faults;
    }

    /// How many orders were created under each client order id since start.
    pub fn placements(&self) -> HashMap<String, u32> {
        self.0.placements.lock().expect("lock poisoned").clone()
    }

    /// The API key (`X-MBX-APIKEY`) that created each client order id: which account an order
    /// was placed for.
    pub fn placed_by(&self) -> HashMap<String, String> {
        self.0.placed_by.lock().expect("lock poisoned").clone()
    }

    /// The server's clock: the host's clock plus the injected skew.
    pub(crate) fn now_ms(&self) -> i64 {
        let skew = self.0.faults.lock().expect("lock poisoned").clock_skew_ms;
        system_now_ms() + skew
    }

    /// Draws `true` with probability `rate` from the fault RNG.
    pub(crate) fn draw(&self, rate: f64) -> bool {
        rate > 0.0
            && self
                .0
                .rng
                .lock()
                .expect("lock poisoned")
                .gen_bool(rate.min(1.0))
    }

    /// Adds a played candle to its symbol's bar of [`BAR_MS`].
    fn record_bar(&self, candle: &Candle) {
        let mut bars = self.0.bars.lock().expect("lock poisoned");
        let bars = bars.entry(candle.symbol.clone()).or_default();
        let open_time_ms = candle.open_time_ms - candle.open_time_ms.rem_euclid(BAR_MS);
        match bars.back_mut() {
            Some(bar) if bar.open_time_ms == open_time_ms => {
                bar.high = bar.high.max(candle.high);
                bar.low = bar.low.min(candle.low);
                bar.close = candle.close;
                bar.volume += candle.volume;
                bar.close_time_ms = bar.close_time_ms.max(candle.close_time_ms);
            }
            _ => {
                if bars.len() == BARS_KEPT {
                    bars.pop_front();
                }
                bars.push_back(Candle {
                    open_time_ms,
                    ..candle.clone()
                });
            }
        }
        debug_assert!(bars.len() <= BARS_KEPT, "bars are bounded");
    }

    /// The bars of `symbol` opening at or after `since_ms`, oldest first.
    pub(crate) fn bars_since(&self, symbol: &Symbol, since_ms: i64) -> Vec<Candle> {
        let bars = self.0.bars.lock().expect("lock poisoned");
        let Some(bars) = bars.get(symbol) else {
            return Vec::new();
        };
        let first = bars.partition_point(|b| b.open_time_ms < since_ms);
        bars.range(first..).cloned().collect()
    }

    /// The account an API key trades on.
    pub(crate) fn account_of<'a>(&self, api_key: &'a str) -> &'a str {
        if self.0.config.own_accounts.contains_key(api_key) {
            api_key
        } else {
            MAIN_ACCOUNT
        }
    }

    pub(crate) fn with_engine<R>(&self, name: &str, f: impl FnOnce(&mut PaperEngine) -> R) -> R {
        self.with_account(name, |account| f(&mut account.engine))
    }

    /// Runs `f` on account `name`, then records and streams what its engine emitted.
    pub(crate) fn with_account<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut account::Account) -> R,
    ) -> R {
        let mut account = self
            .0
            .accounts
            .get(name)
            .expect("accounts are fixed at start")
            .lock()
            .expect("lock poisoned");
        let result = f(&mut account);
        let updates = account.drain_and_record();
        let mut traded: Vec<Symbol> = updates
            .iter()
            .filter_map(|u| match &u.event {
                UserEvent::Fill(fill) => Some(fill.symbol.clone()),
                UserEvent::Order(_) => None,
            })
            .collect();
        traded.sort();
        traded.dedup();
        let after = (!traded.is_empty()).then(|| events::AccountState::of(&account, &traded));
        let asset = self.0.config.paper.quote_asset.clone();
        drop(account);
        self.publish(name, updates, &asset, after.as_ref());
        result
    }

    /// Sends engine events on the user-data stream, as Binance does: a fill becomes a
    /// `TRADE_LITE`, an `ACCOUNT_UPDATE` (the balance and position after it) and, merged with
    /// the order update that follows it, one `TRADE` execution of `ORDER_TRADE_UPDATE`.
    fn publish(
        &self,
        name: &str,
        updates: Vec<account::Update>,
        asset: &str,
        after: Option<&events::AccountState>,
    ) {
        let now = self.now_ms();
        // No subscriber is fine: a stream only carries what happens while connected.
        let send = |json: serde_json::Value| {
            let _ = self.0.user_stream.send((name.to_owned(), json.to_string()));
        };
        let mut pending_fill = None;
        for account::Update { event, terms } in updates {
            match event {
                UserEvent::Fill(fill) => pending_fill = Some(fill),
                UserEvent::Order(report) => {
                    let fill = pending_fill
                        .take()
                        .filter(|f| f.client_order_id == report.client_order_id);
                    if let Some(fill) = &fill {
                        send(events::trade_lite(&report, fill, now));
                        if let Some(after) = after {
                            send(events::account_update(
                                after,
                                &fill.symbol,
                                fill.time_ms,
                                now,
                            ));
                        }
                    }
                    send(wire::order_trade_update(
                        &report,
                        &terms,
                        fill.as_ref(),
                        asset,
                        now,
                    ));
                }
            }
        }
    }
}

/// The main account and one per key in `own_accounts`, each with its own engine and ids.
fn accounts(config: &SimConfig) -> HashMap<String, Mutex<account::Account>> {
    let engine = |initial_balance: Amount| {
        let paper = PaperConfig {
            initial_balance,
            ..config.paper.clone()
        };
        PaperEngine::new(paper, sim_symbols().into_iter().map(|(rules, _)| rules))
    };
    let mut own: Vec<(&String, &Amount)> = config.own_accounts.iter().collect();
    own.sort();
    let mut accounts = HashMap::from([(
        MAIN_ACCOUNT.to_owned(),
        Mutex::new(account::Account::new(
            engine(config.paper.initial_balance),
            1,
        )),
    )]);
    for (n, (key, balance)) in (1i64..).zip(own) {
        let first_id = n * ACCOUNT_ID_STRIDE + 1;
        let mut engine = engine(*balance);
        engine.start_ids_at(first_id);
        accounts.insert(
            key.clone(),
            Mutex::new(account::Account::new(engine, first_id)),
        );
    }
    accounts
}

fn system_now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

/// A running simulator.
pub struct SimHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, for tests and the admin API.
    pub state: SimState,
    server: tokio::task::JoinHandle<()>,
    market: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// The REST base URL, such as `http://127.0.0.1:4242`.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The WebSocket base URL, such as `ws://127.0.0.1:4242`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Waits until the server stops (it runs until the process ends or the handle is dropped).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.server).await.context("simulator server task")?;
        Ok(())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.server.abort();
        self.market.abort();
    }
}

fn router(state: SimState) -> Router {
    Router::new()
        .route("/fapi/v1/ping", get(rest::ping))
        .route("/fapi/v1/time", get(rest::time))
        .route("/fapi/v1/exchangeInfo", get(rest::exchange_info))
        .route("/fapi/v1/klines", get(market::klines))
        .route("/fapi/v1/continuousKlines", get(market::continuous_klines))
        .route("/fapi/v1/fundingRate", get(market::funding_rate))
        .route("/fapi/v1/ticker/price", get(market::ticker_price))
        .route("/fapi/v2/ticker/price", get(market::ticker_price))
        .route("/fapi/v1/ticker/24hr", get(market::ticker_24hr))
        .route("/fapi/v1/ticker/bookTicker", get(market::book_ticker))
        .route("/fapi/v1/depth", get(market::depth))
        .route("/fapi/v1/premiumIndex", get(market::premium_index))
        .route(
            "/fapi/v1/order",
            post(rest::place).get(rest::query).delete(rest::cancel),
        )
        .route("/fapi/v1/batchOrders", post(rest::place_batch))
        .route("/fapi/v1/openOrder", get(rest::open_order))
        .route("/fapi/v1/openOrders", get(rest::open_orders))
        .route(
            "/fapi/v1/allOpenOrders",
            delete(rest::cancel_all_open_orders),
        )
        .route("/fapi/v1/allOrders", get(rest::all_orders))
        .route(
            "/fapi/v1/algoOrder",
            post(rest::place_algo)
                .get(rest::query_algo)
                .delete(rest::cancel_algo),
        )
        .route("/fapi/v1/openAlgoOrders", get(rest::open_algo_orders))
        .route("/fapi/v1/allAlgoOrders", get(rest::all_algo_orders))
        .route(
            "/fapi/v1/algoOpenOrders",
            delete(rest::cancel_all_algo_orders),
        )
        .route("/fapi/v2/account", get(rest::account_v2))
        .route("/fapi/v3/account", get(rest::account_v3))
        .route("/fapi/v2/positionRisk", get(rest::position_risk))
        .route("/fapi/v3/positionRisk", get(rest::position_risk_v3))
        .route("/fapi/v2/balance", get(rest::balance))
        .route("/fapi/v3/balance", get(rest::balance_v3))
        .route("/fapi/v1/leverageBracket", get(rest::leverage_bracket))
        .route("/fapi/v1/leverage", post(rest::set_leverage))
        .route("/fapi/v1/marginType", post(rest::set_margin_type))
        .route(
            "/fapi/v1/positionSide/dual",
            get(rest::position_mode).post(rest::set_position_mode),
        )
        .route("/fapi/v1/userTrades", get(rest::user_trades))
        .route("/fapi/v1/income", get(rest::income))
        .route(
            "/fapi/v1/listenKey",
            post(rest::listen_key_create)
                .put(rest::listen_key_keepalive)
                .delete(rest::listen_key_delete),
        )
        .route("/admin/faults", get(rest::faults_get).put(rest::faults_put))
        .route("/admin/placements", get(rest::placements))
        .route("/admin/placed-by", get(rest::placed_by))
        .merge(stream_routes())
        .fallback(rest::unknown_route)
        .method_not_allowed_fallback(rest::unknown_route)
        .with_state(state)
}

/// The stream endpoints: at the root, as Binance long served them, and under its `/public`,
/// `/market` and `/private` entry points.
fn stream_routes() -> Router<SimState> {
    let mut routes = Router::new();
    for prefix in ["", "/public", "/market", "/private"] {
        routes = routes
            .route(&format!("{prefix}/ws"), get(ws::raw))
            .route(&format!("{prefix}/ws/{{*streams}}"), get(ws::raw_path))
            .route(&format!("{prefix}/stream"), get(ws::combined));
    }
    routes
}

/// Starts a simulator on `listener` and its synthetic market.
pub async fn serve(config: SimConfig, listener: TcpListener) -> anyhow::Result<SimHandle> {
    config.faults.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(config.candle_ms >= 10, "candle_ms must be at least 10");
    let addr = listener
        .local_addr()
        .context("reading the simulator's address")?;
    let state = SimState::new(config);
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "exchange simulator stopped");
        }
    });
    let market = tokio::spawn(run_market(state.clone()));
    Ok(SimHandle {
        addr,
        state,
        server,
        market,
    })
}

/// Generates one candle per symbol every `candle_ms`, feeds the engine, and streams klines.
async fn run_market(state: SimState) {
    let candle_ms = state.0.config.candle_ms;
    let mut source = CandleSource::new(&state.0.config);
    let mut open_time_ms = state.0.market_start_ms;
    let mut streams = market::KlineStreams::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(candle_ms));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let close_time_ms = open_time_ms + candle_ms as i64;
        let Some(candles) = source.next((open_time_ms, close_time_ms)) else {
            tracing::info!("candle replay finished; the market stands still");
            return;
        };
        for candle in candles {
            // Every account sees the same market; an engine refuses a candle only when it is
            // malformed, and then every engine refuses it.
            let fed: Result<Vec<()>, _> = state
                .0
                .accounts
                .keys()
                .map(|name| {
                    state.with_account(name, |account| {
                        account.engine.on_candle(&candle)?;
                        account.expire_unfilled_immediate(&candle);
                        account.trigger_conditionals(&candle);
                        Ok::<(), keel_exchange::paper::PaperError>(())
                    })
                })
                .collect();
            if let Err(e) = fed {
                tracing::error!(error = %e, "simulated candle refused");
                continue;
            }
            state.record_bar(&candle);
            for (interval, event) in streams.on_played(&state, &candle) {
                // No subscriber is fine: a stream only carries what happens while connected.
                let _ = state
                    .0
                    .klines
                    .send((candle.symbol.clone(), interval, event.to_string()));
            }
        }
        open_time_ms = close_time_ms;
    }
}

/// Where the simulator's prices come from: a seeded random walk, or a replayed file.
///
/// `keel demo` drives the same walk in process, without the HTTP simulator around it.
pub enum CandleSource {
    /// A seeded random walk over [`sim_symbols`].
    Walk {
        rng: Box<ChaCha8Rng>,
        prices: Vec<(Symbol, f64, u32)>,
    },
    /// Candles read from a file, re-stamped onto the clock.
    Replay {
        candles: std::vec::IntoIter<Candle>,
        pending: Option<Candle>,
    },
}

impl CandleSource {
    /// The source `config` asks for: its replay file, else the walk seeded by `config.seed`.
    pub fn new(config: &SimConfig) -> Self {
        match &config.replay {
            Some(candles) => CandleSource::Replay {
                candles: candles.clone().into_iter(),
                pending: None,
            },
            None => CandleSource::Walk {
                rng: Box::new(ChaCha8Rng::seed_from_u64(config.seed)),
                prices: sim_symbols()
                    .into_iter()
                    .map(|(rules, price)| (rules.symbol, price, rules.tick_size.scale()))
                    .collect(),
            },
        }
    }

    /// The candles of the interval `span`: one per symbol for the walk; for a replay, the next
    /// run of candles sharing an open time, re-stamped to `span`. `None` once a replay ends.
    pub fn next(&mut self, span: (i64, i64)) -> Option<Vec<Candle>> {
        match self {
            CandleSource::Walk { rng, prices } => Some(
                prices
                    .iter_mut()
                    .map(|(symbol, price, decimals)| {
                        next_candle(rng, symbol, price, *decimals, span)
                    })
                    .collect(),
            ),
            CandleSource::Replay { candles, pending } => {
                let first = pending.take().or_else(|| candles.next())?;
                let mut group = vec![first];
                for candle in candles.by_ref() {
                    if candle.open_time_ms != group[0].open_time_ms {
                        *pending = Some(candle);
                        break;
                    }
                    group.push(candle);
                }
                for candle in &mut group {
                    (candle.open_time_ms, candle.close_time_ms) = span;
                }
                Some(group)
            }
        }
    }
}

/// Reads a candle file: one JSON candle per line (`symbol`, `open_time_ms`, `close_time_ms`,
/// `open`, `high`, `low`, `close`, `volume`), oldest first. Blank lines are skipped.
pub fn read_candle_file(text: &str) -> anyhow::Result<Vec<Candle>> {
    let listed: Vec<Symbol> = sim_symbols().into_iter().map(|(r, _)| r.symbol).collect();
    let mut candles: Vec<Candle> = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let candle: Candle = serde_json::from_str(line)
            .with_context(|| format!("candle file line {}", index + 1))?;
        anyhow::ensure!(
            listed.contains(&candle.symbol),
            "candle file line {}: the simulator does not list {}",
            index + 1,
            candle.symbol
        );
        if let Some(last) = candles.last() {
            anyhow::ensure!(
                candle.open_time_ms >= last.open_time_ms,
                "candle file line {}: candles must be oldest first",
                index + 1
            );
        }
        candles.push(candle);
    }
    anyhow::ensure!(!candles.is_empty(), "the candle file has no candles");
    Ok(candles)
}

/// A random-walk candle: the open is the last close, moves are a few basis points, prices are
/// on the symbol's tick.
fn next_candle(
    rng: &mut ChaCha8Rng,
    symbol: &Symbol,
    last: &mut f64,
    decimals: u32,
    (open_time_ms, close_time_ms): (i64, i64),
) -> Candle {
    let scale = 10f64.powi(decimals as i32);
    let on_tick = |p: f64| (p * scale).round() / scale;
    let open = *last;
    let close = on_tick(open * (1.0 + rng.gen_range(-0.002..0.002)));
    let high = on_tick(open.max(close) * (1.0 + rng.gen_range(0.0..0.001)));
    let low = on_tick(open.min(close) * (1.0 - rng.gen_range(0.0..0.001)));
    *last = close;
    Candle {
        symbol: symbol.clone(),
        open_time_ms,
        close_time_ms,
        open,
        high,
        low,
        close,
        volume: rng.gen_range(1.0..100.0),
    }
}
