//! The per-profile engine: the path of one decision, the lifecycle handlers that live events,
//! restart recovery and reconciliation share, and the profile's entry blocks.
//!
//! ```text
//! candle ─► strategy ─► risk::validate ─► entry lock + write-ahead (order + reservation): one
//!        commit ─► Exchange::place ─► handlers (status, fills, lifecycle, ledger) ─► release lock
//! ```
//!
//! A [`ProfileEngine`] is driven by one task at a time (`&mut self`): the host's trading loop
//! calls [`ProfileEngine::on_candle`], its monitor loop [`ProfileEngine::on_user_event`], its
//! reconciliation loop [`ProfileEngine::reconcile`]. Backtests drive the same methods from one
//! loop with a virtual clock.

pub mod book;
pub mod clock;
mod handlers;
mod history;
mod prices;
mod reconcile;
mod recovery;
mod unplaced;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::exchange::{Exchange, ExchangeError, OrderRequest, OrderType, SymbolRules};
use crate::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use crate::lifecycle::{EntryRequest, ExitRequest, OrderRecord, WriteAhead};
use crate::lock::{Lease, LockKey, LockKind, OwnerToken};
use crate::market::Candle;
use crate::metrics::Metrics;
use crate::money::Price;
use crate::plant::{Plant, Planted};
use crate::risk::{
    self, EntryBlock, OrderPrice, Refusal, RefusalRule, RiskContext, RiskLimits, ValidIntent,
};
use crate::store::{Store, StoreError, TenantTx};
use crate::strategy::{PluginFault, RawIntent, StrategyRuntime};

pub use book::Book;
pub use clock::{Clock, SystemClock, VirtualClock};
pub use history::CandleHistory;
pub use reconcile::ReconcileReport;
pub use unplaced::{
    PLACEMENT_BACKOFF_MAX_MS, PLACEMENT_BACKOFF_MIN_MS, PLACEMENT_RETRIES_PER_STEP_MAX,
};

use book::{OpenOrdersGauge, entry_side};
use handlers::CapitalBytes;

/// Candles kept for warm-up unless configured otherwise: the longest window of the example
/// strategies with room to spare, and at most what one Binance klines request returns (1500).
pub const WARM_UP_CANDLES_DEFAULT: usize = 500;

/// Tunables of the engine, with safe defaults.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// TTL of an entry lock: a crashed holder blocks its (profile, symbol) no longer than this.
    pub entry_lock_ttl_ms: i64,
    /// How long an order may stay UNKNOWN or PENDING_SUBMIT without the exchange knowing it
    /// before reconciliation declares it never placed. Longer than the exchange's `recvWindow`,
    /// after which a delayed request can no longer be accepted.
    pub unknown_resolve_after_ms: i64,
    /// How long an entry the exchange would not take yet (rate limit, unavailable) is sent again
    /// before it is released as REJECTED; capped at half of `entry_lock_ttl_ms`, since it holds
    /// its entry lock meanwhile. Exits have no such budget: they are sent until the exchange takes or refuses
    /// them.
    pub entry_retry_budget_ms: i64,
    /// Extra capital reserved above the reference price for market entries and short limit
    /// entries, which may fill at a worse price than the one they were sized at.
    pub slippage_reserve_bps: u32,
    /// Extra capital reserved above the price of every entry for the fee its fills are
    /// charged (fees come out of realized PnL when the fill is recorded). At least the
    /// exchange's taker fee: Binance USDⓈ-M charges 5 bps at the base tier.
    pub fee_reserve_bps: u32,
    /// Most intents taken from one strategy call; the rest are refused.
    pub intents_per_call_max: usize,
    /// Most refusals kept in memory for the API and dashboard.
    pub refusals_kept_max: usize,
    /// Recent closed candles the engine keeps (all its symbols together; the engines sharing a
    /// [`CandleHistory`] keep them once) and replays into a strategy instance that starts fresh
    /// (after a restart, a takeover or a hot-swap), so an indicator strategy is not blind.
    /// 0 turns warm-up off.
    pub warm_up_candles_max: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            entry_lock_ttl_ms: 30_000,
            unknown_resolve_after_ms: 60_000,
            entry_retry_budget_ms: 10_000,
            slippage_reserve_bps: 100,
            fee_reserve_bps: 10,
            intents_per_call_max: 16,
            refusals_kept_max: 256,
            warm_up_candles_max: WARM_UP_CANDLES_DEFAULT,
        }
    }
}

/// Why the engine could not finish a step. The step's transaction was rolled back; whatever the
/// exchange already did is found again by the handlers or reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed (database unreachable, constraint, stale fence).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The exchange failed in a way that leaves nothing half-done (a query, not a placement).
    #[error("exchange: {0}")]
    Exchange(#[from] ExchangeError),
}

/// A refused intent, kept for the API and counted by rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefusalRecord {
    /// Kernel time of the refusal.
    pub at_ms: i64,
    /// The rule that refused it.
    pub rule: RefusalRule,
    /// The full reason.
    pub reason: String,
    /// The intent as the strategy sent it.
    pub intent: RawIntent,
}

