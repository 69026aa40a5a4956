//! The memory store: the store's tables as rows in process memory, for runs whose state is
//! thrown away at the end (a backtest's).
//!
//! Every statement of the SQL backends has a Rust counterpart here, written beside it in the
//! same `with_tx!` invocation, and every constraint and constraint-like trigger of the schema
//! that the kernel relies on has a Rust counterpart in the tables below, refusing the write with
//! the same [`Constraint`] the database names. The kernel's own checks (in [`super::tenant`])
//! are shared with the database stores unchanged. What it has in place of the database layer is
//! the proof of equivalence: the store contract suite runs on it as on PostgreSQL and SQLite,
//! planted writes that break each invariant are refused (see [`RowWrite`]), and backtests give
//! byte-identical reports on it and on SQLite (see `docs/store.md`).
//!
//! Money is kept as SQLite keeps it: exact units of 10⁻⁸, read back normalized, so a value
//! round-trips as it does through the database. A transaction holds the one database until it
//! ends; its writes are applied at once and undone, newest first, when it is dropped without a
//! commit.

use std::collections::BTreeSet;
use std::hash::BuildHasher as _;

/// The tables' indexes hash with foldhash: its keys are the kernel's own ids, and SipHash's
/// protection against chosen keys cost a tenth of an order round trip.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rust_decimal::Decimal;

use crate::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use crate::ledger::{AMOUNT_SCALE, Budget, CAPITAL_MAX, Capital, CapitalDelta, JournalKind};
use crate::lifecycle::OrderRecord;
use crate::lock::LockKind;
use crate::market::Side;
use crate::money::CapitalAmount;

use super::backend::{decimal_to_units, units_to_decimal};
use super::quarantine::{MemoryQuarantine, QuarantineRecord, decode_evidence};
use super::{Constraint, StoreError};

/// A money value as the database stores and returns it: exact units of 10⁻⁸, normalized.
///
/// A value with at most [`AMOUNT_SCALE`] places whose units fit the database's integer comes
/// back as it went in, normalized: that is checked on the value itself, without the decimal
/// multiplication and division of the way through units, which every other value still takes
/// (and which refuses it as it refuses it on SQLite).
pub(crate) fn money(value: Decimal) -> Decimal {
    let normalized = value.normalize();
    let exact_in_units = AMOUNT_SCALE
        .checked_sub(normalized.scale())
        .and_then(|places| normalized.mantissa().checked_mul(10_i128.pow(places)))
        .is_some_and(|units| i64::try_from(units).is_ok());
    if exact_in_units {
        return normalized;
    }
    units_to_decimal(decimal_to_units(value))
}

/// [`money`] of a value of one of the checked types of [`crate::money`].
fn checked_money<T: Copy + Into<Decimal> + TryFrom<Decimal>>(value: T) -> T {
    // `money` returns a value equal to the one the type accepted (or refuses it as SQLite's
    // encoding does), so the type accepts it again.
    T::try_from(money(value.into())).unwrap_or(value)
}

/// Milliseconds since the epoch by this process's clock, the memory store's database clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn refuse(constraint: Constraint) -> StoreError {
    StoreError::Constraint(constraint)
}

fn check(holds: bool, name: &str) -> Result<(), StoreError> {
    if holds {
        Ok(())
    } else {
        Err(refuse(Constraint::from_name(name)))
    }
}

/// A profile row.
#[derive(Debug, Clone)]
pub(crate) struct ProfileRow {
    pub user: UserId,
    /// Insertion order: the directory lists profiles oldest first.
    pub seq: u64,
}

/// A capital row with its owner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CapitalRow {
    pub user: UserId,
    pub capital: Capital,
}

/// A journal row.
#[derive(Debug, Clone)]
pub(crate) struct JournalRow {
    pub user: UserId,
    pub profile: ProfileId,
    pub delta: CapitalDelta,
    pub dedup_key: String,
}

/// A fill row, with its key (profile, symbol, exchange trade id).
#[derive(Debug, Clone)]
pub(crate) struct FillRow {
    pub profile: ProfileId,
    pub symbol: Symbol,
    pub trade_id: String,
    pub client_order_id: ClientOrderId,
    pub qty: Decimal,
    pub price: Decimal,
    pub fee: Decimal,
}

/// A lifecycle row (ENTRY: a position; EXIT: what closed part of one).
#[derive(Debug, Clone)]
pub(crate) struct LifecycleRow {
    pub user: UserId,
    pub profile: ProfileId,
    pub symbol: Symbol,
    pub kind: IntentKind,
    pub side: Side,
    pub client_order_id: ClientOrderId,
    pub entry_lifecycle_id: Option<i64>,
    pub qty: Decimal,
    pub cost: Decimal,
    pub proceeds: Decimal,
    pub realized_pnl: Decimal,
    pub qty_open: Decimal,
    pub cost_open: Decimal,
    pub is_open: bool,
}

/// A lease lock row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockRow {
    pub owner: uuid::Uuid,
    pub fence: i64,
    pub expires_at_ms: i64,
}

/// How to undo one write.
enum Undo {
    Profile(ProfileId),
    Capital(ProfileId, Option<CapitalRow>),
    Journal,
    Order {
        at: usize,
        before: Option<OrderRecord>,
    },
    Fill,
    Lifecycle {
        at: usize,
        before: Option<LifecycleRow>,
    },
    Trade,
    Lock(LockKind, String, Option<LockRow>),
    FenceSeq(i64),
    Budget(UserId, Option<Budget>),
    Quarantine {
        at: usize,
        before: Option<MemoryQuarantine>,
    },
    EntryLockSteal,
}

type SymbolKey = (ProfileId, Symbol);

/// A trade history row's key: (profile, symbol, exchange trade id).
type TradeKey = (ProfileId, Symbol, String);

/// A unique index over rows kept in a `Vec`, appended to and undone newest first: the row holds
/// its key and the index only the key's hash and the row's position, so a key is stored once,
/// and a growing index moves its entries without hashing their keys again.
#[derive(Default)]
struct UniqueIndex {
    entries: hashbrown::HashTable<(u64, usize)>,
}

impl UniqueIndex {
    /// The position of the row whose key hashes to `hash` and for which `is_key` holds, or,
    /// when no row holds the key, the hash to index a new row under.
    fn find(&self, hash: u64, is_key: impl Fn(usize) -> bool) -> Result<usize, u64> {
        self.entries
            .find(hash, |&(h, at)| h == hash && is_key(at))
            .map(|&(_, at)| at)
            .ok_or(hash)
    }

    /// Indexes the row at `at` under `hash`; its key is in no other row.
    fn insert(&mut self, hash: u64, at: usize) {
        self.entries.insert_unique(hash, (hash, at), |&(h, _)| h);
    }

    /// Takes the row at `at` out of the index.
    fn remove(&mut self, hash: u64, at: usize) {
        if let Ok(entry) = self
            .entries
            .find_entry(hash, |&(h, a)| h == hash && a == at)
        {
            entry.remove();
        }
    }
}

/// The tables, with the indexes their constraints and lookups need.
#[derive(Default)]
pub(crate) struct Db {
    profiles: HashMap<ProfileId, ProfileRow>,
    profile_seq: u64,
    capital: HashMap<ProfileId, CapitalRow>,
    journal: Vec<JournalRow>,
    /// `ledger_entries_dedup_key`: (profile, dedup key) of the journal's rows.
    journal_keys: UniqueIndex,
    /// Orders in insertion order: `order_id` is the index plus one.
    orders: Vec<OrderRecord>,
    /// `orders_client_order_id_key`.
    order_ids: UniqueIndex,
    /// The orders that may still fill (`orders_open`), by index.
    open_orders: BTreeSet<usize>,
    /// `orders_one_open_entry`: the open ENTRY order of (profile, symbol).
    open_entry_orders: HashMap<SymbolKey, usize>,
    /// Fills in insertion order.
    fills: Vec<FillRow>,
    /// `fills_exchange_trade_key`: (profile, symbol, trade id) of the fills.
    fill_keys: UniqueIndex,
    /// Lifecycles in insertion order: `lifecycle_id` is the index plus one.
    lifecycles: Vec<LifecycleRow>,
    /// `lifecycles_client_order_id_key`.
    lifecycle_ids: UniqueIndex,
    /// `lifecycles_one_open_entry`: the open ENTRY lifecycle of (profile, symbol).
    open_entries: HashMap<SymbolKey, usize>,
    /// `trade_history_exchange_trade_key`: the trade ids of the history, which nothing in a run
    /// thrown away reads back.
    trades: Vec<TradeKey>,
    trade_keys: UniqueIndex,
    /// The hasher of the indexes of positions.
    keys_hasher: foldhash::fast::RandomState,
    locks: [HashMap<String, LockRow>; 3],
    fence_seq: i64,
    /// `capital_budgets`, kept equal to the grants and ALLOCATE entries as its triggers keep it.
    budgets: HashMap<UserId, Budget>,
    /// `profile_quarantines`, in insertion order (open and closed).
    quarantines: Vec<MemoryQuarantine>,
    /// What the deterministic simulation does to the database from outside the store.
    faults: Faults,
    /// The undo log's buffer between transactions: each transaction takes it and gives it back
    /// empty, so a transaction's writes do not allocate their log anew.
    undo_spare: Vec<Undo>,
}

