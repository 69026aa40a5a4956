//! What one profile's loops publish after each step: the difference between the engine's book
//! now and what the feed last published, plus the step's own news (its candle, the exchange's
//! fills, a plugin fault, the loop's run), and the plugin it runs once a hot-swap was taken.
//!
//! The book holds open orders only, so an order that left it during the step (filled,
//! cancelled, rejected) is read once from the store to publish its final state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel_kernel::engine::{ProfileControls, ProfileEngine, ReconcileReport};
use keel_kernel::exchange::UserEvent;
use keel_kernel::ids::{ClientOrderId, ProfileId, Symbol, UserId};
use keel_kernel::ledger::Capital;
use keel_kernel::lifecycle::{OrderRecord, Position};
use keel_kernel::market::Candle;
use keel_kernel::risk::EntryBlock;
use keel_kernel::strategy::PluginFault;
use keel_runtime::{RunningVersion, SwapHandle};

use super::{Bus, OrderState, ProfileEvent};
use crate::health::{LoopRun, QuarantineView, wall_now_ms};

/// What a loop did in one step, as the feed needs it.
#[derive(Debug, Default)]
pub struct StepReport<'a> {
    /// The loop (`trading`, `monitor`, `reconciliation`).
    pub loop_name: &'static str,
    /// The loop's run as recorded for the health endpoint.
    pub run: Option<LoopRun>,
    /// The candle the trading loop decided on.
    pub candle: Option<&'a Candle>,
    /// The exchange events the monitor loop applied.
    pub user_events: &'a [UserEvent],
    /// Orders the step sent.
    pub orders_sent: &'a [ClientOrderId],
    /// The plugin fault of the step.
    pub fault: Option<&'a PluginFault>,
    /// How many intents the kernel refused in the step (the engine keeps the latest).
    pub refused: usize,
    /// The reconciliation pass of the step.
    pub reconciliation: Option<&'a ReconcileReport>,
}

/// What the feed last published about the profile.
#[derive(Debug, Default)]
struct Published {
    orders: BTreeMap<ClientOrderId, OrderRecord>,
    positions: BTreeMap<Symbol, Position>,
    capital: Option<Capital>,
    status: Option<(ProfileControls, Option<EntryBlock>, Option<QuarantineView>)>,
    plugin: Option<RunningVersion>,
}

/// One profile's publisher, owned by its loop task.
pub struct ProfileFeed {
    bus: Arc<Bus>,
    profile: ProfileId,
    user: UserId,
    published: Published,
    /// The strategy's swap handle: what it runs is read after each step.
    plugin: Option<SwapHandle>,
}

impl ProfileFeed {
    pub(super) fn new(bus: Arc<Bus>, profile: ProfileId, user: UserId) -> Self {
        ProfileFeed {
            bus,
            profile,
            user,
            published: Published::default(),
            plugin: None,
        }
    }

    /// Reports the plugin the strategy behind `swap` runs: a `plugin` event after the step in
    /// which a new instance took over (a hot-swap or a reconfiguration).
    pub fn watch_plugin(mut self, swap: SwapHandle) -> Self {
        self.published.plugin = Some(swap.running());
        self.plugin = Some(swap);
        self
    }

    fn send(&self, event: ProfileEvent) {
        self.bus.publish(self.user, self.profile, event);
    }

    /// Publishes what changed in `engine` during the step `step`.
    ///
    /// Takes the engine by `&mut` only so that the future is `Send` (the engine is not `Sync`).
    pub async fn after_step(&mut self, engine: &mut ProfileEngine, step: StepReport<'_>) {
        // First: what the step's orders came from.
        if let Some(swap) = &self.plugin {
            let running = swap.running();
            if self.published.plugin.as_ref() != Some(&running) {
                self.send(ProfileEvent::Plugin {
                    plugin: running.name.to_string(),
                    plugin_version: running.digest.to_string(),
                    at_ms: wall_now_ms(),
                });
                self.published.plugin = Some(running);
            }
        }
        if let Some(candle) = step.candle {
            self.send(ProfileEvent::Candle {
                symbol: candle.symbol.clone(),
                open_time_ms: candle.open_time_ms,
                close: candle.close,
            });
        }
        for event in self.own(step.user_events) {
            if let UserEvent::Fill(fill) = event {
                self.send(ProfileEvent::Fill {
                    client_order_id: fill.client_order_id.clone(),
                    symbol: fill.symbol.clone(),
                    side: fill.side,
                    price: fill.price.get(),
                    qty: fill.qty.get(),
                    fee: fill.fee.into(),
                    time_ms: fill.time_ms,
                });
            }
        }
        self.orders(engine, &step).await;
        self.positions(engine);
        let capital = engine.book().capital;
        if self.published.capital != Some(capital) {
            self.published.capital = Some(capital);
            self.send(ProfileEvent::Capital {
                capital: (&capital).into(),
            });
        }
        let status = (
            engine.controls(),
            engine.entry_block(),
            engine.quarantine().map(QuarantineView::of),
        );
        if self.published.status.as_ref() != Some(&status) {
            self.send(ProfileEvent::Status {
                controls: status.0,
                entry_block: status.1,
                quarantine: status.2.clone(),
            });
            self.published.status = Some(status);
        }
        self.refusals(engine, step.refused);
        if let Some(report) = step.reconciliation.filter(|r| !r.mismatches.is_empty()) {
            self.send(ProfileEvent::Drift {
                at_ms: wall_now_ms(),
                result: report.result_label(),
                mismatches: report.mismatches.clone(),
            });
        }
        if let Some(fault) = step.fault {
            self.send(ProfileEvent::Fault {
                at_ms: wall_now_ms(),
                fault: fault.to_string(),
            });
        }
        if let Some(run) = step.run {
            self.send(ProfileEvent::Loop {
                name: step.loop_name,
                run,
            });
        }
    }

