//! The invariants of docs/invariants.md, checked after every step of the simulation, and the
//! convergence check at the end of a seed.

use std::collections::{BTreeMap, BTreeSet};

use keel_kernel::engine::EngineError;
use keel_kernel::ids::{ClientOrderId, IntentKind};
use keel_kernel::market::Side;
use keel_kernel::order::OrderStatus;
use keel_kernel::store::StoreError;
use rust_decimal::Decimal;
use serde::Serialize;

use super::world::World;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// The seed that replays it: `keel simulate --seed SEED`.
    pub seed: u64,
    /// The step after which it was found; absent for the end-of-run convergence check.
    pub step: Option<u32>,
    /// Which invariant (see docs/testing.md).
    pub invariant: &'static str,
    /// What exactly broke.
    pub detail: String,
}

/// Counts checks and collects violations for one seed.
#[derive(Debug, Default)]
pub struct Checker {
    /// Invariant evaluations so far.
    pub checks: u64,
    /// What broke.
    pub violations: Vec<Violation>,
    capital_constraint_seen: u64,
    lock_steals_seen: u64,
}

/// The step number the end-of-run phase uses.
pub const CONVERGENCE: u32 = u32::MAX;

impl Checker {
    fn expect(
        &mut self,
        world: &World,
        step: u32,
        holds: bool,
        invariant: &'static str,
        detail: impl FnOnce() -> String,
    ) {
        self.checks += 1;
        if !holds {
            self.violations.push(Violation {
                seed: world.seed,
                step: (step != CONVERGENCE).then_some(step),
                invariant,
                detail: detail(),
            });
        }
    }

    /// Judges what one engine call returned. A failed exchange query or a failed database
    /// (an injected transaction failure, a crash) is the world's doing and is repaired later;
    /// anything else is the store or the database refusing a write the kernel should never
    /// have attempted.
    pub fn note(&mut self, world: &World, step: u32, result: Result<(), EngineError>) {
        let Err(error) = result else { return };
        let expected = matches!(
            error,
            EngineError::Exchange(_) | EngineError::Store(StoreError::Database(_))
        );
        self.expect(world, step, expected, "kernel_write_refused", || {
            format!("the store refused a write the kernel attempted: {error}")
        });
    }

    /// Every invariant that must hold between two steps.
    pub async fn check_step(&mut self, world: &mut World, step: u32) -> anyhow::Result<()> {
        if world.injector.crashed() {
            // The host is down; the restart at the end of the step comes before the next check.
            return Ok(());
        }
        self.check_ledger(world, step).await?;
        self.check_orders(world, step).await?;
        self.check_guards(world, step).await?;
        Ok(())
    }

    async fn check_ledger(&mut self, world: &World, step: u32) -> anyhow::Result<()> {
        let tenant = world.store.tenant(world.user);
        let capital = tenant.capital(world.profile).await?;
        self.expect(
            world,
            step,
            capital.holds_invariant(),
            "capital_invariant",
            || format!("capital row breaks the invariant: {capital}"),
        );
        let rebuild = tenant.rebuild_capital(world.profile, false).await?;
        self.expect(
            world,
            step,
            !rebuild.differs(),
            "capital_equals_journal",
            || {
                format!(
                    "capital row {} differs from its journal {}",
                    rebuild.stored, rebuild.journal
                )
            },
        );
        let open = tenant.open_orders(world.profile).await?;
        let reserved: Decimal = open.iter().map(|o| o.reserved_remaining.get()).sum();
        self.expect(
            world,
            step,
            reserved == capital.reserved_for_orders.get(),
            "reservations_match_open_orders",
            || {
                format!(
                    "open orders reserve {reserved}, the capital row {}",
                    capital.reserved_for_orders
                )
            },
        );
        let positions = tenant.positions(world.profile).await?;
        let cost: Decimal = positions.iter().map(|p| p.cost_open).sum();
        self.expect(
            world,
            step,
            cost == capital.reserved_for_positions.get(),
            "position_cost_matches",
            || {
                format!(
                    "open positions cost {cost}, the capital row holds {}",
                    capital.reserved_for_positions
                )
            },
        );
        let symbols: BTreeSet<_> = positions.iter().map(|p| &p.symbol).collect();
        self.expect(
            world,
            step,
            symbols.len() == positions.len(),
            "one_open_position",
            || {
                format!(
                    "{} open ENTRY lifecycles on {} symbols",
                    positions.len(),
                    symbols.len()
                )
            },
        );
        Ok(())
    }

    async fn check_orders(&mut self, world: &World, step: u32) -> anyhow::Result<()> {
        let open = world
            .store
            .tenant(world.user)
            .open_orders(world.profile)
            .await?;
        let mut entries: BTreeMap<&str, u32> = BTreeMap::new();
        for order in open.iter().filter(|o| o.kind == IntentKind::Entry) {
            *entries.entry(order.symbol.as_str()).or_default() += 1;
        }
        for (symbol, count) in entries {
            self.expect(world, step, count <= 1, "one_entry_in_flight", || {
                format!("{count} ENTRY orders open on {symbol}")
            });
        }
        for order in &open {
            let executed = exchange_executed(world, order);
            self.expect(
                world,
                step,
                order.qty_remaining() >= Decimal::ZERO && order.filled_qty.get() <= executed,
                "fills_applied_once",
                || {
                    format!(
                        "order {} records {} filled of {}; the exchange executed {executed}",
                        order.client_order_id, order.filled_qty, order.qty
                    )
                },
            );
        }
        for (id, times) in world.injector.sent() {
            self.expect(
                world,
                step,
                times <= 1,
                "one_exchange_order_per_client_order_id",
                || format!("client order id {id} was sent to the exchange {times} times"),
            );
        }
        Ok(())
    }

