//! The live side of the host: an event bus the per-profile loops publish to after each step,
//! the `/api/v1/ws` WebSocket that streams a user's own events, and the dashboard page at `/`.
//!
//! Every event carries its owner. The bus keeps the latest state of each profile (built from
//! the same events it sends), so a new connection gets a snapshot of its user's profiles and
//! then only the events that came after it — under one lock, so none is missed or doubled.
//! Fan-out never waits: each connection has its own bounded queue, and a connection whose
//! queue is full is dropped (its socket is closed with a reason saying so) rather than slowing
//! the loop that published.

pub mod feed;
pub mod ws;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use keel_kernel::engine::{HostSwitches, ProfileControls};
use keel_kernel::ids::{ClientOrderId, ProfileId, Symbol, UserId};
use keel_kernel::ledger::Capital;
use keel_kernel::lifecycle::{OrderRecord, Position};
use keel_kernel::market::Side;
use keel_kernel::order::OrderStatus;
use keel_kernel::risk::{EntryBlock, RefusalRule};
use keel_kernel::store::Store;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

use crate::health::{
    LoopConfig, LoopHealth, LoopRun, LoopStatus, QuarantineView, loop_statuses, wall_now_ms,
};

pub use feed::{ProfileFeed, StepReport};
pub use ws::router;

/// Messages queued per connection before it counts as slow and is dropped.
pub const QUEUE_MAX_DEFAULT: usize = 1024;
/// Recent (settled or changed) orders kept per profile for the snapshot.
pub const RECENT_ORDERS_MAX: usize = 20;
/// Recent plugin faults kept per profile for the snapshot.
pub const RECENT_FAULTS_MAX: usize = 20;
/// Recent refused intents kept per profile for the snapshot.
pub const RECENT_REFUSALS_MAX: usize = 20;
/// Recent candles kept per symbol of a profile for the snapshot (the dashboard's price chart of
/// that symbol).
pub const RECENT_CANDLES_MAX: usize = 500;
/// How often the host watch re-sends a loop's status whose state did not change, so that the
/// age of its last run stays current on the operator's view.
pub const HOST_LOOP_REFRESH_MS: u64 = 1_000;
/// How often the host watch looks at the loops, readiness and the host kill switch.
pub const HOST_WATCH_INTERVAL_MS: u64 = 500;

/// An order as the live feed shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderState {
    /// The client order id.
    pub client_order_id: ClientOrderId,
    /// The instrument.
    pub symbol: Symbol,
    /// `ENTRY` or `EXIT`.
    pub kind: keel_kernel::ids::IntentKind,
    /// Buy or sell.
    pub side: Side,
    /// Ordered quantity.
    pub qty: Decimal,
    /// Limit or reference price.
    pub price: Decimal,
    /// Quantity filled so far.
    pub filled_qty: Decimal,
    /// Current status.
    pub status: OrderStatus,
    /// Wall time the feed published this state, ms since the epoch.
    pub seen_at_ms: i64,
}

impl From<&OrderRecord> for OrderState {
    /// The order as of now.
    fn from(order: &OrderRecord) -> Self {
        OrderState {
            seen_at_ms: wall_now_ms(),
            client_order_id: order.client_order_id.clone(),
            symbol: order.symbol.clone(),
            kind: order.kind,
            side: order.side,
            qty: order.qty.get(),
            price: order.price.get(),
            filled_qty: order.filled_qty.get(),
            status: order.status,
        }
    }
}

/// An open position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionState {
    /// Buy: long; sell: short.
    pub side: Side,
    /// Quantity still open.
    pub qty_open: Decimal,
    /// Cost of the open quantity.
    pub cost_open: Decimal,
}

impl From<&Position> for PositionState {
    fn from(position: &Position) -> Self {
        PositionState {
            side: position.side,
            qty_open: position.qty_open,
            cost_open: position.cost_open,
        }
    }
}