/// What one step decided, for logs, tests and the deterministic simulation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepOutcome {
    /// Orders sent to the exchange (client order ids).
    pub orders_sent: Vec<ClientOrderId>,
    /// Intents refused by the kernel.
    pub refused: usize,
    /// Set when the strategy faulted during the step.
    pub fault: Option<PluginFault>,
}

/// Host-wide switches every profile engine reads.
#[derive(Debug, Default)]
pub struct HostSwitches {
    /// The operator's kill switch: no new entries anywhere.
    pub kill: AtomicBool,
}

/// Who the profile is and what it may do.
#[derive(Debug, Clone)]
pub struct ProfileSpec {
    /// The profile.
    pub profile: ProfileId,
    /// Its owner: every store access runs in this tenant's scope.
    pub user: UserId,
    /// Its risk rules.
    pub limits: RiskLimits,
}

/// The strategy's last fault, as the engine saw it (a call refused because the instance was
/// already dead is not one: the fault that killed it stays the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrategyFaultRecord {
    /// What went wrong.
    pub fault: PluginFault,
    /// Kernel time of the fault, ms since the epoch.
    pub at_ms: i64,
}

/// Why and since when the profile is quarantined, as stored (`profile_quarantines`).
pub use crate::store::QuarantineRecord;

/// Operator and owner controls of one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProfileControls {
    /// Paused by the owner or an operator.
    pub paused: bool,
    /// The profile's kill switch.
    pub killed: bool,
    /// Reduce-only after drift reconciliation could not repair.
    pub quarantined: bool,
}

/// The info-level account of refused intents: the first refusal is reported with its reason at
/// once, the ones after it counted by rule and reported together at most every
/// [`RefusalLog::EVERY`] of wall time, so a strategy that asks again on every candle fills no
/// log. Each refusal is also logged at debug, and counted in `keel_risk_refusals_total`.
#[derive(Debug, Default)]
struct RefusalLog {
    last_report: Option<std::time::Instant>,
    counted: std::collections::BTreeMap<RefusalRule, u64>,
}

impl RefusalLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    fn count(&mut self, rule: RefusalRule, reason: &str) {
        *self.counted.entry(rule).or_default() += 1;
        let due = self
            .last_report
            .is_none_or(|at| at.elapsed() >= RefusalLog::EVERY);
        if !due {
            return;
        }
        let refused: u64 = self.counted.values().sum();
        let rules = self
            .counted
            .iter()
            .map(|(rule, n)| format!("{rule}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        if self.last_report.is_none() {
            tracing::info!(%rule, %reason, "intent refused (later refusals are counted here every minute, each one logged at debug)");
        } else {
            tracing::info!(refused, %rules, last_reason = %reason, "intents refused in the last minute");
        }
        self.counted.clear();
        self.last_report = Some(std::time::Instant::now());
    }
}

/// One profile's engine.
pub struct ProfileEngine {
    spec: ProfileSpec,
    config: EngineConfig,
    store: Store,
    exchange: Arc<dyn Exchange>,
    strategy: Box<dyn StrategyRuntime>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    switches: Arc<HostSwitches>,
    owner: OwnerToken,
    controls: ProfileControls,
    strategy_faulted: bool,
    /// Set when the engine got a strategy it has not warmed up yet (at start, on a swap).
    strategy_fresh: bool,
    /// The last closed candles, replayed into a fresh strategy.
    history: Arc<CandleHistory>,
    book: Book,
    /// The capital row last recorded by [`ProfileEngine::set_capital`], byte for byte, while
    /// the book still holds it: the same row read again changes neither the book nor the gauges.
    capital_recorded: Option<CapitalBytes>,
    /// The order of the last change after which position and capital were re-read, as it was
    /// applied: a report of it as it stands brings nothing new ([`ProfileEngine::apply_report`]).
    order_applied: Option<OrderRecord>,
    orders_open: OpenOrdersGauge,
    last_price: prices::LastPrices,
    rules: HashMap<Symbol, SymbolRules>,
    entry_leases: HashMap<ClientOrderId, Lease>,
    unknown_since_ms: HashMap<ClientOrderId, i64>,
    /// The requests of orders whose outcome was unknown, while it is.
    unknown_requests: HashMap<ClientOrderId, OrderRequest>,
    /// Orders the exchange would not take yet, sent again after a wait ([`unplaced`]).
    unplaced: BTreeMap<ClientOrderId, unplaced::Unplaced>,
    timers: BTreeSet<i64>,
    minute: (i64, u32),
    day: (i64, Decimal),
    refusals: VecDeque<RefusalRecord>,
    refusal_log: RefusalLog,
    pending_decisions: VecDeque<(Result<Vec<RawIntent>, PluginFault>, u64)>,
    /// The entries of reversals waiting for their exit to close the position, by symbol, with
    /// the sequence of the decision that asked for them (see [`ProfileEngine::defer_reversal`]).
    reversals: HashMap<Symbol, (RawIntent, u64)>,
    plant: Planted,
    /// User events about orders this profile did not place, heard and ignored since it started.
    foreign_events: u64,
    /// Open orders on the account this profile did not place, as reconciliation found them
    /// (bounded by [`FOREIGN_ORDERS_KEPT_MAX`]): each counted once.
    foreign_open_orders: std::collections::HashSet<ClientOrderId>,
    /// Why the profile is quarantined, while it is: the open row of `profile_quarantines`, as
    /// this engine last wrote or read it.
    quarantine: Option<QuarantineRecord>,
    /// The strategy's last fault.
    last_fault: Option<StrategyFaultRecord>,
}

