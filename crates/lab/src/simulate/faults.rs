//! The fault injector: an [`Exchange`] in front of the paper exchange that loses answers,
//! drops requests, fails queries, crashes the host around a submission, and lets a second
//! instance decide while the first waits for the exchange — all drawn from one seeded generator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use keel_kernel::engine::{EngineError, ProfileEngine};
use keel_kernel::exchange::{
    Balance, Exchange, ExchangeError, Fill, Interval, OrderReport, OrderRequest, PlaceOutcome,
    Position, SymbolRules, UserEvent,
};
use keel_kernel::ids::{ClientOrderId, Symbol};
use keel_kernel::market::Candle;
use keel_kernel::store::Store;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use keel_exchange::codes;
use keel_exchange::paper::PaperExchange;

/// Chances of each fault, per opportunity.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    /// A placement executes but its answer is lost (an unknown answer that did execute).
    pub ack_lost: f64,
    /// A placement never reaches the exchange and the caller hears nothing (unknown, not done).
    pub request_dropped: f64,
    /// The exchange refuses to look at a placement, not executing it: in turn a 429 (rate
    /// limited) and a 503 that says so (unavailable).
    pub rate_limited: f64,
    /// A query (order, fills, open orders, positions) fails.
    pub query_failed: f64,
    /// The host dies during a submission (before or after the exchange executes it).
    pub crash_in_submit: f64,
    /// A second instance decides on the same candle while an entry waits for the exchange.
    pub twin_decides: f64,
}

impl FaultRates {
    /// The rates of `keel simulate`.
    pub const DEFAULT: FaultRates = FaultRates {
        ack_lost: 0.06,
        request_dropped: 0.03,
        rate_limited: 0.02,
        query_failed: 0.03,
        crash_in_submit: 0.03,
        twin_decides: 0.3,
    };
}

/// Counts of injected faults by kind (sorted, so the report is stable).
pub type FaultCounts = BTreeMap<&'static str, u64>;

/// The injector's state, shared by the exchange wrapper and the world that drives it.
pub struct Injector {
    rng: Mutex<ChaCha8Rng>,
    rates: FaultRates,
    armed: AtomicBool,
    counts: Mutex<FaultCounts>,
    /// Placements that reached the exchange, by client order id.
    sent: Mutex<BTreeMap<ClientOrderId, u32>>,
    /// Every exit the host tried to place, whether or not it reached the exchange.
    exits_attempted: Mutex<BTreeSet<ClientOrderId>>,
    /// Refusals so far: they alternate between a 429 and a 503.
    refusals: AtomicU32,
    /// The store a crash closes (the host process's pool).
    store: Mutex<Option<Store>>,
    crashed: AtomicBool,
    /// The second instance, and the candle it decides on.
    twin: tokio::sync::Mutex<Option<ProfileEngine>>,
    candle: Mutex<Option<Candle>>,
    in_twin: AtomicBool,
    twin_errors: Mutex<Vec<EngineError>>,
}

impl Injector {
    /// An injector drawing from `rng`, disarmed.
    pub fn new(rng: ChaCha8Rng, rates: FaultRates) -> Self {
        Injector {
            rng: Mutex::new(rng),
            rates,
            armed: AtomicBool::new(false),
            counts: Mutex::new(FaultCounts::new()),
            sent: Mutex::new(BTreeMap::new()),
            exits_attempted: Mutex::new(BTreeSet::new()),
            refusals: AtomicU32::new(0),
            store: Mutex::new(None),
            crashed: AtomicBool::new(false),
            twin: tokio::sync::Mutex::new(None),
            candle: Mutex::new(None),
            in_twin: AtomicBool::new(false),
            twin_errors: Mutex::new(Vec::new()),
        }
    }

    /// Turns fault injection on or off (off while the world converges at the end).
    pub fn arm(&self, armed: bool) {
        self.armed.store(armed, Ordering::SeqCst);
    }