/// The capital row, with the free capital worked out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapitalState {
    /// Capital the owner gave the profile.
    pub allocated: Decimal,
    /// Held by orders that may still fill.
    pub reserved_for_orders: Decimal,
    /// Cost of open positions.
    pub reserved_for_positions: Decimal,
    /// Realized profit and loss, fees included.
    pub realized_pnl: Decimal,
    /// What no order or position holds.
    pub free: Decimal,
}

impl From<&Capital> for CapitalState {
    fn from(capital: &Capital) -> Self {
        CapitalState {
            allocated: capital.allocated.get(),
            reserved_for_orders: capital.reserved_for_orders.get(),
            reserved_for_positions: capital.reserved_for_positions.get(),
            realized_pnl: capital.realized_pnl.get(),
            free: capital.free(),
        }
    }
}

/// Something that happened to one profile, sent to the profile's owner only.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProfileEvent {
    /// A closed candle the trading loop decided on.
    Candle {
        /// The instrument.
        symbol: Symbol,
        /// Open time, ms since the epoch (market time).
        open_time_ms: i64,
        /// Last price of the candle.
        close: f64,
    },
    /// An order was written, changed status or filled more.
    Order {
        /// The order as the store holds it now.
        order: OrderState,
    },
    /// The exchange reported an execution.
    Fill {
        /// The order that filled.
        client_order_id: ClientOrderId,
        /// The instrument.
        symbol: Symbol,
        /// Buy or sell.
        side: Side,
        /// Execution price.
        price: Decimal,
        /// Executed quantity.
        qty: Decimal,
        /// Fee in quote currency.
        fee: Decimal,
        /// Exchange time, ms since the epoch.
        time_ms: i64,
    },
    /// A position opened, changed or closed (`position: null`).
    Position {
        /// The instrument.
        symbol: Symbol,
        /// The position now, if still open.
        position: Option<PositionState>,
    },
    /// The capital row changed.
    Capital {
        /// The row now.
        capital: CapitalState,
    },
    /// The strategy faulted.
    Fault {
        /// Wall time, ms since the epoch.
        at_ms: i64,
        /// What went wrong.
        fault: String,
    },
    /// A new plugin instance took over (a hot-swap, or the same plugin reconfigured): what
    /// the profile's later orders come from.
    Plugin {
        /// The plugin's name (upload name, or the file name of a default plugin).
        plugin: String,
        /// Its version (sha256 of the component).
        plugin_version: String,
        /// Wall time the host saw the new instance run, ms since the epoch.
        at_ms: i64,
    },
    /// Paused, killed, quarantined, or why entries are blocked, changed.
    Status {
        /// The controls now.
        controls: ProfileControls,
        /// Why entries are blocked, if they are.
        entry_block: Option<EntryBlock>,
        /// Why and since when it is quarantined, what the pass found, and whether its end was
        /// asked for, while it is.
        quarantine: Option<QuarantineView>,
    },
    /// One loop of the profile finished an iteration.
    Loop {
        /// `trading`, `monitor` or `reconciliation`.
        name: &'static str,
        /// When, and its error if it failed.
        run: LoopRun,
    },
    /// One loop of the profile ran no iteration for longer than its stall threshold (the
    /// host's clock decides; the next `loop` event ends it).
    LoopStalled {
        /// `trading`, `monitor` or `reconciliation`.
        name: &'static str,
        /// How long ago its last iteration ended, by the host's clock.
        lag_ms: i64,
    },
    /// The kernel refused an intent of the strategy.
    Refusal {
        /// Kernel time of the refusal, ms since the epoch.
        at_ms: i64,
        /// The rule that refused it.
        rule: RefusalRule,
        /// Why, in full.
        reason: String,
    },
    /// A reconciliation pass found the store and the exchange apart (repaired, or the profile
    /// quarantined).
    Drift {
        /// Wall time of the pass, ms since the epoch.
        at_ms: i64,
        /// `repaired` or `quarantined`.
        result: &'static str,
        /// What it found, by kind, with counts.
        mismatches: BTreeMap<&'static str, u32>,
    },
}