/// Most rounds of fill-triggered decisions one step runs.
pub const PENDING_DECISIONS_PER_STEP_MAX: usize = 64;

/// The most foreign open orders a profile remembers having counted.
pub const FOREIGN_ORDERS_KEPT_MAX: usize = 1_000;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

impl ProfileEngine {
    /// An engine for `spec`. Call [`ProfileEngine::recover`] before the first candle.
    #[allow(clippy::too_many_arguments)] // each is a separate collaborator the host injects
    pub fn new(
        spec: ProfileSpec,
        config: EngineConfig,
        store: Store,
        exchange: Arc<dyn Exchange>,
        strategy: Box<dyn StrategyRuntime>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        switches: Arc<HostSwitches>,
        owner: OwnerToken,
    ) -> Self {
        let orders_open = OpenOrdersGauge::new(metrics.clone());
        let history = Arc::new(CandleHistory::new(config.warm_up_candles_max));
        ProfileEngine {
            spec,
            config,
            store,
            exchange,
            strategy,
            clock,
            metrics,
            switches,
            owner,
            controls: ProfileControls::default(),
            strategy_faulted: false,
            strategy_fresh: true,
            history,
            book: Book::default(),
            capital_recorded: None,
            order_applied: None,
            orders_open,
            last_price: prices::LastPrices::default(),
            rules: HashMap::new(),
            entry_leases: HashMap::new(),
            unknown_since_ms: HashMap::new(),
            unknown_requests: HashMap::new(),
            unplaced: BTreeMap::new(),
            timers: BTreeSet::new(),
            minute: (0, 0),
            day: (0, Decimal::ZERO),
            refusals: VecDeque::new(),
            refusal_log: RefusalLog::default(),
            pending_decisions: VecDeque::new(),
            reversals: HashMap::new(),
            plant: Planted::default(),
            foreign_events: 0,
            foreign_open_orders: std::collections::HashSet::new(),
            quarantine: None,
            last_fault: None,
        }
    }

    /// Switches one protection off. Only the deterministic simulation calls this, to show it
    /// catches the bug (see [`crate::plant`]); the store's plants are set on the store.
    #[cfg(feature = "lab")]
    pub fn set_plant(&mut self, plant: Plant) {
        self.plant = Planted::new(plant);
    }

    /// The profile.
    pub fn profile(&self) -> ProfileId {
        self.spec.profile
    }

    /// The owner.
    pub fn user(&self) -> UserId {
        self.spec.user
    }

    /// The book as last read from the store.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The profile's controls.
    pub fn controls(&self) -> ProfileControls {
        self.controls
    }

    /// Pauses or resumes new entries (exits keep running).
    pub fn set_paused(&mut self, paused: bool) {
        self.controls.paused = paused;
    }

    /// Sets the profile's kill switch.
    pub fn set_killed(&mut self, killed: bool) {
        self.controls.killed = killed;
    }

    /// Whether a request to end the quarantine (a resume by the owner, or an operator's clear,
    /// through any instance) waits for a clean reconciliation pass.
    pub fn quarantine_clear_requested(&self) -> bool {
        self.quarantine
            .as_ref()
            .is_some_and(|q| q.clear_requested_by.is_some())
    }

    /// User events about orders this profile did not place (another profile's on its account,
    /// or one placed by hand) that it heard and ignored since it started, and such orders open
    /// on the account that reconciliation found.
    pub fn foreign_events(&self) -> u64 {
        self.foreign_events
    }

    /// Counts an open order on the account that this profile did not place, once per order
    /// (`keel_exchange_foreign_events_total{kind="open_order"}`, and [`Self::foreign_events`]).
    pub(super) fn note_foreign_open_order(&mut self, id: &ClientOrderId) {
        if self.foreign_open_orders.contains(id)
            || self.foreign_open_orders.len() >= FOREIGN_ORDERS_KEPT_MAX
        {
            return;
        }
        self.foreign_open_orders.insert(id.clone());
        self.foreign_events += 1;
        self.metrics
            .exchange_foreign_events_total
            .with_label_values(&["open_order"])
            .inc();
        tracing::warn!(client_order_id = %id, "an open order on the account that this profile did not place: ignored by reconciliation");
    }

    /// Why and since when the profile is quarantined, while it is.
    pub fn quarantine(&self) -> Option<&QuarantineRecord> {
        self.quarantine.as_ref()
    }

    /// Whether the strategy's last call faulted (its entries wait for a healthy call).
    pub fn strategy_faulted(&self) -> bool {
        self.strategy_faulted
    }

    /// The strategy's last fault, if it ever had one.
    pub fn last_fault(&self) -> Option<&StrategyFaultRecord> {
        self.last_fault.as_ref()
    }

