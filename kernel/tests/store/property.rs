//! A state-machine property test: random sequences of allocations, entries, acceptances,
//! partial and full fills, cancels, exits, fees and replays, run against the store and against
//! a plain in-memory model. After every step the capital row equals the model's, the invariant
//! holds, and at the end the journal rebuilds the row exactly.
//!
//! A failure prints `KEEL_PROPTEST_SEED=<n>`; setting it replays the same cases.

use std::collections::HashMap;

use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use keel_kernel::ledger::{Capital, LedgerError};
use keel_kernel::lifecycle::{
    EntryRequest, FillOutcome, FillReport, LifecycleError, StatusOutcome, WriteAhead,
};
use keel_kernel::lock::Lease;
use keel_kernel::market::Side;
use keel_kernel::money::{Amount, Price, Qty};
use keel_kernel::order::{OrderStatus, Transition};
use keel_kernel::store::{Store, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::fixtures::*;
use crate::support::{LiteTestDb, PgTestDb};

/// Symbols a case trades: few, so that operations meet on the same symbol often.
const SYMBOLS: [&str; 3] = ["AAAUSDT", "BBBUSDT", "CCCUSDT"];
/// Capital every case starts with.
const OPENING_BALANCE: i64 = 500;
/// Operations per case.
const OPS_PER_CASE_MAX: usize = 40;

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        units: u32,
    },
    Entry {
        sym: usize,
        qty_tenths: u32,
        price_halves: u32,
    },
    Accept {
        sym: usize,
    },
    Unknown {
        sym: usize,
    },
    Cancel {
        sym: usize,
    },
    Fill {
        sym: usize,
        qty_tenths: u32,
        price_halves: u32,
        fee_cents: u32,
    },
    Exit {
        sym: usize,
        qty_tenths: u32,
        price_halves: u32,
    },
    ExitFill {
        sym: usize,
        qty_tenths: u32,
        price_halves: u32,
        fee_cents: u32,
    },
    ReplayLastFill,
    ReplayEntry {
        sym: usize,
    },
    ReplayEntryDifferent {
        sym: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let sym = 0..SYMBOLS.len();
    prop_oneof![
        2 => (1u32..2_000).prop_map(|units| Op::Allocate { units }),
        4 => (sym.clone(), 1u32..30, 1u32..400)
            .prop_map(|(sym, qty_tenths, price_halves)| Op::Entry { sym, qty_tenths, price_halves }),
        2 => sym.clone().prop_map(|sym| Op::Accept { sym }),
        1 => sym.clone().prop_map(|sym| Op::Unknown { sym }),
        2 => sym.clone().prop_map(|sym| Op::Cancel { sym }),
        5 => (sym.clone(), 1u32..20, 1u32..400, 0u32..100).prop_map(|(sym, qty_tenths, price_halves, fee_cents)| {
            Op::Fill { sym, qty_tenths, price_halves, fee_cents }
        }),
        3 => (sym.clone(), 1u32..20, 1u32..400)
            .prop_map(|(sym, qty_tenths, price_halves)| Op::Exit { sym, qty_tenths, price_halves }),
        4 => (sym.clone(), 1u32..20, 1u32..400, 0u32..100).prop_map(|(sym, qty_tenths, price_halves, fee_cents)| {
            Op::ExitFill { sym, qty_tenths, price_halves, fee_cents }
        }),
        2 => Just(Op::ReplayLastFill),
        1 => sym.clone().prop_map(|sym| Op::ReplayEntry { sym }),
        1 => sym.prop_map(|sym| Op::ReplayEntryDifferent { sym }),
    ]
}

/// How an operation ended, as far as the model can predict it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    NoChange,
    Insufficient,
    InFlight,
    NoPosition,
    ExceedsPosition,
    Overfill,
    InvalidTransition,
    Mismatch,
}

fn classify<T>(result: &Result<T, StoreError>, no_change: impl Fn(&T) -> bool) -> Outcome {
    match result {
        Ok(value) if no_change(value) => Outcome::NoChange,
        Ok(_) => Outcome::Done,
        Err(StoreError::Ledger(LedgerError::InsufficientCapital { .. })) => Outcome::Insufficient,
        Err(StoreError::Lifecycle(e)) => match e {
            LifecycleError::EntryInFlight { .. } => Outcome::InFlight,
            LifecycleError::NoOpenPosition { .. } => Outcome::NoPosition,
            LifecycleError::ExitExceedsPosition { .. } => Outcome::ExceedsPosition,
            LifecycleError::Overfill { .. } => Outcome::Overfill,
            LifecycleError::InvalidTransition(_) => Outcome::InvalidTransition,
            LifecycleError::ReplayMismatch(_) | LifecycleError::FillReplayMismatch(_) => {
                Outcome::Mismatch
            }
            other => panic!("unexpected lifecycle error {other:?}"),
        },
        Err(other) => panic!("unexpected store error {other:?}"),
    }
}