/// Something about the host as a whole, sent to operators who subscribed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HostEvent {
    /// A loop name changed state (`ok`, `stalled`, `failing`, `idle`).
    LoopState {
        /// The loop name.
        name: &'static str,
        /// Its status over every profile.
        status: LoopStatusView,
    },
    /// Readiness changed (restart recovery finished).
    Ready {
        /// Whether every profile has recovered.
        ready: bool,
    },
    /// The host-wide kill switch changed.
    HostKill {
        /// Whether it is on.
        on: bool,
    },
}

/// [`LoopStatus`] without the error text (which may name a tenant's data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopStatusView {
    /// `ok`, `stalled`, `failing` or `idle`.
    pub state: &'static str,
    /// The oldest last run over the profiles, ms since the epoch.
    pub last_run_ms: i64,
    /// How long ago that was, by the host's clock (0: never ran).
    pub lag_ms: i64,
    /// The stall threshold.
    pub stall_ms: u64,
}

impl From<&LoopStatus> for LoopStatusView {
    fn from(status: &LoopStatus) -> Self {
        LoopStatusView {
            state: status.state,
            last_run_ms: status.last_run_ms,
            lag_ms: status.lag_ms,
            stall_ms: status.stall_ms,
        }
    }
}

/// What the host registers about a profile, shown on the dashboard: only a `plugin` event
/// changes it (the plugin and its version).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileInfo {
    /// The profile.
    pub profile: ProfileId,
    /// Its owner.
    pub user: UserId,
    /// Its name.
    pub name: String,
    /// The plugin's upload name, or the file name of a host's default plugin.
    pub plugin: String,
    /// The plugin version (sha256 of the component).
    pub plugin_version: String,
    /// The symbols it trades: the dashboard draws one price chart for each.
    pub symbols: Vec<Symbol>,
}

/// The last candle a profile saw.
#[derive(Debug, Clone, Serialize)]
pub struct CandleState {
    /// The instrument.
    pub symbol: Symbol,
    /// Open time, ms since the epoch.
    pub open_time_ms: i64,
    /// Last price.
    pub close: f64,
}

/// A refused intent, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalState {
    /// Kernel time of the refusal, ms since the epoch.
    pub at_ms: i64,
    /// The rule that refused it.
    pub rule: RefusalRule,
    /// Why, in full.
    pub reason: String,
}

/// The last reconciliation pass that found drift.
#[derive(Debug, Clone, Serialize)]
pub struct DriftState {
    /// Wall time of the pass, ms since the epoch.
    pub at_ms: i64,
    /// `repaired` or `quarantined`.
    pub result: &'static str,
    /// What it found, by kind, with counts.
    pub mismatches: BTreeMap<&'static str, u32>,
}

/// Everything the dashboard shows about one profile, as of the snapshot's `seq`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    /// Registered facts (name, plugin version).
    #[serde(flatten)]
    pub info: ProfileInfo,
    /// Controls.
    pub controls: ProfileControls,
    /// Why entries are blocked.
    pub entry_block: Option<EntryBlock>,
    /// Its quarantine, while it is quarantined.
    pub quarantine: Option<QuarantineView>,
    /// Capital, once the profile has recovered.
    pub capital: Option<CapitalState>,
    /// Open positions by symbol.
    pub positions: BTreeMap<Symbol, PositionState>,
    /// Open orders by client order id.
    pub open_orders: BTreeMap<ClientOrderId, OrderState>,
    /// The latest order updates, newest last.
    pub recent_orders: VecDeque<OrderState>,
    /// Order updates seen since the host started.
    pub order_updates: u64,
    /// The latest plugin faults, newest last.
    pub faults: VecDeque<(i64, String)>,
    /// The last iteration of each loop.
    pub loops: BTreeMap<&'static str, LoopRun>,
    /// The state of each loop as the host judges it: `ok`, `failing` or `stalled`.
    pub loop_states: BTreeMap<&'static str, &'static str>,
    /// The last candle, of any of its symbols.
    pub last_candle: Option<CandleState>,
    /// The latest candles' `[open_time_ms, close]` of each symbol the profile trades, oldest
    /// first (one price chart per symbol): at most [`RECENT_CANDLES_MAX`] per symbol, and only
    /// for the symbols of [`ProfileInfo::symbols`].
    pub recent_candles: BTreeMap<Symbol, VecDeque<(i64, f64)>>,
    /// The latest refused intents, newest last.
    pub refusals: VecDeque<RefusalState>,
    /// The last reconciliation pass that found drift, if one did since the host started.
    pub last_drift: Option<DriftState>,
    /// When the plugin last changed while the host ran (`null`: it runs what it started with).
    pub plugin_since_ms: Option<i64>,
}