/// The deterministic simulation's instruments on a memory store's database, the counterparts of
/// the SQL it adds to a SQLite file: a switch that makes the writes of fills and orders fail,
/// and an audit of entry locks taken from a live holder. Only lab builds set or read them.
#[derive(Debug, Default)]
struct Faults {
    /// Inserts into `fills` and updates of `orders` fail, as a lost connection fails them.
    writes_failing: bool,
    /// Entry locks granted over another owner's live lease (committed grants only).
    entry_lock_steals: u64,
}

/// What a write refused by [`Faults::writes_failing`] returns: a failure the host cannot tell
/// from a lost connection.
fn simulated_write_failure() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(
        "simulated transaction failure",
    )))
}

fn lock_table(kind: LockKind) -> usize {
    match kind {
        LockKind::Entry => 0,
        LockKind::Reconciliation => 1,
        LockKind::ProfileLease => 2,
    }
}

/// Where an order sits in the indexes of open orders: its key in `orders_one_open_entry` (an
/// open ENTRY's) and whether it is in `orders_open`.
struct OrderSlot {
    open_entry: Option<SymbolKey>,
    open: bool,
}

impl OrderSlot {
    /// The slot of `order`; of no order (before an insert), none.
    fn of(order: Option<&OrderRecord>) -> OrderSlot {
        OrderSlot {
            open_entry: order.and_then(|order| {
                (order.kind == IntentKind::Entry && order.status.is_open())
                    .then(|| (order.profile, order.symbol.clone()))
            }),
            open: order.is_some_and(|order| order.status.is_open()),
        }
    }
}

fn open_lifecycle_key(row: &LifecycleRow) -> Option<SymbolKey> {
    (row.kind == IntentKind::Entry && row.is_open).then(|| (row.profile, row.symbol.clone()))
}

/// The CHECK constraints of `capital_accounts`.
fn check_capital(c: &Capital) -> Result<(), StoreError> {
    check(
        c.allocated.get() >= Decimal::ZERO,
        "capital_allocated_nonnegative",
    )?;
    check(
        c.reserved_for_orders.get() >= Decimal::ZERO,
        "capital_reserved_for_orders_nonnegative",
    )?;
    check(
        c.reserved_for_positions.get() >= Decimal::ZERO,
        "capital_reserved_for_positions_nonnegative",
    )?;
    check(c.holds_invariant(), "capital_invariant")
}