    /// Counts a strategy fault by its kind and keeps it as the last one (unless it only says
    /// the instance was already dead); entries wait until a call succeeds.
    fn strategy_fault(&mut self, fault: &PluginFault) {
        self.metrics
            .plugin_faults_total
            .with_label_values(&[fault.kind()])
            .inc();
        self.strategy_faulted = true;
        if *fault != PluginFault::Dead || self.last_fault.is_none() {
            self.last_fault = Some(StrategyFaultRecord {
                fault: fault.clone(),
                at_ms: self.clock.now_ms(),
            });
        }
    }

    /// Replaces the risk rules.
    pub fn set_limits(&mut self, limits: RiskLimits) {
        self.spec.limits = limits;
    }

    /// Swaps the strategy at a call boundary (the caller already initialised the new one).
    /// Returns the old one.
    pub fn swap_strategy(
        &mut self,
        strategy: Box<dyn StrategyRuntime>,
    ) -> Box<dyn StrategyRuntime> {
        self.strategy_faulted = false;
        self.strategy_fresh = true;
        std::mem::replace(&mut self.strategy, strategy)
    }

    /// The most recent refusals, oldest first.
    pub fn refusals(&self) -> impl Iterator<Item = &RefusalRecord> {
        self.refusals.iter()
    }