impl ProfileView {
    /// Replaces the registered facts; the candles of a symbol no longer traded go.
    fn register(&mut self, info: ProfileInfo) {
        self.recent_candles
            .retain(|symbol, _| info.symbols.contains(symbol));
        self.info = info;
    }

    fn new(info: ProfileInfo) -> Self {
        ProfileView {
            info,
            controls: ProfileControls::default(),
            entry_block: None,
            quarantine: None,
            capital: None,
            positions: BTreeMap::new(),
            open_orders: BTreeMap::new(),
            recent_orders: VecDeque::new(),
            order_updates: 0,
            faults: VecDeque::new(),
            loops: BTreeMap::new(),
            loop_states: BTreeMap::new(),
            last_candle: None,
            recent_candles: BTreeMap::new(),
            refusals: VecDeque::new(),
            last_drift: None,
            plugin_since_ms: None,
        }
    }

    /// Applies one event: the same rule the dashboard applies to its copy.
    fn apply(&mut self, event: &ProfileEvent) {
        match event {
            ProfileEvent::Candle {
                symbol,
                open_time_ms,
                close,
            } => {
                self.last_candle = Some(CandleState {
                    symbol: symbol.clone(),
                    open_time_ms: *open_time_ms,
                    close: *close,
                });
                // Only the registered symbols get a chart: they bound how many are kept.
                if self.info.symbols.contains(symbol) {
                    push_bounded(
                        self.recent_candles.entry(symbol.clone()).or_default(),
                        (*open_time_ms, *close),
                        RECENT_CANDLES_MAX,
                    );
                }
            }
            ProfileEvent::Order { order } => {
                if order.status.is_terminal() {
                    self.open_orders.remove(&order.client_order_id);
                } else {
                    self.open_orders
                        .insert(order.client_order_id.clone(), order.clone());
                }
                self.recent_orders
                    .retain(|o| o.client_order_id != order.client_order_id);
                push_bounded(&mut self.recent_orders, order.clone(), RECENT_ORDERS_MAX);
                self.order_updates += 1;
            }
            ProfileEvent::Fill { .. } => {}
            ProfileEvent::Position { symbol, position } => match position {
                Some(position) => {
                    self.positions.insert(symbol.clone(), position.clone());
                }
                None => {
                    self.positions.remove(symbol);
                }
            },
            ProfileEvent::Capital { capital } => self.capital = Some(capital.clone()),
            ProfileEvent::Fault { at_ms, fault } => {
                push_bounded(&mut self.faults, (*at_ms, fault.clone()), RECENT_FAULTS_MAX);
            }
            ProfileEvent::Status {
                controls,
                entry_block,
                quarantine,
            } => {
                self.controls = *controls;
                self.entry_block = *entry_block;
                self.quarantine = quarantine.clone();
            }
            ProfileEvent::Loop { name, run } => {
                self.loops.insert(name, run.clone());
                let state = if run.last_error.is_some() {
                    "failing"
                } else {
                    "ok"
                };
                self.loop_states.insert(name, state);
            }
            ProfileEvent::LoopStalled { name, .. } => {
                self.loop_states.insert(name, "stalled");
            }
            ProfileEvent::Refusal {
                at_ms,
                rule,
                reason,
            } => {
                let refusal = RefusalState {
                    at_ms: *at_ms,
                    rule: *rule,
                    reason: reason.clone(),
                };
                push_bounded(&mut self.refusals, refusal, RECENT_REFUSALS_MAX);
            }
            ProfileEvent::Drift {
                at_ms,
                result,
                mismatches,
            } => {
                self.last_drift = Some(DriftState {
                    at_ms: *at_ms,
                    result,
                    mismatches: mismatches.clone(),
                });
            }
            ProfileEvent::Plugin {
                plugin,
                plugin_version,
                at_ms,
            } => {
                self.info.plugin = plugin.clone();
                self.info.plugin_version = plugin_version.clone();
                self.plugin_since_ms = Some(*at_ms);
            }
        }
    }
}