    /// Protections whose failure another layer may still catch: the attempt itself is the
    /// violation.
    async fn check_guards(&mut self, world: &World, step: u32) -> anyhow::Result<()> {
        let refused = world.metrics.capital_invariant_violations_total.get();
        let new = refused - self.capital_constraint_seen;
        self.capital_constraint_seen = refused;
        self.expect(world, step, new == 0, "capital_checked_before_database", || {
            format!("the database's capital_invariant CHECK refused {new} write(s) the kernel's check should have refused first")
        });
        let steals = world.database.entry_lock_steals().await?;
        let new = steals - self.lock_steals_seen;
        self.lock_steals_seen = steals;
        self.expect(world, step, new == 0, "entry_lock_excludes", || {
            format!("an entry lock was taken {new} time(s) from an owner whose lease was live")
        });
        let mut refusals: Vec<String> = world
            .engine
            .refusals()
            .filter(|r| r.at_ms == world.now_ms)
            .map(|r| r.reason.clone())
            .collect();
        refusals.extend(world.injector.twin_refusals_at(world.now_ms).await);
        for reason in refusals {
            self.expect(
                world,
                step,
                !reason.starts_with("the database refused"),
                "database_refused_kernel_write",
                || reason.clone(),
            );
        }
        self.expect(
            world,
            step,
            !world.engine.controls().quarantined,
            "no_unrepairable_drift",
            || "reconciliation could not repair a drift: the profile is quarantined".to_owned(),
        );
        Ok(())
    }

    /// After faults stop and reconciliation ran: the database equals the exchange.
    pub async fn check_converged(&mut self, world: &mut World) -> anyhow::Result<()> {
        let step = CONVERGENCE;
        let tenant = world.store.tenant(world.user);
        let db_open: BTreeSet<ClientOrderId> = tenant
            .open_orders(world.profile)
            .await?
            .into_iter()
            .map(|o| o.client_order_id)
            .collect();
        let exchange_open: BTreeSet<ClientOrderId> = world
            .paper
            .with_engine(|e| e.open_orders(None))
            .into_iter()
            .map(|r| r.client_order_id)
            .collect();
        self.expect(
            world,
            step,
            db_open == exchange_open,
            "database_equals_exchange",
            || format!("open orders differ: database {db_open:?}, exchange {exchange_open:?}"),
        );
        for id in world.injector.sent().into_keys() {
            let stored = tenant.order(&id).await?;
            let live = world.paper.with_engine(|e| {
                e.symbols()
                    .find_map(|rules| e.order(&rules.symbol, &id).cloned())
            });
            let agree = match (&stored, &live) {
                (Some(s), Some(l)) => {
                    s.filled_qty.get() == l.executed_qty && s.status.is_open() == l.status.is_open()
                }
                (None, None) => true,
                _ => false,
            };
            self.expect(world, step, agree, "database_equals_exchange", || {
                format!(
                    "order {id}: database {:?}, exchange {:?}",
                    stored.map(|s| (s.status, s.filled_qty)),
                    live.map(|l| (l.status, l.executed_qty))
                )
            });
        }
        for id in world.injector.exits_attempted() {
            let Some(stored) = tenant.order(&id).await? else {
                continue;
            };
            // Released without the exchange ever seeing it: a transient answer dropped the exit.
            let dropped =
                stored.status == OrderStatus::Rejected && !world.injector.sent().contains_key(&id);
            self.expect(world, step, !dropped, "exit_never_dropped", || {
                format!("exit {id} was released as REJECTED but never reached the exchange")
            });
        }
        let mut stored: BTreeMap<String, Decimal> = BTreeMap::new();
        for position in tenant.positions(world.profile).await? {
            let signed = match position.side {
                Side::Buy => position.qty_open,
                Side::Sell => -position.qty_open,
            };
            stored.insert(position.symbol.to_string(), signed);
        }
        let live: BTreeMap<String, Decimal> = world
            .paper
            .with_engine(|e| e.positions())
            .into_iter()
            .filter(|p| !p.qty.is_zero())
            .map(|p| (p.symbol.to_string(), p.qty))
            .collect();
        self.expect(
            world,
            step,
            stored == live,
            "database_equals_exchange",
            || format!("positions differ: database {stored:?}, exchange {live:?}"),
        );
        Ok(())
    }
}

fn exchange_executed(world: &World, order: &keel_kernel::lifecycle::OrderRecord) -> Decimal {
    world.paper.with_engine(|e| {
        e.order(&order.symbol, &order.client_order_id)
            .map_or(Decimal::ZERO, |r| r.executed_qty)
    })
}