    /// Rolls the generator: true with probability `p`, and counts a fault of `kind` when so.
    /// Always false while disarmed or while the second instance runs.
    pub fn roll(&self, kind: &'static str, p: f64) -> bool {
        if !self.armed.load(Ordering::SeqCst) || self.in_twin.load(Ordering::SeqCst) {
            return false;
        }
        let hit = self.rng.lock().expect("rng lock poisoned").gen_bool(p);
        if hit {
            self.count(kind);
        }
        hit
    }

    /// Counts one injected fault of `kind`.
    pub fn count(&self, kind: &'static str) {
        *self
            .counts
            .lock()
            .expect("counts lock poisoned")
            .entry(kind)
            .or_default() += 1;
    }

    /// The counts so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts.lock().expect("counts lock poisoned").clone()
    }

    /// Placements that reached the exchange, by client order id.
    pub fn sent(&self) -> BTreeMap<ClientOrderId, u32> {
        self.sent.lock().expect("sent lock poisoned").clone()
    }

    /// Every exit the host tried to place, whether or not it reached the exchange.
    pub fn exits_attempted(&self) -> BTreeSet<ClientOrderId> {
        self.exits_attempted
            .lock()
            .expect("exits lock poisoned")
            .clone()
    }

    /// The host's current store, closed by a crash.
    pub fn set_store(&self, store: Store) {
        *self.store.lock().expect("store lock poisoned") = Some(store);
        self.crashed.store(false, Ordering::SeqCst);
    }

    /// True once a crash closed the store: the world must restart the host.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// The second instance, for the next window.
    pub async fn set_twin(&self, twin: Option<ProfileEngine>) {
        *self.twin.lock().await = twin;
    }

    /// The candle the primary is deciding on.
    pub fn set_candle(&self, candle: &Candle) {
        *self.candle.lock().expect("candle lock poisoned") = Some(candle.clone());
    }

    /// Errors the second instance returned (taken).
    pub fn take_twin_errors(&self) -> Vec<EngineError> {
        std::mem::take(&mut *self.twin_errors.lock().expect("errors lock poisoned"))
    }

    /// Recovers the second instance as it starts (with faults off: it is the other host).
    pub async fn recover_twin(&self) -> Result<(), String> {
        let mut twin = self.twin.lock().await;
        let Some(twin) = twin.as_mut() else {
            return Ok(());
        };
        self.in_twin.store(true, Ordering::SeqCst);
        let result = twin.recover().await;
        self.in_twin.store(false, Ordering::SeqCst);
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Reasons of the second instance's refusals at `at_ms`.
    pub async fn twin_refusals_at(&self, at_ms: i64) -> Vec<String> {
        let twin = self.twin.lock().await;
        twin.iter()
            .flat_map(|t| t.refusals())
            .filter(|r| r.at_ms == at_ms)
            .map(|r| r.reason.clone())
            .collect()
    }

    async fn crash(&self) {
        let store = self.store.lock().expect("store lock poisoned").take();
        if let Some(store) = store {
            store.close().await;
        }
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// The second instance decides on the current candle, inside the primary's submission.
    async fn twin_decides(&self) {
        let candle = self.candle.lock().expect("candle lock poisoned").clone();
        let Some(candle) = candle else { return };
        let mut twin = self.twin.lock().await;
        let Some(twin) = twin.as_mut() else { return };
        self.in_twin.store(true, Ordering::SeqCst);
        let result = twin.on_candle(&candle).await;
        self.in_twin.store(false, Ordering::SeqCst);
        if let Err(error) = result {
            self.twin_errors
                .lock()
                .expect("errors lock poisoned")
                .push(error);
        }
    }
}

/// The paper exchange behind the injector.
pub struct FaultyExchange {
    paper: Arc<PaperExchange>,
    injector: Arc<Injector>,
}

impl FaultyExchange {
    /// Faults from `injector` in front of `paper`.
    pub fn new(paper: Arc<PaperExchange>, injector: Arc<Injector>) -> Self {
        FaultyExchange { paper, injector }
    }

    fn query_fault(&self, what: &str) -> Result<(), ExchangeError> {
        if self
            .injector
            .roll("query_failed", self.injector.rates.query_failed)
        {
            return Err(ExchangeError::Unknown {
                reason: format!("simulated: {what} timed out"),
            });
        }
        Ok(())
    }

    async fn forward(&self, request: &OrderRequest) -> PlaceOutcome {
        *self
            .injector
            .sent
            .lock()
            .expect("sent lock poisoned")
            .entry(request.client_order_id.clone())
            .or_default() += 1;
        self.paper.place(request).await
    }
}

fn unknown(reason: &str) -> PlaceOutcome {
    PlaceOutcome::Unknown {
        reason: format!("simulated: {reason}"),
    }
}

#[async_trait]
impl Exchange for FaultyExchange {
    fn name(&self) -> &str {
        "simulated"
    }

    async fn symbol_rules(&self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        self.paper.symbol_rules(symbol).await
    }

    async fn place(&self, request: &OrderRequest) -> PlaceOutcome {
        let injector = &self.injector;
        let rates = injector.rates;
        if request.reduce_only {
            injector
                .exits_attempted
                .lock()
                .expect("exits lock poisoned")
                .insert(request.client_order_id.clone());
        }
        if !request.reduce_only && injector.roll("twin_decides", rates.twin_decides) {
            injector.twin_decides().await;
        }
        if injector.roll("crash_before_send", rates.crash_in_submit / 2.0) {
            injector.crash().await;
            return unknown("host died before the request left");
        }
        if injector.roll("request_dropped", rates.request_dropped) {
            return unknown("request lost on the way");
        }
        if injector.roll("rate_limited", rates.rate_limited) {
            // Alternating rather than drawn, so the generator's sequence stays what it was.
            if injector
                .refusals
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(2)
            {
                return PlaceOutcome::RateLimited {
                    retry_after_ms: 1_000,
                };
            }
            return PlaceOutcome::Unavailable {
                code: codes::DISCONNECTED,
                msg: "simulated: Internal error; unable to process your request. Please try again."
                    .to_owned(),
            };
        }
        let outcome = self.forward(request).await;
        if injector.roll("crash_after_send", rates.crash_in_submit / 2.0) {
            // The exchange executed it; the host dies before it commits the answer.
            injector.crash().await;
            return outcome;
        }
        if injector.roll("ack_lost", rates.ack_lost) {
            return unknown("answer lost after the exchange executed it");
        }
        outcome
    }

    async fn cancel(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<OrderReport, ExchangeError> {
        let result = self.paper.cancel(symbol, id).await;
        if self.injector.roll("ack_lost", self.injector.rates.ack_lost) {
            return Err(ExchangeError::Unknown {
                reason: "simulated: cancel answer lost".to_owned(),
            });
        }
        result
    }

    async fn order(
        &self,
        symbol: &Symbol,
        id: &ClientOrderId,
    ) -> Result<Option<OrderReport>, ExchangeError> {
        self.query_fault("order query")?;
        self.paper.order(symbol, id).await
    }

    async fn open_orders(
        &self,
        symbol: Option<&Symbol>,
    ) -> Result<Vec<OrderReport>, ExchangeError> {
        self.query_fault("open orders")?;
        self.paper.open_orders(symbol).await
    }

    async fn fills(&self, symbol: &Symbol, id: &ClientOrderId) -> Result<Vec<Fill>, ExchangeError> {
        self.query_fault("fills")?;
        self.paper.fills(symbol, id).await
    }

    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        self.query_fault("positions")?;
        self.paper.positions().await
    }

    async fn balances(&self) -> Result<Vec<Balance>, ExchangeError> {
        self.paper.balances().await
    }

    async fn user_events(&self) -> Result<mpsc::Receiver<UserEvent>, ExchangeError> {
        self.paper.user_events().await
    }

    async fn recent_candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
        limit: usize,
    ) -> Result<Vec<Candle>, ExchangeError> {
        self.paper.recent_candles(symbol, interval, limit).await
    }

    async fn candles(
        &self,
        symbol: &Symbol,
        interval: Interval,
    ) -> Result<mpsc::Receiver<Candle>, ExchangeError> {
        self.paper.candles(symbol, interval).await
    }
}