/// Appends `item`, dropping the oldest beyond `max`.
fn push_bounded<T>(items: &mut VecDeque<T>, item: T, max: usize) {
    items.push_back(item);
    while items.len() > max {
        items.pop_front();
    }
}

/// The host's state as operators see it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostView {
    /// Whether restart recovery has finished everywhere.
    pub ready: bool,
    /// The host-wide kill switch.
    pub host_kill: bool,
    /// The state of each loop name.
    pub loops: BTreeMap<&'static str, LoopStatusView>,
}

impl HostView {
    fn apply(&mut self, event: &HostEvent) {
        match event {
            HostEvent::LoopState { name, status } => {
                self.loops.insert(name, status.clone());
            }
            HostEvent::Ready { ready } => self.ready = *ready,
            HostEvent::HostKill { on } => self.host_kill = *on,
        }
    }
}

/// A profile event as sent: `{"seq":…,"profile":…,"type":…,…}`.
#[derive(Serialize)]
struct ProfileWire<'a> {
    seq: u64,
    profile: ProfileId,
    #[serde(flatten)]
    event: &'a ProfileEvent,
}

/// A host event as sent: `{"seq":…,"type":"host","event":…,…}`.
#[derive(Serialize)]
struct HostWire<'a> {
    seq: u64,
    r#type: &'static str,
    #[serde(flatten)]
    event: &'a HostEvent,
}

/// One subscriber's end of the bus.
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    dropped: Arc<Dropped>,
}

/// Set when the bus drops a subscriber for being slow.
#[derive(Debug, Default)]
pub struct Dropped {
    slow: AtomicBool,
    notify: Notify,
}

impl Dropped {
    /// Whether the bus dropped the subscriber for being slow.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// Waits until the bus drops the subscriber.
    pub async fn wait(&self) {
        while !self.is_slow() {
            self.notify.notified().await;
        }
    }

    fn mark(&self) {
        self.slow.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct BusInner {
    seq: u64,
    profiles: BTreeMap<ProfileId, ProfileView>,
    host: HostView,
    users: HashMap<UserId, Vec<Subscriber>>,
    operators: Vec<Subscriber>,
}

/// Counters of the bus, for tests and logs.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Events published.
    pub published: AtomicU64,
    /// Connections dropped because their queue was full.
    pub slow_dropped: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
}

/// The event bus: latest state per profile and the subscribers' queues.
pub struct Bus {
    inner: Mutex<BusInner>,
    store: Store,
    loop_config: LoopConfig,
    queue_max: usize,
    next_id: AtomicU64,
    stats: BusStats,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("queue_max", &self.queue_max)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What a new subscription starts with.
pub struct Subscription {
    /// The snapshot's sequence number: every queued event has a larger one.
    pub seq: u64,
    /// The user's profiles as of `seq`.
    pub profiles: Vec<ProfileView>,
    /// The queue the bus fills.
    pub rx: mpsc::Receiver<Utf8Bytes>,
    /// Set by the bus when it dropped this subscriber for being slow.
    pub dropped: Arc<Dropped>,
    /// The subscriber's id, for [`Bus::subscribe_host`] and [`Bus::unsubscribe`].
    pub id: u64,
}

impl Bus {
    /// A bus whose connections queue at most `queue_max` messages; `store` answers the order
    /// look-ups of the feeds.
    pub fn new(store: Store, loop_config: LoopConfig, queue_max: usize) -> Arc<Bus> {
        Arc::new(Bus {
            inner: Mutex::new(BusInner::default()),
            store,
            loop_config,
            queue_max: queue_max.max(1),
            next_id: AtomicU64::new(1),
            stats: BusStats::default(),
        })
    }