#[derive(Debug, Clone)]
struct ModelOrder {
    request: Option<EntryRequest>,
    coid: ClientOrderId,
    qty: Decimal,
    price: Decimal,
    filled: Decimal,
    reserved_remaining: Decimal,
    status: OrderStatus,
}

#[derive(Debug, Clone, Default)]
struct ModelPosition {
    qty_open: Decimal,
    cost_open: Decimal,
}

/// The model's capital row: plain decimals, where the kernel's row holds checked amounts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ModelCapital {
    allocated: Decimal,
    reserved_for_orders: Decimal,
    reserved_for_positions: Decimal,
    realized_pnl: Decimal,
}

impl ModelCapital {
    /// True when the stored row holds exactly these amounts.
    fn matches(&self, stored: &Capital) -> bool {
        stored.allocated.get() == self.allocated
            && stored.reserved_for_orders.get() == self.reserved_for_orders
            && stored.reserved_for_positions.get() == self.reserved_for_positions
            && stored.realized_pnl.get() == self.realized_pnl
    }
}

/// The model: plain arithmetic on decimals, written independently of the kernel's ledger.
#[derive(Debug, Clone, Default)]
struct Model {
    capital: ModelCapital,
    entries: HashMap<usize, ModelOrder>,
    exits: HashMap<usize, Vec<ModelOrder>>,
    positions: HashMap<usize, ModelPosition>,
}

fn round_up8(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(8, RoundingStrategy::AwayFromZero)
}

fn round_half8(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(8, RoundingStrategy::MidpointAwayFromZero)
}

fn free(c: &ModelCapital) -> Decimal {
    c.allocated - c.reserved_for_orders - c.reserved_for_positions + c.realized_pnl
}

fn is_open(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::PendingSubmit
            | OrderStatus::Unknown
            | OrderStatus::New
            | OrderStatus::PartiallyFilled
    )
}

/// Applies capital moves one after the other; `None` when one leaves free capital negative.
fn moved(capital: &ModelCapital, moves: &[(Decimal, Decimal, Decimal)]) -> Option<ModelCapital> {
    let mut c = *capital;
    for (d_orders, d_positions, d_pnl) in moves {
        c.reserved_for_orders += d_orders;
        c.reserved_for_positions += d_positions;
        c.realized_pnl += d_pnl;
        if free(&c) < Decimal::ZERO {
            return None;
        }
    }
    Some(c)
}

fn tenths(n: u32) -> Decimal {
    Decimal::new(i64::from(n), 1)
}

fn halves(n: u32) -> Decimal {
    Decimal::from(n) / Decimal::from(2)
}

fn cents(n: u32) -> Decimal {
    Decimal::new(i64::from(n), 2)
}

struct Case<'a> {
    store: &'a Store,
    user: UserId,
    profile: ProfileId,
    leases: Vec<Lease>,
    model: Model,
    seq: u64,
    trade: u64,
    last_fill: Option<FillReport>,
}