    /// Removes the kept refusals and returns them, oldest first. A caller that takes them after
    /// every call into the engine sees every refusal, as long as one call refuses no more than
    /// [`EngineConfig::refusals_kept_max`] intents (a backtest's report lists them all this way).
    pub fn take_refusals(&mut self) -> std::collections::vec_deque::Drain<'_, RefusalRecord> {
        self.refusals.drain(..)
    }

    /// The reason new entries are blocked, if they are.
    pub fn entry_block(&self) -> Option<EntryBlock> {
        if self.switches.kill.load(Ordering::Relaxed) {
            Some(EntryBlock::HostKillSwitch)
        } else if self.controls.killed {
            Some(EntryBlock::ProfileKillSwitch)
        } else if self.controls.quarantined {
            Some(EntryBlock::Quarantined)
        } else if self.controls.paused {
            Some(EntryBlock::Paused)
        } else if self.strategy_faulted {
            Some(EntryBlock::PluginFaulted)
        } else {
            None
        }
    }

    /// Keeps recent candles in `history` instead of a history of its own: one shared by every
    /// engine fed the same candles (see [`CandleHistory`]).
    pub fn share_history(&mut self, history: Arc<CandleHistory>) {
        self.history = history;
    }

    /// Adds closed candles the strategy would have seen before this engine started (the
    /// exchange's recent history, at start or takeover) to the candles replayed into a fresh
    /// strategy. Any order; candles already known are skipped.
    pub fn remember_candles(&mut self, candles: impl IntoIterator<Item = Candle>) {
        self.history.extend(candles);
    }

    /// If the strategy is fresh (new to this engine, or swapped inside its runtime), replays
    /// the recent candles that opened before `before_open_ms` into it and discards what it asks
    /// for: its first live decision is made with a full window, and nothing it asked for while
    /// catching up reaches the exchange. A fault while catching up is counted by its own kind
    /// and blocks entries, as a live fault does.
    fn warm_up_if_fresh(&mut self, before_open_ms: Option<i64>) {
        // Both flags are read and cleared: `|`, not `||`.
        if !(std::mem::take(&mut self.strategy_fresh) | self.strategy.take_fresh()) {
            return;
        }
        let view = self.book.view();
        let candles = self.history.before(before_open_ms);
        let (replayed, fault) = self.strategy.warm_up(&candles, view);
        if let Some(fault) = fault {
            tracing::warn!(%fault, "strategy fault during warm-up: entries paused");
            self.strategy_fault(&fault);
        }
        self.metrics.warm_up_candles_total.inc_by(replayed);
        if replayed > 0 {
            tracing::info!(candles = replayed, "strategy warmed up");
        }
    }

    /// One closed candle: orders waiting to be sent again whose wait is over, timers that came
    /// due, then the strategy's decision, then its requests.
    #[tracing::instrument(name = "profile_step", skip_all, fields(profile_id = %self.spec.profile, user_id = %self.spec.user))]
    pub async fn on_candle(&mut self, candle: &Candle) -> Result<StepOutcome, EngineError> {
        self.warm_up_if_fresh(Some(candle.open_time_ms));
        self.history.record(candle);
        self.note_price(candle);
        let mut outcome = StepOutcome {
            orders_sent: self.retry_unplaced().await?,
            ..StepOutcome::default()
        };
        let now_ms = self.clock.now_ms();
        while let Some(&at_ms) = self.timers.first().filter(|&&at| at <= now_ms) {
            self.timers.remove(&at_ms);
            let view = self.book.view();
            let result = self.strategy.on_timer(now_ms, view);
            self.decide(result, at_ms.unsigned_abs(), &mut outcome)
                .await?;
        }
        let view = self.book.view();
        let result = self.strategy.on_candle(candle, view);
        self.decide(result, candle.open_time_ms.unsigned_abs(), &mut outcome)
            .await?;
        self.drain_decisions(&mut outcome).await?;
        Ok(outcome)
    }

    fn note_price(&mut self, candle: &Candle) {
        self.last_price.note(&candle.symbol, candle.close);
    }

    async fn decide(
        &mut self,
        result: Result<Vec<RawIntent>, PluginFault>,
        sequence: u64,
        outcome: &mut StepOutcome,
    ) -> Result<(), EngineError> {
        let intents = match result {
            Ok(intents) => {
                self.strategy_faulted = false;
                intents
            }
            Err(fault) => {
                tracing::warn!(%fault, "strategy fault: entries paused");
                self.strategy_fault(&fault);
                outcome.fault = Some(fault);
                return Ok(());
            }
        };
        // Symbols this decision sent an exit for: an entry on the other side of the position
        // that follows is a reversal.
        let mut exits_sent: Vec<Symbol> = Vec::new();
        for (index, raw) in intents.into_iter().enumerate() {
            if index >= self.config.intents_per_call_max {
                self.refuse(
                    raw,
                    &Refusal::RateLimited {
                        max: self.config.intents_per_call_max as u32,
                    },
                );
                outcome.refused += 1;
                continue;
            }
            if let Some(symbol) = self.reversal_of(&raw, &exits_sent) {
                self.defer_reversal(symbol, raw, sequence);
                continue;
            }
            match self.validate(&raw) {
                Ok(valid) => {
                    let exit_symbol = match &valid {
                        ValidIntent::Exit(exit) => Some(exit.symbol.clone()),
                        _ => None,
                    };
                    // Boxed: most decisions send nothing, and the future of an order's way to
                    // the exchange is large; inline, every candle's step would be built and
                    // moved at its size.
                    if let Some(sent) = Box::pin(self.execute(&raw, valid, sequence)).await? {
                        exits_sent.extend(exit_symbol);
                        outcome.orders_sent.push(sent);
                    }
                }
                Err(refusal) => {
                    self.refuse(raw, &refusal);
                    outcome.refused += 1;
                }
            }
        }
        Ok(())
    }

    /// The symbol of `raw` if it is the entry of a reversal: an entry on the side opposite to
    /// a position still open, after an exit of that position sent in the same decision and
    /// still open (an exit the exchange already filled or refused leaves the entry to be
    /// checked as it stands).
    fn reversal_of(&self, raw: &RawIntent, exits_sent: &[Symbol]) -> Option<Symbol> {
        let RawIntent::Entry(entry) = raw else {
            return None;
        };
        let symbol = exits_sent.iter().find(|s| s.as_str() == entry.symbol)?;
        let held = self.book.positions.get(symbol)?;
        let held_side = book::position_side(held.side, IntentKind::Entry);
        let exit_open = self.exit_open(symbol);
        (held_side != entry.side && exit_open).then(|| symbol.clone())
    }

    /// True while an exit order on `symbol` is open.
    fn exit_open(&self, symbol: &Symbol) -> bool {
        self.book
            .open_orders
            .values()
            .any(|o| o.kind == IntentKind::Exit && &o.symbol == symbol)
    }

    /// Keeps the entry of a reversal until its exit closes the position: the exit goes first,
    /// and the entry is decided again (validated against the limits and sized on the capital
    /// the exit freed) once the position is closed. One reversal waits per symbol; a later one
    /// replaces it. Kept in memory: after a restart the strategy decides afresh.
    fn defer_reversal(&mut self, symbol: Symbol, raw: RawIntent, sequence: u64) {
        tracing::debug!(%symbol, "reversal: the entry waits for the exit to close the position");
        if let Some((replaced, _)) = self.reversals.insert(symbol.clone(), (raw, sequence)) {
            self.record_refusal(
                replaced,
                RefusalRule::ReversalReplaced,
                format!("a later reversal on {symbol} replaced this entry before it was sent"),
            );
        }
    }

    /// After a change of an exit order on `symbol`: the waiting reversal's entry is decided
    /// once no position is left, or refused once no exit is left to close it.
    fn follow_reversal(&mut self, symbol: &Symbol, exit_status: crate::order::OrderStatus) {
        if !self.reversals.contains_key(symbol) {
            return;
        }
        let closed = !self.book.positions.contains_key(symbol);
        if !closed && self.exit_open(symbol) {
            return;
        }
        let Some((raw, sequence)) = self.reversals.remove(symbol) else {
            return;
        };
        if closed {
            self.pending_decisions.push_back((Ok(vec![raw]), sequence));
        } else {
            self.record_refusal(
                raw,
                RefusalRule::ReversalAbandoned,
                format!(
                    "the exit on {symbol} ended {exit_status} with the position still open: \
                     the reversal's entry was not sent"
                ),
            );
        }
    }

    fn risk_context(&self, symbol: Option<&Symbol>) -> RiskContext {
        let position = symbol.and_then(|s| self.book.positions.get(s));
        RiskContext {
            last_price: symbol.and_then(|s| self.last_price.get(s)),
            free_capital: self.book.capital.free(),
            equity: self.book.equity(),
            exposure: self.book.exposure(),
            positions_open: self.book.positions_open(),
            // Saturating: a stored quantity beyond reason is refused by the risk rules (too large
            // or not positive), never a panic here.
            position_qty: position.map_or(Decimal::ZERO, |p| {
                p.qty_open
                    .get()
                    .saturating_sub(self.exit_qty_pending(&p.symbol))
            }),
            position_side: position.map(|p| book::position_side(p.side, IntentKind::Entry)),
            daily_realized_pnl: self.day.1,
            intents_this_minute: self.minute.1,
            entry_block: self.entry_block(),
            reserves: self.entry_reserves(),
        }
    }

    /// Quantity already asked for by open exit orders: an exit never closes more than is held.
    fn exit_qty_pending(&self, symbol: &Symbol) -> Decimal {
        self.book
            .open_orders
            .values()
            .filter(|o| o.kind == IntentKind::Exit && &o.symbol == symbol)
            .map(|o| o.qty_remaining())
            .fold(Decimal::ZERO, Decimal::saturating_add)
    }

    fn validate(&mut self, raw: &RawIntent) -> Result<ValidIntent, Refusal> {
        let now_ms = self.clock.now_ms();
        if now_ms / MINUTE_MS != self.minute.0 {
            self.minute = (now_ms / MINUTE_MS, 0);
        }
        let symbol = match raw {
            RawIntent::Entry(e) => Symbol::new(&e.symbol).ok(),
            RawIntent::Exit(e) => Symbol::new(&e.symbol).ok(),
            _ => None,
        };
        let context = self.risk_context(symbol.as_ref());
        let valid = risk::validate(raw, &self.spec.limits, &context, now_ms)?;
        self.minute.1 += 1;
        Ok(valid)
    }

    fn refuse(&mut self, intent: RawIntent, refusal: &Refusal) {
        self.record_refusal(intent, refusal.rule(), refusal.to_string());
    }

    /// Counts a refused intent by rule, logs it (each at debug, counted at info: see
    /// [`RefusalLog`]), and keeps it for the API (bounded).
    fn record_refusal(&mut self, intent: RawIntent, rule: RefusalRule, reason: String) {
        self.metrics
            .risk_refusals_total
            .with_label_values(&[rule.as_str()])
            .inc();
        tracing::debug!(%rule, %reason, "intent refused");
        self.refusal_log.count(rule, &reason);
        if self.refusals.len() == self.config.refusals_kept_max {
            self.refusals.pop_front();
        }
        let at_ms = self.clock.now_ms();
        self.refusals.push_back(RefusalRecord {
            at_ms,
            rule,
            reason,
            intent,
        });
    }

    async fn execute(
        &mut self,
        raw: &RawIntent,
        valid: ValidIntent,
        sequence: u64,
    ) -> Result<Option<ClientOrderId>, EngineError> {
        match valid {
            ValidIntent::Entry(entry) => self.enter(raw, entry, sequence).await,
            ValidIntent::Exit(exit) => self.exit(raw, exit, sequence).await,
            ValidIntent::Cancel { client_order_id } => {
                self.cancel(raw, &client_order_id).await?;
                Ok(None)
            }
            ValidIntent::SetTimer { at_ms } => {
                self.timers.insert(at_ms);
                Ok(None)
            }
        }
    }

    async fn symbol_rules(&mut self, symbol: &Symbol) -> Result<SymbolRules, ExchangeError> {
        if let Some(rules) = self.rules.get(symbol) {
            return Ok(rules.clone());
        }
        let rules = self.exchange.symbol_rules(symbol).await?;
        self.rules.insert(symbol.clone(), rules.clone());
        Ok(rules)
    }

    /// Prepares an order: the exchange's filters round it, or refuse it with a reason.
    async fn prepare(
        &mut self,
        raw: &RawIntent,
        request: OrderRequest,
    ) -> Result<Option<OrderRequest>, EngineError> {
        let rules = match self.symbol_rules(&request.symbol).await {
            Ok(rules) => rules,
            Err(ExchangeError::UnknownSymbol(symbol)) => {
                self.refuse(raw.clone(), &Refusal::SymbolNotAllowed(symbol));
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let reference = self.last_price.get(&request.symbol);
        match rules.apply(&request, reference) {
            Ok(prepared) => Ok(Some(prepared)),
            Err(violation) => {
                self.record_refusal(
                    raw.clone(),
                    RefusalRule::ExchangeFilter,
                    violation.to_string(),
                );
                Ok(None)
            }
        }
    }

    /// What an entry reserves beyond its notional (the engine's slippage and fee allowances).
    fn entry_reserves(&self) -> risk::EntryReserves {
        risk::EntryReserves {
            slippage_bps: self.config.slippage_reserve_bps,
            fee_bps: self.config.fee_reserve_bps,
        }
    }

    /// The price an entry reserves capital at: never below what it may fill at (within the
    /// slippage allowance) plus the fee its fills are charged (within the fee allowance), so
    /// recording a fill never needs capital the reservation does not hold.
    fn reservation_price(&self, request: &OrderRequest) -> Result<Price, Refusal> {
        let side = match request.side {
            crate::market::Side::Buy => crate::strategy::PositionSide::Long,
            crate::market::Side::Sell => crate::strategy::PositionSide::Short,
        };
        let (price, reference) = match request.order_type {
            OrderType::Limit { price } => (OrderPrice::Limit(price), price),
            OrderType::Market => (
                OrderPrice::Market,
                self.last_price
                    .get(&request.symbol)
                    .expect("risk validation refuses a market entry without a last price"),
            ),
        };
        self.entry_reserves()
            .reservation_price(side, price, reference)
    }

    #[tracing::instrument(name = "order", skip_all, fields(client_order_id = tracing::field::Empty))]
    async fn enter(
        &mut self,
        raw: &RawIntent,
        entry: risk::EntryRequest,
        sequence: u64,
    ) -> Result<Option<ClientOrderId>, EngineError> {
        let id = ClientOrderId::derive(
            self.spec.profile,
            &entry.symbol,
            sequence,
            IntentKind::Entry,
        );
        tracing::Span::current().record("client_order_id", tracing::field::display(&id));
        if self.book.entry_in_flight(&entry.symbol) {
            self.record_refusal(
                raw.clone(),
                RefusalRule::EntryInFlight,
                format!("an entry on {} is already in flight", entry.symbol),
            );
            return Ok(None);
        }
        let request = OrderRequest {
            client_order_id: id.clone(),
            symbol: entry.symbol.clone(),
            side: entry_side(entry.side),
            order_type: order_type(entry.price),
            qty: entry.qty,
            reduce_only: false,
        };
        let Some(request) = self.prepare(raw, request).await? else {
            return Ok(None);
        };
        let price = match self.reservation_price(&request) {
            Ok(price) => price,
            Err(refusal) => {
                self.refuse(raw.clone(), &refusal);
                return Ok(None);
            }
        };
        // The entry lock is taken in the write-ahead's own transaction: one commit makes the
        // lease, the order row and the reservation, and a refused write-ahead rolls the lease
        // back with it (no release).
        let key = LockKey::entry(self.spec.profile, &entry.symbol);
        let mut tx = self.store.tenant(self.spec.user).begin().await?;
        let Some(lease) = self.acquire_entry_lock(&mut tx, &key).await? else {
            self.record_refusal(
                raw.clone(),
                RefusalRule::EntryLocked,
                format!("the entry lock {key} is held by another owner"),
            );
            return Ok(None);
        };
        let write_ahead = EntryRequest {
            profile: self.spec.profile,
            client_order_id: id.clone(),
            symbol: entry.symbol.clone(),
            side: request.side,
            qty: request.qty,
            price,
            lock: lease.fenced(),
        };
        let order = match tx.write_ahead_entry(&write_ahead).await {
            Ok(written @ WriteAhead::Written(_)) => {
                tx.commit().await?;
                self.written_ahead(written)
            }
            Ok(WriteAhead::Replayed(order)) => {
                self.refuse_replayed(raw, &order);
                return Ok(None);
            }
            Err(error) => return self.entry_write_ahead_failed(raw, error),
        };
        self.entry_leases.insert(id.clone(), lease);
        self.update_book_order(order.clone());
        // The order goes out first: re-reading the capital row (the reservation) is a round trip
        // the decision does not wait for. The book has it before the next intent is validated,
        // whatever the submission's outcome.
        let submitted = self.submit(&order, &request).await;
        self.refresh_capital().await?;
        submitted?;
        Ok(Some(id))
    }

    /// A decision already written ahead (by this profile before a crash, or by another
    /// instance with a stale book) is never sent again: the exchange may already hold it, and
    /// Binance refuses a duplicate client order id only while the first order is open. The
    /// order it names is resolved by query and reconciliation, like any order in flight.
    fn refuse_replayed(&mut self, raw: &RawIntent, order: &OrderRecord) {
        self.record_refusal(
            raw.clone(),
            RefusalRule::DecisionReplayed,
            format!(
                "order {} was already written ahead ({})",
                order.client_order_id, order.status
            ),
        );
    }

    fn entry_write_ahead_failed(
        &mut self,
        raw: &RawIntent,
        error: StoreError,
    ) -> Result<Option<ClientOrderId>, EngineError> {
        use crate::ledger::LedgerError;
        use crate::store::Constraint;
        match &error {
            StoreError::Ledger(LedgerError::InsufficientCapital { .. })
            | StoreError::Constraint(Constraint::CapitalInvariant) => {
                self.count_constraint_refusal(&error);
                self.record_refusal(
                    raw.clone(),
                    RefusalRule::InsufficientCapital,
                    error.to_string(),
                );
                Ok(None)
            }
            // The store counts the stale fence (`keel_lock_stale_fence_rejections_total`).
            StoreError::Constraint(Constraint::CurrentFence) | StoreError::Lock(_) => {
                self.record_refusal(raw.clone(), RefusalRule::StaleFence, error.to_string());
                Ok(None)
            }
            // The store's check: one lifecycle per (profile, symbol), so an entry while a
            // position is still open is the strategy's mistake, refused like an order in flight.
            StoreError::Constraint(Constraint::OneOpenEntryOrder)
            | StoreError::Lifecycle(crate::lifecycle::LifecycleError::EntryInFlight { .. }) => {
                self.record_refusal(raw.clone(), RefusalRule::EntryInFlight, error.to_string());
                Ok(None)
            }
            _ => Err(error.into()),
        }
    }

    /// Counts a write the database refused by a constraint the kernel's own check should have
    /// prevented, in the metric of the invariant the constraint protects: the database caught
    /// what the kernel missed, so it is counted loudly. A stale fence (invariant 2) is counted
    /// by the store itself (`keel_lock_stale_fence_rejections_total`).
    pub(super) fn count_constraint_refusal(&self, error: &StoreError) {
        use crate::store::Constraint;
        if let StoreError::Constraint(
            Constraint::CapitalInvariant | Constraint::CapitalNonNegative(_),
        ) = error
        {
            self.metrics.capital_invariant_violations_total.inc();
        }
    }

    /// Takes the entry lock inside `tx`. The store counts the attempt, its latency and any
    /// contention (`keel_lock_*`).
    async fn acquire_entry_lock(
        &mut self,
        tx: &mut TenantTx,
        key: &LockKey,
    ) -> Result<Option<Lease>, EngineError> {
        let (owner, ttl_ms) = (self.owner, self.config.entry_lock_ttl_ms);
        let lease = if self.plant.is(Plant::LockDisabled) {
            tx.acquire_lock_ignoring_holder(LockKind::Entry, key, owner, ttl_ms)
                .await?
        } else {
            tx.acquire_lock(LockKind::Entry, key, owner, ttl_ms).await?
        };
        Ok(lease)
    }

    async fn release_lease(&mut self, lease: &Lease) {
        // A failed release only delays the next entry by the TTL: the lock expires by itself.
        if let Err(error) = self.store.locks().release(lease).await {
            tracing::warn!(%error, "releasing entry lock");
        }
    }

    #[tracing::instrument(name = "order", skip_all, fields(client_order_id = tracing::field::Empty))]
    async fn exit(
        &mut self,
        raw: &RawIntent,
        exit: risk::ExitRequest,
        sequence: u64,
    ) -> Result<Option<ClientOrderId>, EngineError> {
        let id = ClientOrderId::derive(self.spec.profile, &exit.symbol, sequence, IntentKind::Exit);
        tracing::Span::current().record("client_order_id", tracing::field::display(&id));
        let request = OrderRequest {
            client_order_id: id.clone(),
            symbol: exit.symbol.clone(),
            side: entry_side(exit.side).opposite(),
            order_type: order_type(exit.price),
            qty: exit.qty,
            reduce_only: true,
        };
        let Some(request) = self.prepare(raw, request).await? else {
            return Ok(None);
        };
        let price = match request.order_type {
            OrderType::Limit { price } => price,
            OrderType::Market => self.last_price.get(&exit.symbol).ok_or_else(|| {
                EngineError::Exchange(ExchangeError::Unknown {
                    reason: format!("no price known for {}", exit.symbol),
                })
            })?,
        };
        let write_ahead = ExitRequest {
            profile: self.spec.profile,
            client_order_id: id.clone(),
            symbol: exit.symbol.clone(),
            qty: request.qty,
            price,
        };
        let order = match self
            .store
            .tenant(self.spec.user)
            .write_ahead_exit(&write_ahead)
            .await
        {
            Ok(written @ WriteAhead::Written(_)) => self.written_ahead(written),
            Ok(WriteAhead::Replayed(order)) => {
                self.refuse_replayed(raw, &order);
                return Ok(None);
            }
            Err(StoreError::Lifecycle(error)) => {
                self.record_refusal(raw.clone(), RefusalRule::ExitRefused, error.to_string());
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        self.update_book_order(order.clone());
        self.submit(&order, &request).await?;
        Ok(Some(id))
    }

    #[tracing::instrument(name = "order", skip_all, fields(client_order_id = %id))]
    async fn cancel(&mut self, raw: &RawIntent, id: &ClientOrderId) -> Result<(), EngineError> {
        let Some(order) = self.book.open_orders.get(id).cloned() else {
            self.record_refusal(
                raw.clone(),
                RefusalRule::UnknownOrder,
                format!("no open order {id} to cancel"),
            );
            return Ok(());
        };
        match self.exchange.cancel(&order.symbol, id).await {
            Ok(report) => self.apply_report(&report).await,
            // The order may have filled or gone meanwhile: ask, and apply what the exchange says.
            Err(_) => self.resolve_by_query(&order).await,
        }
    }
}

fn order_type(price: OrderPrice) -> OrderType {
    match price {
        OrderPrice::Market => OrderType::Market,
        OrderPrice::Limit(price) => OrderType::Limit { price },
    }
}

/// The waiting-order gauge counts what engines hold: an engine that ends (its profile moved to
/// another instance, stopped, or the host shuts down) takes its counts with it. Its waiting
/// orders stay PENDING_SUBMIT in the store, where recovery finds them; its quarantine stays in
/// the store too, where the next owner's recovery finds it.
impl Drop for ProfileEngine {
    fn drop(&mut self) {
        let waiting: Vec<ClientOrderId> = self.unplaced.keys().cloned().collect();
        for id in &waiting {
            self.forget_unplaced(id);
        }
    }
}

impl ProfileEngine {
    /// Keeps the daily realized PnL for the daily loss rule.
    fn note_realized(&mut self, pnl: Decimal) {
        let day = self.clock.now_ms() / DAY_MS;
        if day != self.day.0 {
            self.day = (day, Decimal::ZERO);
        }
        // Saturating: a sum beyond a decimal's range (unreachable with the ledger's bounds) sticks
        // at the end of the range instead of panicking; a loss that large stops entries.
        self.day.1 = self.day.1.saturating_add(pnl);
    }
}