    /// The bus's counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// The loops' thresholds (shown on the dashboard).
    pub fn loop_config(&self) -> &LoopConfig {
        &self.loop_config
    }

    /// The store the feeds read settled orders from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Registers a profile's name, plugin and symbols; its events may come before or after (a
    /// candle counts towards its price charts only once its symbol is registered).
    pub fn register(&self, info: ProfileInfo) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        match inner.profiles.get_mut(&info.profile) {
            Some(view) => view.register(info),
            None => {
                inner.profiles.insert(info.profile, ProfileView::new(info));
            }
        }
    }

    /// The owner of a registered profile.
    pub fn owner(&self, profile: ProfileId) -> Option<UserId> {
        let inner = self.inner.lock().expect("lock poisoned");
        inner.profiles.get(&profile).map(|v| v.info.user)
    }

    /// Publishes an event of `profile`, owned by `user`, to that user's connections only.
    pub fn publish(&self, user: UserId, profile: ProfileId, event: ProfileEvent) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        inner.seq += 1;
        let seq = inner.seq;
        let view = inner.profiles.entry(profile).or_insert_with(|| {
            ProfileView::new(ProfileInfo {
                profile,
                user,
                name: profile.to_string(),
                plugin: String::new(),
                plugin_version: String::new(),
                symbols: Vec::new(),
            })
        });
        if view.info.user != user {
            // A profile never changes owner: an event that says otherwise is a host bug, and
            // sending it anywhere could leak it.
            tracing::error!(profile_id = %profile, "live event with a different owner dropped");
            return;
        }
        view.apply(&event);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let Some(subscribers) = inner.users.get_mut(&user) else {
            return;
        };
        let text: Utf8Bytes = serde_json::to_string(&ProfileWire {
            seq,
            profile,
            event: &event,
        })
        .expect("live events serialize")
        .into();
        self.fan_out(subscribers, &text);
        if subscribers.is_empty() {
            inner.users.remove(&user);
        }
    }