/// The CHECK constraints of `capital_budgets`, on the row of `granted` and `allocated`.
fn check_budget(granted: Decimal, allocated: Decimal) -> Result<Budget, StoreError> {
    check(
        granted >= Decimal::ZERO,
        "capital_budgets_granted_nonnegative",
    )?;
    check(granted <= CAPITAL_MAX, "capital_budgets_granted_bounded")?;
    check(
        allocated >= Decimal::ZERO,
        "capital_budgets_allocated_nonnegative",
    )?;
    check(allocated <= granted, "capital_budgets_within_grant")?;
    // Within the bounds just checked, at the scale `money` gives: no refusal is left.
    let column = |what, value| {
        CapitalAmount::named(what, value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    };
    Ok(Budget {
        granted: column("granted", granted)?,
        allocated: column("allocated", allocated)?,
    })
}

/// The CHECK constraints of `profile_quarantines` on what the kernel writes.
fn check_quarantine_row(reason: &str, evidence: &str) -> Result<(), StoreError> {
    check(
        (1..=1_000).contains(&reason.chars().count()),
        "profile_quarantines_reason_length",
    )?;
    check(
        (2..=16_384).contains(&evidence.chars().count()),
        "profile_quarantines_evidence_length",
    )
}

/// The CHECK constraints of `orders`.
fn check_order(o: &OrderRecord) -> Result<(), StoreError> {
    check(o.qty.get() > Decimal::ZERO, "orders_qty_positive")?;
    check(o.price.get() > Decimal::ZERO, "orders_price_positive")?;
    check(
        o.reserved.get() >= Decimal::ZERO,
        "orders_reserved_nonnegative",
    )?;
    check(
        o.reserved_remaining.get() >= Decimal::ZERO && o.reserved_remaining <= o.reserved,
        "orders_reserved_remaining_bounded",
    )?;
    check(
        o.filled_qty.get() >= Decimal::ZERO && o.filled_qty.get() <= o.qty.get(),
        "orders_filled_bounded",
    )
}

/// The CHECK constraints of `lifecycles`.
fn check_lifecycle(l: &LifecycleRow) -> Result<(), StoreError> {
    check(l.qty > Decimal::ZERO, "lifecycles_qty_positive")?;
    check(l.cost >= Decimal::ZERO, "lifecycles_cost_nonnegative")?;
    check(
        l.qty_open >= Decimal::ZERO,
        "lifecycles_qty_open_nonnegative",
    )?;
    check(
        l.cost_open >= Decimal::ZERO,
        "lifecycles_cost_open_nonnegative",
    )?;
    check(
        l.kind == IntentKind::Entry || !l.is_open,
        "lifecycles_only_entries_open",
    )?;
    check(
        (l.kind == IntentKind::Exit) == l.entry_lifecycle_id.is_some(),
        "lifecycles_exit_has_entry",
    )
}

fn normalize_order(o: &OrderRecord) -> OrderRecord {
    OrderRecord {
        qty: checked_money(o.qty),
        price: checked_money(o.price),
        reserved: checked_money(o.reserved),
        reserved_remaining: checked_money(o.reserved_remaining),
        filled_qty: checked_money(o.filled_qty),
        ..o.clone()
    }
}

fn normalize_capital(c: &Capital) -> Capital {
    Capital {
        allocated: checked_money(c.allocated),
        reserved_for_orders: checked_money(c.reserved_for_orders),
        reserved_for_positions: checked_money(c.reserved_for_positions),
        realized_pnl: checked_money(c.realized_pnl),
    }
}

/// Reads of the tables. Every one filters by the tenant's user, as the statements do.
impl Db {
    /// `capital_budgets`' row of `user`.
    pub(crate) fn budget(&self, user: UserId) -> Option<Budget> {
        self.budgets.get(&user).copied()
    }

    pub(crate) fn profile_owned(&self, profile: ProfileId, user: UserId) -> bool {
        self.profiles.get(&profile).is_some_and(|p| p.user == user)
    }

    pub(crate) fn capital(&self, profile: ProfileId, user: UserId) -> Option<Capital> {
        self.capital
            .get(&profile)
            .filter(|row| row.user == user)
            .map(|row| row.capital)
    }

    pub(crate) fn journal_sum(
        &self,
        profile: ProfileId,
        user: UserId,
    ) -> Result<Capital, StoreError> {
        let rows = self
            .journal
            .iter()
            .filter(|r| r.profile == profile && r.user == user);
        let sum = Capital::from_journal(rows.map(|r| &r.delta))?;
        Ok(normalize_capital(&sum))
    }

    pub(crate) fn order(&self, coid: &ClientOrderId, user: UserId) -> Option<&OrderRecord> {
        let at = self.order_at(coid).ok()?;
        Some(&self.orders[at]).filter(|o| o.user == user)
    }

    /// The open orders of (profile), oldest first.
    pub(crate) fn open_orders(
        &self,
        profile: ProfileId,
        user: UserId,
    ) -> impl Iterator<Item = &OrderRecord> {
        self.open_orders
            .iter()
            .map(|&at| &self.orders[at])
            .filter(move |o| o.profile == profile && o.user == user)
    }

    /// Whether an ENTRY is in flight (an open order) or open (a lifecycle) for the symbol.
    pub(crate) fn entry_in_flight(
        &self,
        profile: ProfileId,
        user: UserId,
        symbol: &Symbol,
    ) -> bool {
        let key = (profile, symbol.clone());
        let order = self
            .open_entry_orders
            .get(&key)
            .is_some_and(|&at| self.orders[at].user == user);
        order || self.open_entry(profile, user, symbol).is_some()
    }

    /// The current unexpired fence of a lock.
    pub(crate) fn live_fence(&self, kind: LockKind, key: &str, now_ms: i64) -> Option<i64> {
        self.locks[lock_table(kind)]
            .get(key)
            .filter(|row| row.expires_at_ms > now_ms)
            .map(|row| row.fence)
    }

    pub(crate) fn lock(&self, kind: LockKind, key: &str) -> Option<LockRow> {
        self.locks[lock_table(kind)].get(key).copied()
    }

    pub(crate) fn live_locks(&self, kind: LockKind, prefix: &str, now_ms: i64) -> usize {
        self.locks[lock_table(kind)]
            .iter()
            .filter(|(key, row)| key.starts_with(prefix) && row.expires_at_ms > now_ms)
            .count()
    }

    /// The keys of the expired locks of `kind` starting with `prefix`.
    pub(crate) fn expired_locks(&self, kind: LockKind, prefix: &str, now_ms: i64) -> Vec<String> {
        self.locks[lock_table(kind)]
            .iter()
            .filter(|(key, row)| key.starts_with(prefix) && row.expires_at_ms <= now_ms)
            .map(|(key, _)| key.clone())
            .collect()
    }

    pub(crate) fn fill(
        &self,
        profile: ProfileId,
        user: UserId,
        symbol: &Symbol,
        trade_id: &str,
    ) -> Option<&FillRow> {
        self.fill_at(profile, symbol, trade_id)
            .ok()
            .map(|at| &self.fills[at])
            .filter(|_| self.profile_owned(profile, user))
    }

    fn id_hash(&self, coid: &ClientOrderId) -> u64 {
        self.keys_hasher.hash_one(coid.as_str())
    }

    /// The position of the order with this id, or the hash to index it under (see
    /// [`UniqueIndex::find`]); the same for the other tables' keys below.
    fn order_at(&self, coid: &ClientOrderId) -> Result<usize, u64> {
        let hash = self.id_hash(coid);
        self.order_ids
            .find(hash, |at| self.orders[at].client_order_id == *coid)
    }

    fn lifecycle_at(&self, coid: &ClientOrderId) -> Result<usize, u64> {
        let hash = self.id_hash(coid);
        self.lifecycle_ids
            .find(hash, |at| self.lifecycles[at].client_order_id == *coid)
    }

    fn journal_key_hash(&self, profile: ProfileId, dedup_key: &str) -> u64 {
        self.keys_hasher.hash_one((profile, dedup_key))
    }

    fn trade_key_hash(&self, profile: ProfileId, symbol: &Symbol, trade_id: &str) -> u64 {
        self.keys_hasher
            .hash_one((profile, symbol.as_str(), trade_id))
    }

    fn journal_at(&self, profile: ProfileId, dedup_key: &str) -> Result<usize, u64> {
        let hash = self.journal_key_hash(profile, dedup_key);
        self.journal_keys.find(hash, |at| {
            let row = &self.journal[at];
            row.profile == profile && row.dedup_key == dedup_key
        })
    }

    fn fill_at(&self, profile: ProfileId, symbol: &Symbol, trade_id: &str) -> Result<usize, u64> {
        let hash = self.trade_key_hash(profile, symbol, trade_id);
        self.fill_keys.find(hash, |at| {
            let row = &self.fills[at];
            row.profile == profile && row.symbol == *symbol && row.trade_id == trade_id
        })
    }

    fn trade_at(&self, profile: ProfileId, symbol: &Symbol, trade_id: &str) -> Result<usize, u64> {
        let hash = self.trade_key_hash(profile, symbol, trade_id);
        self.trade_keys.find(hash, |at| {
            let (p, s, t) = &self.trades[at];
            *p == profile && s == symbol && t == trade_id
        })
    }

    /// The open ENTRY lifecycle of (profile, symbol), with its id.
    pub(crate) fn open_entry(
        &self,
        profile: ProfileId,
        user: UserId,
        symbol: &Symbol,
    ) -> Option<(i64, &LifecycleRow)> {
        let at = *self.open_entries.get(&(profile, symbol.clone()))?;
        let row = &self.lifecycles[at];
        (row.user == user).then_some((lifecycle_id(at), row))
    }

    /// Every open ENTRY lifecycle of the profile, by symbol.
    pub(crate) fn open_entries(
        &self,
        profile: ProfileId,
        user: UserId,
    ) -> Vec<(i64, &LifecycleRow)> {
        let mut rows: Vec<(i64, &LifecycleRow)> = self
            .open_entries
            .iter()
            .filter(|((p, _), _)| *p == profile)
            .map(|(_, &at)| (lifecycle_id(at), &self.lifecycles[at]))
            .filter(|(_, row)| row.user == user)
            .collect();
        rows.sort_by(|a, b| a.1.symbol.cmp(&b.1.symbol));
        rows
    }

    pub(crate) fn lifecycle(
        &self,
        coid: &ClientOrderId,
        user: UserId,
    ) -> Option<(i64, &LifecycleRow)> {
        let at = self.lifecycle_at(coid).ok()?;
        let row = &self.lifecycles[at];
        (row.user == user).then_some((lifecycle_id(at), row))
    }

    /// The open row of `profile_quarantines` of (profile, user).
    pub(crate) fn open_quarantine(
        &self,
        profile: ProfileId,
        user: UserId,
    ) -> Option<&QuarantineRecord> {
        self.quarantines
            .iter()
            .find(|q| q.profile == profile && q.user == user && q.is_open())
            .map(|q| &q.record)
    }

    /// The closed rows of `profile_quarantines` of (profile, user), newest first.
    pub(crate) fn quarantine_history(
        &self,
        profile: ProfileId,
        user: UserId,
        limit: usize,
    ) -> Vec<QuarantineRecord> {
        self.quarantines
            .iter()
            .rev()
            .filter(|q| q.profile == profile && q.user == user && !q.is_open())
            .take(limit)
            .map(|q| q.record.clone())
            .collect()
    }

    fn open_quarantine_at(&self, profile: ProfileId, user: UserId) -> Option<usize> {
        self.quarantines
            .iter()
            .position(|q| q.profile == profile && q.user == user && q.is_open())
    }

    /// Every profile of every tenant, oldest first.
    pub(crate) fn directory(&self) -> Vec<(ProfileId, UserId)> {
        let mut rows: Vec<(&ProfileId, &ProfileRow)> = self.profiles.iter().collect();
        rows.sort_by_key(|(_, row)| row.seq);
        rows.into_iter().map(|(p, row)| (*p, row.user)).collect()
    }
}

fn lifecycle_id(at: usize) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX - 1) + 1
}

fn lifecycle_index(id: i64) -> Option<usize> {
    usize::try_from(id.checked_sub(1)?).ok()
}

/// The largest undo log kept for the next transaction: a fill writes about a dozen rows, and a
/// rare transaction that wrote far more (lapsing every lock) does not keep its log's memory.
const UNDO_SPARE_CAPACITY_MAX: usize = 64;

/// An open transaction: the database, held until the transaction ends, and how to undo what it
/// wrote. Dropped without [`Transaction::commit`], it rolls back.
pub(crate) struct Transaction {
    db: tokio::sync::OwnedMutexGuard<Db>,
    undo: Vec<Undo>,
}

impl std::ops::Deref for Transaction {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        while let Some(undo) = self.undo.pop() {
            self.db.undo(undo);
        }
        if self.undo.capacity() <= UNDO_SPARE_CAPACITY_MAX {
            self.db.undo_spare = std::mem::take(&mut self.undo);
        }
    }
}

impl Transaction {
    /// Commits: what it wrote stays.
    pub(crate) fn commit(mut self) {
        self.undo.clear();
    }

    /// Inserts a profile and its empty capital account.
    pub(crate) fn insert_profile(
        &mut self,
        profile: ProfileId,
        user: UserId,
        name: &str,
    ) -> Result<(), StoreError> {
        check(
            (1..=64).contains(&name.chars().count()),
            "profiles_name_length",
        )?;
        if self.db.profiles.contains_key(&profile) {
            return Err(refuse(Constraint::Other("profiles_pkey".to_owned())));
        }
        self.db.profile_seq += 1;
        let seq = self.db.profile_seq;
        self.db.profiles.insert(profile, ProfileRow { user, seq });
        self.undo.push(Undo::Profile(profile));
        self.set_capital_row(
            profile,
            CapitalRow {
                user,
                capital: Capital::default(),
            },
        )
    }

    /// `UPDATE capital_accounts`: overwrites the row of (profile, user), if there is one.
    pub(crate) fn write_capital(
        &mut self,
        profile: ProfileId,
        user: UserId,
        capital: &Capital,
    ) -> Result<u64, StoreError> {
        if self.db.capital(profile, user).is_none() {
            return Ok(0);
        }
        let capital = normalize_capital(capital);
        self.set_capital_row(profile, CapitalRow { user, capital })?;
        Ok(1)
    }