    /// The `refused` latest refusals of the engine: those of the step.
    fn refusals(&self, engine: &ProfileEngine, refused: usize) {
        if refused == 0 {
            return;
        }
        let kept: Vec<_> = engine.refusals().collect();
        for refusal in &kept[kept.len().saturating_sub(refused)..] {
            self.send(ProfileEvent::Refusal {
                at_ms: refusal.at_ms,
                rule: refusal.rule,
                reason: refusal.reason.clone(),
            });
        }
    }

    /// Open orders that are new or changed, and orders that left the book (read from the store).
    async fn orders(&mut self, engine: &mut ProfileEngine, step: &StepReport<'_>) {
        let open = &engine.book().open_orders;
        for (id, order) in open {
            if self.published.orders.get(id) != Some(order) {
                self.published.orders.insert(id.clone(), order.clone());
                self.send(ProfileEvent::Order {
                    order: order.into(),
                });
            }
        }
        let mut gone: BTreeSet<ClientOrderId> = self
            .published
            .orders
            .keys()
            .filter(|id| !open.contains_key(*id))
            .cloned()
            .collect();
        gone.extend(
            step.orders_sent
                .iter()
                .filter(|id| !open.contains_key(*id))
                .cloned(),
        );
        for event in self.own(step.user_events) {
            let (id, _) = attribution(event);
            if !open.contains_key(id) {
                gone.insert(id.clone());
            }
        }
        if gone.is_empty() {
            return;
        }
        let tenant = self.bus.store().tenant(self.user);
        for id in gone {
            let before = self.published.orders.remove(&id);
            match tenant.order(&id).await {
                Ok(Some(order)) if order.profile == self.profile => {
                    if before.as_ref() != Some(&order) {
                        self.send(ProfileEvent::Order {
                            order: OrderState::from(&order),
                        });
                    }
                }
                // Not this tenant's or this profile's (an exchange event for someone else's
                // order is never published here), or not written (refused before write-ahead).
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(profile_id = %self.profile, client_order_id = %id, %error, "live feed could not read a settled order");
                }
            }
        }
    }

    /// The exchange events that are this profile's: those of an order whose client order id
    /// was derived for it. A monitor loop sees every event of its exchange account, and an
    /// account may be shared by profiles of several owners, so nothing else may be published.
    fn own<'e>(&self, events: &'e [UserEvent]) -> impl Iterator<Item = &'e UserEvent> {
        let profile = self.profile;
        events.iter().filter(move |event| {
            let (id, symbol) = attribution(event);
            id.is_derived_for(profile, symbol)
        })
    }

    fn positions(&mut self, engine: &ProfileEngine) {
        let now = &engine.book().positions;
        for (symbol, position) in now {
            if self.published.positions.get(symbol) != Some(position) {
                self.published
                    .positions
                    .insert(symbol.clone(), position.clone());
                self.send(ProfileEvent::Position {
                    symbol: symbol.clone(),
                    position: Some(position.into()),
                });
            }
        }
        let closed: Vec<Symbol> = self
            .published
            .positions
            .keys()
            .filter(|s| !now.contains_key(*s))
            .cloned()
            .collect();
        for symbol in closed {
            self.published.positions.remove(&symbol);
            self.send(ProfileEvent::Position {
                symbol,
                position: None,
            });
        }
    }
}

/// The order an exchange event is about: its client order id and symbol.
fn attribution(event: &UserEvent) -> (&ClientOrderId, &Symbol) {
    match event {
        UserEvent::Order(report) => (&report.client_order_id, &report.symbol),
        UserEvent::Fill(fill) => (&fill.client_order_id, &fill.symbol),
    }
}