    /// Publishes a host event to the operators who subscribed to host events.
    pub fn publish_host(&self, event: HostEvent) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        inner.seq += 1;
        let seq = inner.seq;
        inner.host.apply(&event);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let text: Utf8Bytes = serde_json::to_string(&HostWire {
            seq,
            r#type: "host",
            event: &event,
        })
        .expect("host events serialize")
        .into();
        let mut operators = std::mem::take(&mut inner.operators);
        self.fan_out(&mut operators, &text);
        inner.operators = operators;
    }

    /// Queues `text` on each subscriber; drops (and marks) those whose queue is full.
    fn fan_out(&self, subscribers: &mut Vec<Subscriber>, text: &Utf8Bytes) {
        subscribers.retain(|sub| match sub.tx.try_send(text.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                sub.dropped.mark();
                self.stats.slow_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subscriber = sub.id,
                    queue_max = self.queue_max,
                    "live connection dropped: its queue is full"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Subscribes to `user`'s events; the snapshot and the queue start at the same point.
    pub fn subscribe(&self, user: UserId) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue_max);
        let dropped = Arc::new(Dropped::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().expect("lock poisoned");
        let profiles = inner
            .profiles
            .values()
            .filter(|v| v.info.user == user)
            .cloned()
            .collect();
        inner.users.entry(user).or_default().push(Subscriber {
            id,
            tx,
            dropped: dropped.clone(),
        });
        Subscription {
            seq: inner.seq,
            profiles,
            rx,
            dropped,
            id,
        }
    }

    /// Adds an existing subscription to the host events (the caller checked it is an
    /// operator). Returns the host state as of now; `None` if the subscriber is gone.
    pub fn subscribe_host(&self, user: UserId, id: u64) -> Option<(u64, HostView)> {
        let mut inner = self.inner.lock().expect("lock poisoned");
        if inner.operators.iter().any(|s| s.id == id) {
            return Some((inner.seq, inner.host.clone()));
        }
        let sub = inner
            .users
            .get(&user)?
            .iter()
            .find(|s| s.id == id)
            .map(|s| Subscriber {
                id,
                tx: s.tx.clone(),
                dropped: s.dropped.clone(),
            })?;
        inner.operators.push(sub);
        Some((inner.seq, inner.host.clone()))
    }

    /// Removes a subscriber (its connection ended).
    pub fn unsubscribe(&self, user: UserId, id: u64) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        if let Some(subs) = inner.users.get_mut(&user) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                inner.users.remove(&user);
            }
        }
        inner.operators.retain(|s| s.id != id);
    }

    /// Publishes a `loop_stalled` event for each profile loop whose last iteration ended more
    /// than its stall threshold before `now_ms` (host clock), once per stall.
    pub fn mark_stalled(&self, now_ms: i64) {
        let stalled: Vec<(UserId, ProfileId, &'static str, i64)> = {
            let inner = self.inner.lock().expect("lock poisoned");
            inner
                .profiles
                .values()
                .flat_map(|view| {
                    view.loops.iter().filter_map(move |(name, run)| {
                        let lag_ms = now_ms - run.last_run_ms;
                        let state = view.loop_states.get(name).copied();
                        (run.last_run_ms > 0
                            && state == Some("ok")
                            && lag_ms > self.loop_config.stall_ms(name) as i64)
                            .then_some((view.info.user, view.info.profile, *name, lag_ms))
                    })
                })
                .collect()
        };
        for (user, profile, name, lag_ms) in stalled {
            self.publish(user, profile, ProfileEvent::LoopStalled { name, lag_ms });
        }
    }

    /// A feed for one profile's loops.
    pub fn feed(self: &Arc<Self>, profile: ProfileId, user: UserId) -> ProfileFeed {
        ProfileFeed::new(self.clone(), profile, user)
    }
}