    fn set_capital_row(&mut self, profile: ProfileId, row: CapitalRow) -> Result<(), StoreError> {
        check_capital(&row.capital)?;
        let before = self.db.capital.insert(profile, row);
        self.undo.push(Undo::Capital(profile, before));
        Ok(())
    }

    /// `INSERT INTO profile_quarantines` (no open row of the profile) or the `UPDATE` of the
    /// open one, as [`super::TenantTx::enter_quarantine`] chooses.
    pub(crate) fn enter_quarantine(
        &mut self,
        profile: ProfileId,
        user: UserId,
        reason: &str,
        evidence: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Some(at) = self.db.open_quarantine_at(profile, user) else {
            return self.insert_quarantine(profile, user, reason, evidence, now_ms);
        };
        check_quarantine_row(reason, evidence)?;
        let before = self.db.quarantines[at].clone();
        let record = &mut self.db.quarantines[at].record;
        record.reason = reason.to_owned();
        record.evidence = decode_evidence(evidence)?;
        record.clear_requested_by = None;
        record.clear_requested_at_ms = None;
        self.undo.push(Undo::Quarantine {
            at,
            before: Some(before),
        });
        Ok(())
    }

    /// `INSERT INTO profile_quarantines`, with the table's CHECK constraints, its foreign key
    /// and its one-open index.
    fn insert_quarantine(
        &mut self,
        profile: ProfileId,
        user: UserId,
        reason: &str,
        evidence: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        check_quarantine_row(reason, evidence)?;
        check(
            self.db.profile_owned(profile, user),
            "profile_quarantines_profile_fkey",
        )?;
        check(
            !self
                .db
                .quarantines
                .iter()
                .any(|q| q.profile == profile && q.is_open()),
            "profile_quarantines_one_open",
        )?;
        self.db.quarantines.push(MemoryQuarantine {
            profile,
            user,
            record: QuarantineRecord {
                reason: reason.to_owned(),
                since_ms: now_ms,
                evidence: decode_evidence(evidence)?,
                clear_requested_by: None,
                clear_requested_at_ms: None,
                cleared_at_ms: None,
                cleared_by: None,
            },
        });
        let at = self.db.quarantines.len() - 1;
        self.undo.push(Undo::Quarantine { at, before: None });
        Ok(())
    }

    /// The `UPDATE` that records a request to end the open quarantine of (profile, user).
    pub(crate) fn request_quarantine_clear(
        &mut self,
        profile: ProfileId,
        user: UserId,
        by: UserId,
    ) {
        if let Some(at) = self.db.open_quarantine_at(profile, user) {
            let before = self.db.quarantines[at].clone();
            let record = &mut self.db.quarantines[at].record;
            record.clear_requested_by = Some(by);
            record.clear_requested_at_ms = Some(now_ms());
            self.undo.push(Undo::Quarantine {
                at,
                before: Some(before),
            });
        }
    }

    /// The `UPDATE` that closes the open quarantine of (profile, user) on its request.
    pub(crate) fn clear_quarantine(&mut self, profile: ProfileId, user: UserId) {
        if let Some(at) = self.db.open_quarantine_at(profile, user) {
            let before = self.db.quarantines[at].clone();
            let record = &mut self.db.quarantines[at].record;
            record.cleared_at_ms = Some(now_ms());
            record.cleared_by = record.clear_requested_by;
            self.undo.push(Undo::Quarantine {
                at,
                before: Some(before),
            });
        }
    }

    /// `INSERT INTO ledger_entries`.
    pub(crate) fn insert_journal(
        &mut self,
        user: UserId,
        profile: ProfileId,
        order: Option<&ClientOrderId>,
        kind: JournalKind,
        delta: &CapitalDelta,
        dedup_key: String,
    ) -> Result<(), StoreError> {
        check(
            (kind == JournalKind::Allocate) == order.is_none(),
            "ledger_entries_order_reference",
        )?;
        if let Some(order) = order {
            self.check_order_reference(order, profile, "ledger_entries_order_fkey")?;
        }
        self.check_profile_reference(profile, user, "ledger_entries_profile_fkey")?;
        let Err(hash) = self.db.journal_at(profile, &dedup_key) else {
            return Err(refuse(Constraint::LedgerDedupKey));
        };
        if kind == JournalKind::Allocate {
            self.draw_budget(user, money(delta.allocated))?;
        }
        let at = self.db.journal.len();
        self.db.journal_keys.insert(hash, at);
        self.db.journal.push(JournalRow {
            user,
            profile,
            delta: CapitalDelta {
                allocated: money(delta.allocated),
                reserved_for_orders: money(delta.reserved_for_orders),
                reserved_for_positions: money(delta.reserved_for_positions),
                realized_pnl: money(delta.realized_pnl),
            },
            dedup_key,
        });
        self.undo.push(Undo::Journal);
        Ok(())
    }

    /// The `ledger_entries_draw_budget` trigger: an allocation draws on its owner's budget.
    fn draw_budget(&mut self, user: UserId, amount: Decimal) -> Result<(), StoreError> {
        let Some(before) = self.db.budgets.get(&user).copied() else {
            return check(false, "capital_budgets_within_grant");
        };
        let after = check_budget(before.granted.get(), before.allocated.get() + amount)?;
        self.set_budget(user, before, after);
        Ok(())
    }

    /// `INSERT INTO budget_grants` with its `budget_grants_apply` trigger.
    pub(crate) fn insert_grant(&mut self, user: UserId, amount: Decimal) -> Result<(), StoreError> {
        check(!amount.is_zero(), "budget_grants_amount_nonzero")?;
        let before = self.db.budgets.get(&user).copied().unwrap_or_default();
        let after = check_budget(before.granted.get() + money(amount), before.allocated.get())?;
        self.set_budget(user, before, after);
        Ok(())
    }

    fn set_budget(&mut self, user: UserId, before: Budget, after: Budget) {
        let previous = self.db.budgets.insert(user, after);
        debug_assert!(previous.is_none_or(|p| p == before));
        self.undo.push(Undo::Budget(user, previous));
    }

    /// `UPDATE` or `DELETE` on `ledger_entries`: the journal is append-only.
    pub(crate) fn rewrite_journal(&mut self) -> Result<u64, StoreError> {
        Err(refuse(Constraint::LedgerAppendOnly))
    }

    fn check_profile_reference(
        &self,
        profile: ProfileId,
        user: UserId,
        name: &str,
    ) -> Result<(), StoreError> {
        check(self.db.profile_owned(profile, user), name)
    }

    /// The foreign key `name` from a row of `profile` to its order, by (profile, client order
    /// id).
    fn check_order_reference(
        &self,
        order: &ClientOrderId,
        profile: ProfileId,
        name: &str,
    ) -> Result<(), StoreError> {
        let owned = self
            .db
            .order_at(order)
            .is_ok_and(|at| self.db.orders[at].profile == profile);
        check(owned, name)
    }

    /// `INSERT INTO orders … ON CONFLICT (client_order_id) DO NOTHING`: false when the client
    /// order id exists. The fence trigger runs first, as a `BEFORE INSERT` trigger does.
    pub(crate) fn insert_order(
        &mut self,
        order: &OrderRecord,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if let Some(lock) = &order.lock {
            let current = self
                .db
                .live_fence(LockKind::Entry, lock.key.as_str(), now_ms);
            if current != Some(lock.fence.0) {
                return Err(refuse(Constraint::CurrentFence));
            }
        }
        let Err(hash) = self.db.order_at(&order.client_order_id) else {
            return Ok(false);
        };
        self.check_profile_reference(order.profile, order.user, "orders_profile_fkey")?;
        let order = normalize_order(order);
        check_order(&order)?;
        let at = self.db.orders.len();
        self.db
            .index_order(at, OrderSlot::of(None), OrderSlot::of(Some(&order)))?;
        self.db.order_ids.insert(hash, at);
        self.db.orders.push(order);
        self.undo.push(Undo::Order { at, before: None });
        Ok(true)
    }

    /// `INSERT INTO orders` without `ON CONFLICT`: a second row under a client order id is
    /// refused by its key.
    pub(crate) fn insert_order_strict(
        &mut self,
        order: &OrderRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if self.insert_order(order, now_ms)? {
            Ok(())
        } else {
            Err(refuse(Constraint::ClientOrderIdKey))
        }
    }