impl Case<'_> {
    fn symbol(&self, sym: usize) -> Symbol {
        sym_of(sym)
    }

    fn fill_report(
        &mut self,
        coid: &ClientOrderId,
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> FillReport {
        self.trade += 1;
        FillReport {
            client_order_id: coid.clone(),
            exchange_trade_id: format!("t{}", self.trade),
            qty: Qty::new(qty).unwrap(),
            price: Price::new(price).unwrap(),
            fee,
            executed_at_ms: 0,
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        let tenant = self.store.tenant(self.user);
        let (expected, actual) = match *op {
            Op::Allocate { units } => {
                let amount = Decimal::from(units);
                let result = tenant
                    .allocate(self.profile, Amount::positive(amount).unwrap())
                    .await;
                self.model.capital.allocated += amount;
                (Outcome::Done, classify(&result, |_| false))
            }
            Op::Entry {
                sym,
                qty_tenths,
                price_halves,
            } => {
                self.entry(sym, tenths(qty_tenths), halves(price_halves))
                    .await
            }
            Op::Accept { sym } => self.status(sym, OrderStatus::New).await,
            Op::Unknown { sym } => self.status(sym, OrderStatus::Unknown).await,
            Op::Cancel { sym } => self.status(sym, OrderStatus::Canceled).await,
            Op::Fill {
                sym,
                qty_tenths,
                price_halves,
                fee_cents,
            } => {
                self.entry_fill(
                    sym,
                    tenths(qty_tenths),
                    halves(price_halves),
                    cents(fee_cents),
                )
                .await
            }
            Op::Exit {
                sym,
                qty_tenths,
                price_halves,
            } => {
                self.exit(sym, tenths(qty_tenths), halves(price_halves))
                    .await
            }
            Op::ExitFill {
                sym,
                qty_tenths,
                price_halves,
                fee_cents,
            } => {
                self.exit_fill(
                    sym,
                    tenths(qty_tenths),
                    halves(price_halves),
                    cents(fee_cents),
                )
                .await
            }
            Op::ReplayLastFill => match self.last_fill.clone() {
                None => return Ok(()),
                Some(report) => {
                    let result = tenant.record_fill(&report).await;
                    (
                        Outcome::NoChange,
                        classify(&result, |o| *o == FillOutcome::Duplicate),
                    )
                }
            },
            Op::ReplayEntry { sym } | Op::ReplayEntryDifferent { sym } => {
                let Some(mut request) =
                    self.model.entries.get(&sym).and_then(|o| o.request.clone())
                else {
                    return Ok(());
                };
                let different = matches!(op, Op::ReplayEntryDifferent { .. });
                if different {
                    request.qty = Qty::new(request.qty.get() + Decimal::ONE).unwrap();
                }
                let result = tenant.write_ahead_entry(&request).await;
                let expected = if different {
                    Outcome::Mismatch
                } else {
                    Outcome::NoChange
                };
                (
                    expected,
                    classify(&result, |w| matches!(w, WriteAhead::Replayed(_))),
                )
            }
        };
        if expected != actual {
            return Err(format!(
                "{op:?}: model expected {expected:?}, store did {actual:?}"
            ));
        }
        let stored = tenant
            .capital(self.profile)
            .await
            .map_err(|e| e.to_string())?;
        if !self.model.capital.matches(&stored) {
            return Err(format!(
                "{op:?}: store {stored} != model {:?}",
                self.model.capital
            ));
        }
        if !stored.holds_invariant() {
            return Err(format!("{op:?}: invariant broken: {stored}"));
        }
        Ok(())
    }

    async fn entry(&mut self, sym: usize, qty: Decimal, price: Decimal) -> (Outcome, Outcome) {
        self.seq += 1;
        let s = self.symbol(sym);
        let request = EntryRequest {
            profile: self.profile,
            client_order_id: ClientOrderId::derive(self.profile, &s, self.seq, IntentKind::Entry),
            symbol: s,
            side: Side::Buy,
            qty: Qty::new(qty).unwrap(),
            price: Price::new(price).unwrap(),
            lock: self.leases[sym].fenced(),
        };
        let result = self
            .store
            .tenant(self.user)
            .write_ahead_entry(&request)
            .await;
        let reserved = round_up8(qty * price);
        let in_flight = self
            .model
            .entries
            .get(&sym)
            .is_some_and(|o| is_open(o.status))
            || self
                .model
                .positions
                .get(&sym)
                .is_some_and(|p| p.qty_open > Decimal::ZERO);
        let expected = if reserved > free(&self.model.capital) {
            Outcome::Insufficient
        } else if in_flight {
            Outcome::InFlight
        } else {
            self.model.capital.reserved_for_orders += reserved;
            self.model.entries.insert(
                sym,
                ModelOrder {
                    coid: request.client_order_id.clone(),
                    request: Some(request),
                    qty,
                    price,
                    filled: Decimal::ZERO,
                    reserved_remaining: reserved,
                    status: OrderStatus::PendingSubmit,
                },
            );
            Outcome::Done
        };
        (expected, classify(&result, |_| false))
    }

    async fn status(&mut self, sym: usize, reported: OrderStatus) -> (Outcome, Outcome) {
        let Some(order) = self.model.entries.get(&sym).cloned() else {
            return (Outcome::NoChange, Outcome::NoChange);
        };
        let tenant = self.store.tenant(self.user);
        let result = match reported {
            OrderStatus::New => tenant.confirm_accepted(&order.coid, "x1").await,
            OrderStatus::Unknown => tenant.mark_unknown(&order.coid).await,
            other => tenant.release_order(&order.coid, other).await,
        };
        let actual = classify(&result, |o| matches!(o, StatusOutcome::Unchanged(_)));
        let expected = match order.status.apply(reported) {
            Err(_) => Outcome::InvalidTransition,
            Ok(Transition::Same | Transition::Stale) => Outcome::NoChange,
            Ok(Transition::Advance(next)) => {
                let entry = self.model.entries.get_mut(&sym).unwrap();
                entry.status = next;
                if next.is_terminal() {
                    self.model.capital.reserved_for_orders -= entry.reserved_remaining;
                    entry.reserved_remaining = Decimal::ZERO;
                }
                Outcome::Done
            }
        };
        (expected, actual)
    }

    async fn entry_fill(
        &mut self,
        sym: usize,
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> (Outcome, Outcome) {
        let Some(order) = self.model.entries.get(&sym).cloned() else {
            return (Outcome::NoChange, Outcome::NoChange);
        };
        let report = self.fill_report(&order.coid, qty, price, fee);
        let result = self.store.tenant(self.user).record_fill(&report).await;
        let actual = classify(&result, |_| false);
        if qty > order.qty - order.filled {
            return (Outcome::Overfill, actual);
        }
        let completes = order.filled + qty == order.qty;
        let reported = if completes {
            OrderStatus::Filled
        } else {
            OrderStatus::PartiallyFilled
        };
        let next = match order.status.apply(reported) {
            Err(_) => return (Outcome::InvalidTransition, actual),
            Ok(Transition::Advance(next)) => next,
            Ok(_) => order.status,
        };
        let released = if completes {
            order.reserved_remaining
        } else {
            round_up8(qty * order.price).min(order.reserved_remaining)
        };
        let cost = round_half8(qty * price);
        let Some(capital) = moved(
            &self.model.capital,
            &[
                (-released, cost, Decimal::ZERO),
                (Decimal::ZERO, Decimal::ZERO, -fee),
            ],
        ) else {
            return (Outcome::Insufficient, actual);
        };
        self.model.capital = capital;
        let entry = self.model.entries.get_mut(&sym).unwrap();
        entry.filled += qty;
        entry.reserved_remaining -= released;
        entry.status = next;
        let position = self.model.positions.entry(sym).or_default();
        position.qty_open += qty;
        position.cost_open += cost;
        self.last_fill = Some(report);
        (Outcome::Done, actual)
    }

    async fn exit(&mut self, sym: usize, qty: Decimal, price: Decimal) -> (Outcome, Outcome) {
        self.seq += 1;
        let request = exit(
            self.profile,
            &self.symbol(sym),
            self.seq,
            &qty.to_string(),
            &price.to_string(),
        );
        let result = self
            .store
            .tenant(self.user)
            .write_ahead_exit(&request)
            .await;
        let actual = classify(&result, |_| false);
        let open = self
            .model
            .positions
            .get(&sym)
            .map_or(Decimal::ZERO, |p| p.qty_open);
        if open == Decimal::ZERO {
            return (Outcome::NoPosition, actual);
        }
        let exits = self.model.exits.entry(sym).or_default();
        let pending: Decimal = exits
            .iter()
            .filter(|o| is_open(o.status))
            .map(|o| o.qty - o.filled)
            .sum();
        if qty > open - pending {
            return (Outcome::ExceedsPosition, actual);
        }
        exits.push(ModelOrder {
            request: None,
            coid: request.client_order_id,
            qty,
            price,
            filled: Decimal::ZERO,
            reserved_remaining: Decimal::ZERO,
            status: OrderStatus::PendingSubmit,
        });
        (Outcome::Done, actual)
    }

    async fn exit_fill(
        &mut self,
        sym: usize,
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> (Outcome, Outcome) {
        let Some(order) = self.model.exits.get(&sym).and_then(|e| e.last()).cloned() else {
            return (Outcome::NoChange, Outcome::NoChange);
        };
        let report = self.fill_report(&order.coid, qty, price, fee);
        let result = self.store.tenant(self.user).record_fill(&report).await;
        let actual = classify(&result, |_| false);
        if qty > order.qty - order.filled {
            return (Outcome::Overfill, actual);
        }
        let completes = order.filled + qty == order.qty;
        let reported = if completes {
            OrderStatus::Filled
        } else {
            OrderStatus::PartiallyFilled
        };
        let next = match order.status.apply(reported) {
            Err(_) => return (Outcome::InvalidTransition, actual),
            Ok(Transition::Advance(next)) => next,
            Ok(_) => order.status,
        };
        let position = self.model.positions.get(&sym).cloned().unwrap_or_default();
        if position.qty_open == Decimal::ZERO {
            return (Outcome::NoPosition, actual);
        }
        if qty > position.qty_open {
            return (Outcome::ExceedsPosition, actual);
        }
        let cost_released = if qty == position.qty_open {
            position.cost_open
        } else {
            round_half8(position.cost_open * qty / position.qty_open).min(position.cost_open)
        };
        let pnl = round_half8(qty * price) - cost_released;
        let moves = [
            (Decimal::ZERO, -cost_released, Decimal::ZERO),
            (Decimal::ZERO, Decimal::ZERO, pnl),
            (Decimal::ZERO, Decimal::ZERO, -fee),
        ];
        let Some(capital) = moved(&self.model.capital, &moves) else {
            return (Outcome::Insufficient, actual);
        };
        self.model.capital = capital;
        let p = self.model.positions.get_mut(&sym).unwrap();
        p.qty_open -= qty;
        p.cost_open -= cost_released;
        let o = self.model.exits.get_mut(&sym).unwrap().last_mut().unwrap();
        o.filled += qty;
        o.status = next;
        self.last_fill = Some(report);
        (Outcome::Done, actual)
    }
}

fn sym_of(sym: usize) -> Symbol {
    Symbol::new(SYMBOLS[sym]).unwrap()
}

async fn run_case(store: &Store, ops: &[Op]) -> Result<(), String> {
    let user = UserId::new_random();
    crate::fixtures::budgeted(store, user).await;
    let profile = store
        .tenant(user)
        .create_profile("prop")
        .await
        .map_err(|e| e.to_string())?;
    let mut leases = Vec::new();
    for sym in 0..SYMBOLS.len() {
        leases.push(entry_lock(store, profile, &sym_of(sym)).await);
    }
    // A starting balance, so that most cases trade rather than only refuse.
    let opening = Decimal::from(OPENING_BALANCE);
    let amount = Amount::positive(opening).unwrap();
    store
        .tenant(user)
        .allocate(profile, amount)
        .await
        .map_err(|e| e.to_string())?;
    let mut model = Model::default();
    model.capital.allocated = opening;
    let mut case = Case {
        store,
        user,
        profile,
        leases,
        model,
        seq: 0,
        trade: 0,
        last_fill: None,
    };
    for op in ops {
        case.step(op).await?;
    }
    let report = store
        .tenant(user)
        .rebuild_capital(profile, false)
        .await
        .map_err(|e| e.to_string())?;
    if report.differs() {
        return Err(format!("journal differs from the capital row: {report:?}"));
    }
    Ok(())
}

fn seed() -> u64 {
    match std::env::var("KEEL_PROPTEST_SEED") {
        Ok(text) => text.parse().expect("KEEL_PROPTEST_SEED is a u64"),
        Err(_) => rand_seed(),
    }
}

fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) ^ (u64::from(std::process::id()) << 32)
}

fn check_against_model(store: &Store, rt: &tokio::runtime::Runtime, cases: u32) {
    let seed = seed();
    let mut seed_bytes = [0u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = proptest::collection::vec(op_strategy(), 1..OPS_PER_CASE_MAX);
    let result = runner.run(&strategy, |ops| {
        rt.block_on(run_case(store, &ops))
            .map_err(TestCaseError::fail)
    });
    if let Err(error) = result {
        panic!("ledger property failed; replay with KEEL_PROPTEST_SEED={seed}\n{error}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn ledger_matches_the_model_after_every_step_on_sqlite() {
    let rt = runtime();
    let db = rt.block_on(LiteTestDb::create());
    check_against_model(&db.store, &rt, 48);
}

#[test]
fn ledger_matches_the_model_after_every_step_on_sqlite_in_thread() {
    let rt = runtime();
    let store = rt.block_on(Store::open_sqlite_in_thread(None)).unwrap();
    check_against_model(&store, &rt, 48);
}

#[test]
fn ledger_matches_the_model_after_every_step_on_memory() {
    let rt = runtime();
    check_against_model(&Store::open_memory(), &rt, 256);
}

#[test]
fn ledger_matches_the_model_after_every_step_on_postgres() {
    let rt = runtime();
    let db = rt.block_on(PgTestDb::create());
    check_against_model(&db.store, &rt, 32);
    rt.block_on(db.drop_db());
}