/// Watches the loops, readiness and the host kill switch, and publishes host events when one
/// changes, until `stop` turns true.
pub async fn watch_host(
    bus: Arc<Bus>,
    health: Arc<LoopHealth>,
    switches: Option<Arc<HostSwitches>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(HOST_WATCH_INTERVAL_MS));
    let mut seen = HostView::default();
    let mut sent_at: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut first = true;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tick.tick() => {}
        }
        let now_ms = crate::health::wall_now_ms();
        bus.mark_stalled(now_ms);
        for (name, status) in loop_statuses(&health, bus.loop_config()) {
            let view = LoopStatusView::from(&status);
            // A change of state is news at once; otherwise the age of the last run is
            // refreshed now and then (every iteration would flood the operators).
            let changed = seen.loops.get(name).map(|s| s.state) != Some(view.state);
            let due = sent_at
                .get(name)
                .is_none_or(|at| now_ms - at >= HOST_LOOP_REFRESH_MS as i64);
            if first || changed || due {
                sent_at.insert(name, now_ms);
                let event = HostEvent::LoopState { name, status: view };
                seen.apply(&event);
                bus.publish_host(event);
            }
        }
        let ready = health.is_ready();
        if first || ready != seen.ready {
            seen.ready = ready;
            bus.publish_host(HostEvent::Ready { ready });
        }
        let kill = switches
            .as_ref()
            .is_some_and(|s| s.kill.load(Ordering::Relaxed));
        if first || kill != seen.host_kill {
            seen.host_kill = kill;
            bus.publish_host(HostEvent::HostKill { on: kill });
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol(text: &str) -> Symbol {
        Symbol::new(text).unwrap()
    }

    fn info(symbols: &[&str]) -> ProfileInfo {
        ProfileInfo {
            profile: ProfileId::new_random(),
            user: UserId::new_random(),
            name: "two".to_owned(),
            plugin: "sma_cross.wasm".to_owned(),
            plugin_version: "00".to_owned(),
            symbols: symbols.iter().map(|s| symbol(s)).collect(),
        }
    }

    fn candle(text: &str, open_time_ms: i64, close: f64) -> ProfileEvent {
        ProfileEvent::Candle {
            symbol: symbol(text),
            open_time_ms,
            close,
        }
    }

    #[test]
    fn a_profile_keeps_the_recent_candles_of_each_of_its_symbols_apart_and_bounded() {
        let mut view = ProfileView::new(info(&["BTCUSDT", "ETHUSDT"]));
        let candles_per_symbol = RECENT_CANDLES_MAX as i64 + 7;
        for i in 0..candles_per_symbol {
            let t = i * 60_000;
            view.apply(&candle("BTCUSDT", t, 100_000.0 + i as f64));
            view.apply(&candle("ETHUSDT", t, 3_000.0 + i as f64));
            // A symbol the profile was not registered with gets no chart.
            view.apply(&candle("SOLUSDT", t, 150.0));
        }
        let symbols: Vec<&str> = view.recent_candles.keys().map(Symbol::as_str).collect();
        assert_eq!(symbols, ["BTCUSDT", "ETHUSDT"]);
        for (text, base) in [("BTCUSDT", 100_000.0), ("ETHUSDT", 3_000.0)] {
            let kept = &view.recent_candles[&symbol(text)];
            assert_eq!(kept.len(), RECENT_CANDLES_MAX, "{text}");
            // The newest kept, oldest first, each symbol's own prices.
            let first = candles_per_symbol - RECENT_CANDLES_MAX as i64;
            assert_eq!(kept.front(), Some(&(first * 60_000, base + first as f64)));
            let last = candles_per_symbol - 1;
            assert_eq!(kept.back(), Some(&(last * 60_000, base + last as f64)));
        }
        let last = view.last_candle.as_ref().expect("a last candle");
        assert_eq!(last.symbol.as_str(), "SOLUSDT");

        // The snapshot carries each symbol's candles under its name.
        let json = serde_json::to_value(&view).unwrap();
        let btc = json["recent_candles"]["BTCUSDT"].as_array().unwrap();
        let eth = json["recent_candles"]["ETHUSDT"].as_array().unwrap();
        assert_eq!(
            (btc.len(), eth.len()),
            (RECENT_CANDLES_MAX, RECENT_CANDLES_MAX)
        );
        assert_eq!(
            eth.last().unwrap()[1],
            3_000.0 + (candles_per_symbol - 1) as f64
        );
        assert!(json["recent_candles"].get("SOLUSDT").is_none(), "{json}");
        assert_eq!(json["symbols"], serde_json::json!(["BTCUSDT", "ETHUSDT"]));
    }

    #[test]
    fn registering_a_profile_again_drops_the_candles_of_a_symbol_it_no_longer_trades() {
        let mut view = ProfileView::new(info(&["BTCUSDT", "ETHUSDT"]));
        view.apply(&candle("BTCUSDT", 0, 100_000.0));
        view.apply(&candle("ETHUSDT", 0, 3_000.0));
        let mut fewer = view.info.clone();
        fewer.symbols = vec![symbol("ETHUSDT")];
        view.register(fewer);
        let symbols: Vec<&str> = view.recent_candles.keys().map(Symbol::as_str).collect();
        assert_eq!(symbols, ["ETHUSDT"]);
        view.apply(&candle("BTCUSDT", 60_000, 100_001.0));
        assert!(!view.recent_candles.contains_key(&symbol("BTCUSDT")));
    }
}