    /// `UPDATE orders SET status, filled_qty, reserved_remaining, exchange_order_id`.
    pub(crate) fn update_order(
        &mut self,
        order: &OrderRecord,
        user: UserId,
    ) -> Result<(), StoreError> {
        let Ok(at) = self.db.order_at(&order.client_order_id) else {
            return Ok(());
        };
        let before = &self.db.orders[at];
        if before.user != user {
            return Ok(());
        }
        if self.db.faults.writes_failing {
            return Err(simulated_write_failure());
        }
        let mut after = before.clone();
        after.status = order.status;
        after.filled_qty = checked_money(order.filled_qty);
        after.reserved_remaining = checked_money(order.reserved_remaining);
        after.exchange_order_id.clone_from(&order.exchange_order_id);
        check_order(&after)?;
        let (from, to) = (OrderSlot::of(Some(before)), OrderSlot::of(Some(&after)));
        self.db.index_order(at, from, to)?;
        let before = std::mem::replace(&mut self.db.orders[at], after);
        self.undo.push(Undo::Order {
            at,
            before: Some(before),
        });
        Ok(())
    }

    /// `INSERT INTO fills`; false when the trade id was already recorded and `dedup` (the
    /// `ON CONFLICT DO NOTHING`) is on, refused by `fills_exchange_trade_key` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_fill(
        &mut self,
        order: &OrderRecord,
        trade_id: &str,
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
        dedup: bool,
    ) -> Result<bool, StoreError> {
        if self.db.faults.writes_failing {
            return Err(simulated_write_failure());
        }
        self.check_order_reference(&order.client_order_id, order.profile, "fills_order_fkey")?;
        self.check_profile_reference(order.profile, order.user, "fills_profile_fkey")?;
        let (qty, price, fee) = (money(qty), money(price), money(fee));
        check(qty > Decimal::ZERO, "fills_qty_positive")?;
        check(price > Decimal::ZERO, "fills_price_positive")?;
        check(fee >= Decimal::ZERO, "fills_fee_nonnegative")?;
        let Err(hash) = self.db.fill_at(order.profile, &order.symbol, trade_id) else {
            return if dedup {
                Ok(false)
            } else {
                Err(refuse(Constraint::ExchangeTradeKey))
            };
        };
        let at = self.db.fills.len();
        self.db.fill_keys.insert(hash, at);
        self.db.fills.push(FillRow {
            profile: order.profile,
            symbol: order.symbol.clone(),
            trade_id: trade_id.to_owned(),
            client_order_id: order.client_order_id.clone(),
            qty,
            price,
            fee,
        });
        self.undo.push(Undo::Fill);
        Ok(true)
    }

    /// `INSERT INTO lifecycles`.
    pub(crate) fn insert_lifecycle(&mut self, row: LifecycleRow) -> Result<(), StoreError> {
        self.check_order_reference(&row.client_order_id, row.profile, "lifecycles_order_fkey")?;
        self.check_profile_reference(row.profile, row.user, "lifecycles_profile_fkey")?;
        check_lifecycle(&row)?;
        let Err(hash) = self.db.lifecycle_at(&row.client_order_id) else {
            return Err(refuse(Constraint::Other(
                "lifecycles_client_order_id_key".to_owned(),
            )));
        };
        let at = self.db.lifecycles.len();
        self.db
            .index_lifecycle(at, None, open_lifecycle_key(&row))?;
        self.db.lifecycle_ids.insert(hash, at);
        self.db.lifecycles.push(row);
        self.undo.push(Undo::Lifecycle { at, before: None });
        Ok(())
    }

    /// `UPDATE lifecycles` of the row with this id and owner: `change` edits a copy, which
    /// replaces the row once its constraints hold.
    pub(crate) fn update_lifecycle(
        &mut self,
        id: i64,
        user: UserId,
        change: impl FnOnce(&mut LifecycleRow),
    ) -> Result<(), StoreError> {
        let Some(at) = lifecycle_index(id).filter(|&at| at < self.db.lifecycles.len()) else {
            return Ok(());
        };
        let before = &self.db.lifecycles[at];
        if before.user != user {
            return Ok(());
        }
        let mut after = before.clone();
        change(&mut after);
        check_lifecycle(&after)?;
        let (from, to) = (open_lifecycle_key(before), open_lifecycle_key(&after));
        self.db.index_lifecycle(at, from, to)?;
        let before = std::mem::replace(&mut self.db.lifecycles[at], after);
        self.undo.push(Undo::Lifecycle {
            at,
            before: Some(before),
        });
        Ok(())
    }

    /// `INSERT INTO trade_history`.
    pub(crate) fn insert_trade(
        &mut self,
        order: &OrderRecord,
        trade_id: &str,
    ) -> Result<(), StoreError> {
        self.check_order_reference(
            &order.client_order_id,
            order.profile,
            "trade_history_order_fkey",
        )?;
        self.check_profile_reference(order.profile, order.user, "trade_history_profile_fkey")?;
        let Err(hash) = self.db.trade_at(order.profile, &order.symbol, trade_id) else {
            return Err(refuse(Constraint::ExchangeTradeKey));
        };
        let at = self.db.trades.len();
        self.db.trade_keys.insert(hash, at);
        self.db
            .trades
            .push((order.profile, order.symbol.clone(), trade_id.to_owned()));
        self.undo.push(Undo::Trade);
        Ok(())
    }

    /// Sets (or with `None` deletes) a lock row; a fence never decreases
    /// (`locks_fence_only_grows`).
    pub(crate) fn set_lock(
        &mut self,
        kind: LockKind,
        key: &str,
        row: Option<LockRow>,
    ) -> Result<(), StoreError> {
        let table = &mut self.db.locks[lock_table(kind)];
        if let (Some(old), Some(new)) = (table.get(key), &row)
            && new.fence < old.fence
        {
            return Err(refuse(Constraint::FenceOnlyGrows));
        }
        // The key is copied once for the undo log, and once more only for a row not there yet.
        let (key, before) = match (row, table.get_mut(key)) {
            (Some(row), Some(held)) => (key.to_owned(), Some(std::mem::replace(held, row))),
            (Some(row), None) => (key.to_owned(), table.insert(key.to_owned(), row)),
            (None, _) => match table.remove_entry(key) {
                Some((key, held)) => (key, Some(held)),
                None => (key.to_owned(), None),
            },
        };
        self.undo.push(Undo::Lock(kind, key, before));
        Ok(())
    }

    /// The next fence of the sequence all lock kinds share.
    pub(crate) fn next_fence(&mut self) -> i64 {
        let before = self.db.fence_seq;
        self.db.fence_seq += 1;
        self.undo.push(Undo::FenceSeq(before));
        self.db.fence_seq
    }

    /// Switches [`Faults::writes_failing`]; not undone by a rollback (it is no row).
    #[cfg(feature = "lab")]
    pub(crate) fn set_writes_failing(&mut self, failing: bool) {
        self.db.faults.writes_failing = failing;
    }

    /// Entry locks granted over another owner's live lease so far.
    #[cfg(feature = "lab")]
    pub(crate) fn entry_lock_steals(&self) -> u64 {
        self.db.faults.entry_lock_steals
    }

    /// Records, for the simulation's audit, an entry lock granted over another owner's lease
    /// that was still live.
    pub(crate) fn record_entry_lock_steal(&mut self) {
        self.db.faults.entry_lock_steals += 1;
        self.undo.push(Undo::EntryLockSteal);
    }
}

impl Db {
    /// Moves order `at` from the indexes of `before` to those of `after`, refusing a second
    /// open ENTRY for (profile, symbol).
    fn index_order(
        &mut self,
        at: usize,
        before: OrderSlot,
        after: OrderSlot,
    ) -> Result<(), StoreError> {
        if let Some(key) = &after.open_entry
            && self
                .open_entry_orders
                .get(key)
                .is_some_and(|&held| held != at)
        {
            return Err(refuse(Constraint::OneOpenEntryOrder));
        }
        if let Some(key) = before.open_entry {
            self.open_entry_orders.remove(&key);
        }
        if before.open {
            self.open_orders.remove(&at);
        }
        if let Some(key) = after.open_entry {
            self.open_entry_orders.insert(key, at);
        }
        if after.open {
            self.open_orders.insert(at);
        }
        Ok(())
    }

    /// Moves lifecycle `at` from the open-ENTRY key `before` to `after` (each [`None`] when the
    /// row is not an open ENTRY), refusing a second open ENTRY lifecycle for (profile, symbol).
    fn index_lifecycle(
        &mut self,
        at: usize,
        before: Option<SymbolKey>,
        after: Option<SymbolKey>,
    ) -> Result<(), StoreError> {
        if let Some(key) = &after
            && self.open_entries.get(key).is_some_and(|&held| held != at)
        {
            return Err(refuse(Constraint::OneOpenEntryLifecycle));
        }
        if let Some(key) = before {
            self.open_entries.remove(&key);
        }
        if let Some(key) = after {
            self.open_entries.insert(key, at);
        }
        Ok(())
    }

    fn undo(&mut self, undo: Undo) {
        // Each write was checked when made, so its inverse restores a state that held them.
        match undo {
            Undo::Profile(profile) => {
                self.profiles.remove(&profile);
            }
            Undo::Capital(profile, before) => match before {
                Some(row) => {
                    self.capital.insert(profile, row);
                }
                None => {
                    self.capital.remove(&profile);
                }
            },
            Undo::Journal => {
                if let Some(row) = self.journal.pop() {
                    let hash = self.journal_key_hash(row.profile, &row.dedup_key);
                    self.journal_keys.remove(hash, self.journal.len());
                }
            }
            Undo::Order { at, before } => {
                let current = OrderSlot::of(Some(&self.orders[at]));
                let _ = self.index_order(at, current, OrderSlot::of(before.as_ref()));
                match before {
                    Some(row) => self.orders[at] = row,
                    None => {
                        if let Some(row) = self.orders.pop() {
                            let hash = self.id_hash(&row.client_order_id);
                            self.order_ids.remove(hash, self.orders.len());
                        }
                    }
                }
            }
            Undo::Fill => {
                if let Some(row) = self.fills.pop() {
                    let hash = self.trade_key_hash(row.profile, &row.symbol, &row.trade_id);
                    self.fill_keys.remove(hash, self.fills.len());
                }
            }
            Undo::Quarantine { at, before } => match before {
                Some(row) => self.quarantines[at] = row,
                None => {
                    self.quarantines.pop();
                }
            },
            Undo::Lifecycle { at, before } => {
                let current = open_lifecycle_key(&self.lifecycles[at]);
                let _ =
                    self.index_lifecycle(at, current, before.as_ref().and_then(open_lifecycle_key));
                match before {
                    Some(row) => self.lifecycles[at] = row,
                    None => {
                        if let Some(row) = self.lifecycles.pop() {
                            let hash = self.id_hash(&row.client_order_id);
                            self.lifecycle_ids.remove(hash, self.lifecycles.len());
                        }
                    }
                }
            }
            Undo::Trade => {
                if let Some((profile, symbol, trade_id)) = self.trades.pop() {
                    let hash = self.trade_key_hash(profile, &symbol, &trade_id);
                    self.trade_keys.remove(hash, self.trades.len());
                }
            }
            Undo::Lock(kind, key, before) => {
                let table = &mut self.locks[lock_table(kind)];
                match before {
                    Some(row) => table.insert(key, row),
                    None => table.remove(&key),
                };
            }
            Undo::FenceSeq(before) => self.fence_seq = before,
            Undo::EntryLockSteal => self.faults.entry_lock_steals -= 1,
            Undo::Budget(user, before) => match before {
                Some(row) => {
                    self.budgets.insert(user, row);
                }
                None => {
                    self.budgets.remove(&user);
                }
            },
        }
    }
}

/// The one database of a memory store, shared by the store's clones; a transaction holds it
/// until it ends.
#[derive(Clone)]
pub(crate) struct MemoryPool {
    db: Arc<tokio::sync::Mutex<Db>>,
    /// How long a caller waits for the database before giving up, as the SQL pools do.
    acquire_timeout: Duration,
    /// Set by [`MemoryPool::close`]: the pool opens no more transactions, as a closed SQL pool
    /// opens no more connections. The rows stay for a pool opened again over them.
    closed: Arc<AtomicBool>,
}

impl MemoryPool {
    pub(crate) fn new(acquire_timeout: Duration) -> MemoryPool {
        MemoryPool {
            db: Arc::new(tokio::sync::Mutex::new(Db::default())),
            acquire_timeout,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A new pool, open, over the same rows: a restarted process's pool over the same database.
    #[cfg(feature = "lab")]
    pub(crate) fn reopened(&self) -> MemoryPool {
        MemoryPool {
            db: Arc::clone(&self.db),
            acquire_timeout: self.acquire_timeout,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Closes this pool (and its clones): every later [`MemoryPool::begin`] fails with the error
    /// a closed SQL pool gives.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Opens a transaction, waiting at most `acquire_timeout` for the one open now to end.
    pub(crate) async fn begin(&self) -> Result<Transaction, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        self.begin_outside().await
    }

    /// Opens a transaction whether or not this pool is closed: a statement made from outside
    /// the process that closed it, as a raw SQL statement is on a database.
    pub(crate) async fn begin_outside(&self) -> Result<Transaction, StoreError> {
        let mut db = match self.db.clone().try_lock_owned() {
            Ok(db) => db,
            Err(_) => tokio::time::timeout(self.acquire_timeout, self.db.clone().lock_owned())
                .await
                .map_err(|_| StoreError::MemoryBusy(self.acquire_timeout))?,
        };
        let undo = std::mem::take(&mut db.undo_spare);
        Ok(Transaction { db, undo })
    }
}

/// A write outside the store API, as a raw SQL statement is on a database: what a test plants
/// to show that the memory store's tables refuse it (see [`super::Store::plant_row_write`]).
#[derive(Debug, Clone)]
pub enum RowWrite {
    /// `UPDATE capital_accounts SET …`: the profile's capital row becomes `capital`.
    Capital {
        /// The profile.
        profile: ProfileId,
        /// The row as written.
        capital: Capital,
    },
    /// `INSERT INTO orders`: the order row as given, under the lock and fence it names.
    Order(OrderRecord),
    /// `INSERT INTO fills`: a fill of `order` under `trade_id`, without `ON CONFLICT`.
    Fill {
        /// The order.
        order: ClientOrderId,
        /// The exchange trade id.
        trade_id: String,
        /// Quantity, price and fee.
        qty: Decimal,
        /// The price.
        price: Decimal,
        /// The fee.
        fee: Decimal,
    },
    /// `INSERT INTO ledger_entries`.
    Journal {
        /// The profile.
        profile: ProfileId,
        /// The order it belongs to (none for an allocation).
        order: Option<ClientOrderId>,
        /// What it is.
        kind: JournalKind,
        /// Its delta.
        delta: CapitalDelta,
        /// Its de-duplication key.
        dedup_key: String,
    },
    /// `UPDATE ledger_entries … WHERE profile_id = …`.
    UpdateJournal {
        /// The profile.
        profile: ProfileId,
    },
    /// `DELETE FROM ledger_entries WHERE profile_id = …`.
    DeleteJournal {
        /// The profile.
        profile: ProfileId,
    },
    /// `UPDATE <lock table> SET expires_at_ms = expires_at_ms - earlier_ms WHERE lock_key = key`:
    /// the lease expires earlier, as its holder's stall would make it.
    ExpireLock {
        /// The lock table.
        kind: LockKind,
        /// The lock key.
        key: String,
        /// How much earlier it expires.
        earlier_ms: i64,
    },
    /// `INSERT INTO profile_quarantines`: an open quarantine of the profile, beside any open one.
    OpenQuarantine {
        /// The profile.
        profile: ProfileId,
    },
    /// `UPDATE <lock table> SET expires_at_ms = 0`: every lease of the table lapses, as when
    /// their holders stall past the TTL.
    ExpireLocks {
        /// The lock table.
        kind: LockKind,
    },
    /// `INSERT INTO lifecycles`: an open ENTRY lifecycle of the order's (profile, symbol).
    OpenEntryLifecycle {
        /// The order it is recorded under.
        order: ClientOrderId,
        /// Its quantity and cost.
        qty: Decimal,
        /// Its cost.
        cost: Decimal,
    },
}

impl Transaction {
    /// Makes a planted write through the tables' constraints; rows written, as a statement's.
    pub(crate) fn plant(&mut self, user: UserId, write: RowWrite) -> Result<u64, StoreError> {
        match write {
            RowWrite::Capital { profile, capital } => self.write_capital(profile, user, &capital),
            RowWrite::Order(order) => {
                self.insert_order_strict(&order, now_ms())?;
                Ok(1)
            }
            RowWrite::Fill {
                order,
                trade_id,
                qty,
                price,
                fee,
            } => {
                let order = self.order_of(&order, user)?;
                self.insert_fill(&order, &trade_id, qty, price, fee, false)?;
                Ok(1)
            }
            RowWrite::Journal {
                profile,
                order,
                kind,
                delta,
                dedup_key,
            } => {
                self.insert_journal(user, profile, order.as_ref(), kind, &delta, dedup_key)?;
                Ok(1)
            }
            RowWrite::UpdateJournal { profile } | RowWrite::DeleteJournal { profile } => {
                let rows = self
                    .db
                    .journal
                    .iter()
                    .filter(|r| r.profile == profile && r.user == user)
                    .count();
                if rows == 0 {
                    return Ok(0);
                }
                self.rewrite_journal()
            }
            RowWrite::OpenEntryLifecycle { order, qty, cost } => {
                let order = self.order_of(&order, user)?;
                self.insert_lifecycle(LifecycleRow {
                    user,
                    profile: order.profile,
                    symbol: order.symbol.clone(),
                    kind: IntentKind::Entry,
                    side: order.side,
                    client_order_id: order.client_order_id.clone(),
                    entry_lifecycle_id: None,
                    qty: money(qty),
                    cost: money(cost),
                    proceeds: Decimal::ZERO,
                    realized_pnl: Decimal::ZERO,
                    qty_open: money(qty),
                    cost_open: money(cost),
                    is_open: true,
                })?;
                Ok(1)
            }
            RowWrite::OpenQuarantine { profile } => {
                self.insert_quarantine(profile, user, "planted", "[]", now_ms())?;
                Ok(1)
            }
            RowWrite::ExpireLocks { kind } => {
                let rows: Vec<(String, LockRow)> = self.db.locks[lock_table(kind)]
                    .iter()
                    .map(|(key, row)| (key.clone(), *row))
                    .collect();
                for (key, row) in &rows {
                    let expired = LockRow {
                        expires_at_ms: 0,
                        ..*row
                    };
                    self.set_lock(kind, key, Some(expired))?;
                }
                Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
            }
            RowWrite::ExpireLock {
                kind,
                key,
                earlier_ms,
            } => {
                let Some(row) = self.lock(kind, &key) else {
                    return Ok(0);
                };
                let expires_at_ms = row.expires_at_ms.saturating_sub(earlier_ms);
                self.set_lock(
                    kind,
                    &key,
                    Some(LockRow {
                        expires_at_ms,
                        ..row
                    }),
                )?;
                Ok(1)
            }
        }
    }

    fn order_of(&self, coid: &ClientOrderId, user: UserId) -> Result<OrderRecord, StoreError> {
        self.db
            .order(coid, user)
            .cloned()
            .ok_or_else(|| crate::lifecycle::LifecycleError::UnknownOrder(coid.clone()).into())
    }
}

#[cfg(test)]
mod tests {
    //! The memory store's own constraints, beyond what the store contract suite plants: each
    //! write is made on the tables directly, as a raw statement would be on a database.

    use std::time::Duration;

    use rust_decimal_macros::dec;

    use super::*;
    use crate::ids::Fence;
    use crate::lock::{FencedLock, LockKey};
    use crate::money::{CapitalAmount, FilledQty, Price, Qty, Reservation};
    use crate::order::OrderStatus;

    fn pool() -> MemoryPool {
        MemoryPool::new(Duration::from_millis(50))
    }

    fn entry_order(user: UserId, profile: ProfileId, coid: &str) -> OrderRecord {
        OrderRecord {
            client_order_id: ClientOrderId::new(coid).unwrap(),
            user,
            profile,
            symbol: Symbol::new("BTCUSDT").unwrap(),
            kind: IntentKind::Entry,
            side: Side::Buy,
            qty: Qty::new(dec!(1)).unwrap(),
            price: Price::new(dec!(100)).unwrap(),
            reserved: Reservation::new(dec!(100)).unwrap(),
            reserved_remaining: Reservation::new(dec!(100)).unwrap(),
            filled_qty: FilledQty::ZERO,
            status: OrderStatus::PendingSubmit,
            lock: None,
            exchange_order_id: None,
        }
    }

    async fn with_profile(pool: &MemoryPool) -> (UserId, ProfileId) {
        let (user, profile) = (UserId::new_random(), ProfileId::new_random());
        let mut tx = pool.begin().await.unwrap();
        tx.insert_profile(profile, user, "p").unwrap();
        tx.commit();
        (user, profile)
    }

    fn constraint(result: Result<impl std::fmt::Debug, StoreError>) -> Constraint {
        match result {
            Err(StoreError::Constraint(c)) => c,
            other => panic!("expected a constraint, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_transaction_leaves_no_row_and_no_index_entry() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let order = entry_order(user, profile, "a");
        let mut tx = pool.begin().await.unwrap();
        let capital = Capital {
            allocated: CapitalAmount::new(dec!(100)).unwrap(),
            ..Capital::default()
        };
        tx.write_capital(profile, user, &capital).unwrap();
        assert!(tx.insert_order(&order, now_ms()).unwrap());
        tx.next_fence();
        drop(tx);
        let mut tx = pool.begin().await.unwrap();
        assert_eq!(tx.capital(profile, user), Some(Capital::default()));
        assert!(tx.order(&order.client_order_id, user).is_none());
        assert!(!tx.entry_in_flight(profile, user, &order.symbol));
        assert_eq!(tx.next_fence(), 1, "the fence sequence was rolled back too");
        // The open-entry index is free again: a second order for the symbol is accepted.
        assert!(
            tx.insert_order(&entry_order(user, profile, "b"), now_ms())
                .unwrap()
        );
        assert_eq!(
            constraint(tx.insert_order(&entry_order(user, profile, "c"), now_ms())),
            Constraint::OneOpenEntryOrder
        );
    }

    #[tokio::test]
    async fn a_closed_order_frees_its_symbol_and_a_rollback_takes_it_back() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let mut tx = pool.begin().await.unwrap();
        let order = entry_order(user, profile, "a");
        assert!(tx.insert_order(&order, now_ms()).unwrap());
        tx.commit();
        let mut tx = pool.begin().await.unwrap();
        let canceled = OrderRecord {
            status: OrderStatus::Canceled,
            reserved_remaining: Reservation::ZERO,
            ..order.clone()
        };
        tx.update_order(&canceled, user).unwrap();
        assert!(!tx.entry_in_flight(profile, user, &order.symbol));
        drop(tx);
        let mut tx = pool.begin().await.unwrap();
        assert!(tx.entry_in_flight(profile, user, &order.symbol));
        assert_eq!(
            constraint(tx.insert_order(&entry_order(user, profile, "b"), now_ms())),
            Constraint::OneOpenEntryOrder
        );
    }

    #[tokio::test]
    async fn a_fence_only_grows_and_a_stale_fence_is_refused() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let key = LockKey::new("entry:test").unwrap();
        let mut tx = pool.begin().await.unwrap();
        let row = LockRow {
            owner: uuid::Uuid::new_v4(),
            fence: 5,
            expires_at_ms: now_ms() + 60_000,
        };
        tx.set_lock(LockKind::Entry, key.as_str(), Some(row))
            .unwrap();
        let lower = LockRow { fence: 4, ..row };
        assert_eq!(
            constraint(tx.set_lock(LockKind::Entry, key.as_str(), Some(lower))),
            Constraint::FenceOnlyGrows
        );
        let mut order = entry_order(user, profile, "a");
        order.lock = Some(FencedLock {
            key: key.clone(),
            fence: Fence(4),
        });
        assert_eq!(
            constraint(tx.insert_order(&order, now_ms())),
            Constraint::CurrentFence
        );
        order.lock = Some(FencedLock {
            key,
            fence: Fence(5),
        });
        assert!(tx.insert_order(&order, now_ms()).unwrap());
    }

    #[tokio::test]
    async fn capital_columns_and_order_bounds_are_checked_as_the_schema_checks_them() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let mut tx = pool.begin().await.unwrap();
        let negative = Capital {
            allocated: CapitalAmount::new(dec!(10)).unwrap(),
            reserved_for_positions: CapitalAmount::new(dec!(-1)).unwrap(),
            ..Capital::default()
        };
        assert_eq!(
            constraint(tx.write_capital(profile, user, &negative)),
            Constraint::CapitalNonNegative("capital_reserved_for_positions_nonnegative".into())
        );
        let mut order = entry_order(user, profile, "a");
        order.reserved_remaining = Reservation::new(dec!(101)).unwrap();
        assert_eq!(
            constraint(tx.insert_order(&order, now_ms())),
            Constraint::Other("orders_reserved_remaining_bounded".into())
        );
        let other_user = entry_order(UserId::new_random(), profile, "b");
        assert_eq!(
            constraint(tx.insert_order(&other_user, now_ms())),
            Constraint::Other("orders_profile_fkey".into())
        );
    }

    #[tokio::test]
    async fn a_trade_id_is_recorded_once_per_profile_and_symbol() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let mut tx = pool.begin().await.unwrap();
        let order = entry_order(user, profile, "a");
        assert!(tx.insert_order(&order, now_ms()).unwrap());
        tx.insert_trade(&order, "t1").unwrap();
        assert_eq!(
            constraint(tx.insert_trade(&order, "t1")),
            Constraint::ExchangeTradeKey
        );
        assert!(
            tx.insert_fill(&order, "t1", dec!(1), dec!(100), dec!(0), true)
                .unwrap()
        );
        assert!(
            !tx.insert_fill(&order, "t1", dec!(1), dec!(100), dec!(0), true)
                .unwrap(),
            "with ON CONFLICT DO NOTHING a repeat is no row"
        );
        assert_eq!(
            constraint(tx.insert_fill(&order, "t1", dec!(1), dec!(100), dec!(0), false)),
            Constraint::ExchangeTradeKey
        );
    }

    #[tokio::test]
    async fn the_unique_keys_of_journal_fills_and_trades_go_with_their_rows() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let order = entry_order(user, profile, "a");
        let id = order.client_order_id.clone();
        let mut tx = pool.begin().await.unwrap();
        assert!(tx.insert_order(&order, now_ms()).unwrap());
        tx.commit();
        let delta = CapitalDelta::default();
        let write = |tx: &mut Transaction, key: &str, trade: &str| {
            tx.insert_journal(
                user,
                profile,
                Some(&id),
                JournalKind::Fill,
                &delta,
                key.into(),
            )?;
            tx.insert_fill(&order, trade, dec!(1), dec!(100), dec!(0), false)?;
            tx.insert_trade(&order, trade)
        };
        // Written, then rolled back: the keys are free again.
        let mut tx = pool.begin().await.unwrap();
        write(&mut tx, "fill:t1", "t1").unwrap();
        drop(tx);
        let mut tx = pool.begin().await.unwrap();
        assert!(tx.fill(profile, user, &order.symbol, "t1").is_none());
        write(&mut tx, "fill:t1", "t1").unwrap();
        // Rows enough to grow every index several times, each found under its own key.
        for n in 2..200 {
            write(&mut tx, &format!("fill:t{n}"), &format!("t{n}")).unwrap();
        }
        tx.commit();
        let mut tx = pool.begin().await.unwrap();
        for n in 1..200 {
            let trade = format!("t{n}");
            let row = tx.fill(profile, user, &order.symbol, &trade).unwrap();
            assert_eq!((row.trade_id.as_str(), row.qty), (trade.as_str(), dec!(1)));
        }
        // Committed: each key is taken, the other tables' rows notwithstanding.
        assert_eq!(
            constraint(tx.insert_journal(
                user,
                profile,
                Some(&id),
                JournalKind::Fill,
                &delta,
                "fill:t7".into()
            )),
            Constraint::LedgerDedupKey
        );
        assert_eq!(
            constraint(tx.insert_fill(&order, "t7", dec!(1), dec!(100), dec!(0), false)),
            Constraint::ExchangeTradeKey
        );
        assert_eq!(
            constraint(tx.insert_trade(&order, "t7")),
            Constraint::ExchangeTradeKey
        );
        // The same trade id on another symbol is another key.
        let mut other = entry_order(user, profile, "b");
        other.symbol = Symbol::new("ETHUSDT").unwrap();
        assert!(tx.insert_order(&other, now_ms()).unwrap());
        assert!(
            tx.insert_fill(&other, "t7", dec!(1), dec!(100), dec!(0), false)
                .unwrap()
        );
        tx.insert_trade(&other, "t7").unwrap();
    }

    #[tokio::test]
    async fn a_transaction_waits_for_the_open_one_at_most_its_timeout() {
        let pool = pool();
        let held = pool.begin().await.unwrap();
        assert!(matches!(pool.begin().await, Err(StoreError::MemoryBusy(_))));
        held.commit();
        pool.begin().await.unwrap().commit();
    }

    #[tokio::test]
    async fn a_closed_pool_opens_no_transaction_and_its_rows_stay_for_statements_from_outside() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        pool.clone().close();
        assert!(matches!(
            pool.begin().await,
            Err(StoreError::Database(sqlx::Error::PoolClosed))
        ));
        assert!(
            pool.begin_outside()
                .await
                .unwrap()
                .profile_owned(profile, user)
        );
    }

    #[cfg(feature = "lab")]
    #[tokio::test]
    async fn a_reopened_pool_sees_the_rows_the_closed_one_wrote() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        pool.close();
        let again = pool.reopened();
        assert!(again.begin().await.unwrap().profile_owned(profile, user));
        assert!(pool.begin().await.is_err(), "the closed pool stays closed");
    }

    #[cfg(feature = "lab")]
    #[tokio::test]
    async fn failing_writes_refuse_fills_and_order_updates_as_a_lost_connection() {
        let pool = pool();
        let (user, profile) = with_profile(&pool).await;
        let order = entry_order(user, profile, "a");
        let mut tx = pool.begin().await.unwrap();
        assert!(tx.insert_order(&order, 0).unwrap());
        tx.set_writes_failing(true);
        let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Database(_)));
        assert!(lost(
            tx.insert_fill(&order, "t1", dec!(1), dec!(100), dec!(0), true)
                .map(|_| ())
        ));
        let accepted = OrderRecord {
            status: OrderStatus::New,
            ..order.clone()
        };
        assert!(lost(tx.update_order(&accepted, user)));
        // Writes the triggers do not cover still go through.
        let other = OrderRecord {
            symbol: Symbol::new("ETHUSDT").unwrap(),
            ..entry_order(user, profile, "b")
        };
        assert!(tx.insert_order(&other, 0).unwrap());
        tx.set_writes_failing(false);
        tx.update_order(&accepted, user).unwrap();
        assert!(
            tx.insert_fill(&order, "t1", dec!(1), dec!(100), dec!(0), true)
                .unwrap()
        );
    }

    #[cfg(feature = "lab")]
    #[tokio::test]
    async fn an_entry_lock_taken_from_a_live_holder_is_audited_and_a_rollback_takes_it_back() {
        use crate::lock::OwnerToken;

        let store = super::super::Store::open_memory();
        let user = UserId::new_random();
        let key = LockKey::entry(ProfileId::new_random(), &Symbol::new("BTCUSDT").unwrap());
        let (first, second) = (OwnerToken::new_random(), OwnerToken::new_random());
        let mut tx = store.tenant(user).begin().await.unwrap();
        tx.acquire_lock(LockKind::Entry, &key, first, 60_000)
            .await
            .unwrap()
            .unwrap();
        // The holder taking its own live lease again is no steal.
        tx.acquire_lock_ignoring_holder(LockKind::Entry, &key, first, 60_000)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.memory_entry_lock_steals().await.unwrap(), 0);
        let mut tx = store.tenant(user).begin().await.unwrap();
        tx.acquire_lock_ignoring_holder(LockKind::Entry, &key, second, 60_000)
            .await
            .unwrap();
        drop(tx);
        assert_eq!(store.memory_entry_lock_steals().await.unwrap(), 0);
        let mut tx = store.tenant(user).begin().await.unwrap();
        tx.acquire_lock_ignoring_holder(LockKind::Entry, &key, second, 60_000)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.memory_entry_lock_steals().await.unwrap(), 1);
        // Once every lease lapsed, taking the lock over is no steal either.
        let lapsed = RowWrite::ExpireLocks {
            kind: LockKind::Entry,
        };
        assert_eq!(store.plant_row_write(user, lapsed).await.unwrap(), 1);
        let mut tx = store.tenant(user).begin().await.unwrap();
        assert!(
            tx.acquire_lock(LockKind::Entry, &key, first, 60_000)
                .await
                .unwrap()
                .is_some()
        );
        tx.commit().await.unwrap();
        assert_eq!(store.memory_entry_lock_steals().await.unwrap(), 1);
    }

    #[test]
    fn money_is_kept_as_the_database_keeps_it() {
        assert_eq!(money(dec!(1.50000000)).to_string(), "1.5");
        assert_eq!(money(dec!(100)).to_string(), "100");
        assert_eq!(money(-dec!(0.000)).to_string(), "0");
        assert_eq!(money(dec!(-0.00000001)).to_string(), "-0.00000001");
    }

    proptest::proptest! {
        /// The shortcut of [`money`] gives the very value (scale included) that the way through
        /// SQLite's units gives, for every value the ledger lets through.
        #[test]
        fn money_equals_the_round_trip_through_units(
            units in -(i64::MAX / 2)..=(i64::MAX / 2),
            scale in 0_u32..=AMOUNT_SCALE,
            padding in 0_u32..=10,
        ) {
            let exact = Decimal::new(units, AMOUNT_SCALE);
            // The same value written with more places (trailing zeros), as arithmetic leaves it.
            let padded = Decimal::from_i128_with_scale(
                i128::from(units) * 10_i128.pow(padding),
                AMOUNT_SCALE + padding,
            );
            let rounded = exact.round_dp(scale);
            for value in [exact, padded, rounded, -exact] {
                let through_units = units_to_decimal(decimal_to_units(value));
                proptest::prop_assert_eq!(money(value).serialize(), through_units.serialize());
            }
        }
    }
}
