//! The tenant scope: every operation on tenant data runs in a [`TenantTx`].

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use crate::ledger::{self, Capital, CapitalDelta, JournalKind, RebuildReport};
use crate::lifecycle::{
    self, EntryRequest, ExitRequest, FillOutcome, FillReport, LifecycleError, OrderRecord,
    Position, StatusOutcome, WriteAhead,
};
use crate::lock::LockError;
use crate::money::{Amount, FilledQty, Reservation};
use crate::order::{OrderStatus, Transition};
use crate::plant::{Plant, Planted};

use super::backend::Tx;
use super::history::LifecycleAdd;
use super::rows::Move;
use super::{Pool, Store, StoreError, StoreStats};

/// The longest profile name.
pub const PROFILE_NAME_LEN_MAX: usize = 64;

/// One user's view of the store. Obtained from [`Store::tenant`].
pub struct Tenant<'s> {
    store: &'s Store,
    user: UserId,
}

/// A transaction in one tenant's scope. Dropping it without [`TenantTx::commit`] rolls it back;
/// after any error it must be dropped.
pub struct TenantTx {
    pub(crate) tx: Tx,
    user: UserId,
    /// The profile whose lease guards the store ([`Store::guarded_by`]): its transactions see
    /// that profile's orders only, so an engine never applies a sibling profile's order under
    /// its own lease.
    scope: Option<ProfileId>,
    pub(super) stats: Arc<StoreStats>,
    plant: Planted,
}

impl<'s> Tenant<'s> {
    pub(crate) fn new(store: &'s Store, user: UserId) -> Self {
        Tenant { store, user }
    }

    /// The user this scope acts for.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Opens a transaction in this tenant's scope. On PostgreSQL it sets the transaction-local
    /// `request.jwt.claims` to `{"sub": user, "role": "authenticated"}`, so row-level security
    /// sees this user only; on SQLite it takes the write lock at once (`BEGIN IMMEDIATE`).
    ///
    /// A database's begin runs as a boxed future (see [`with_tx!`](super::backend::with_tx)):
    /// every operation waits on a begin, and the memory store's is small.
    pub async fn begin(&self) -> Result<TenantTx, StoreError> {
        let tx = match self.store.pool() {
            Pool::Pg(pool) => {
                Box::pin(async {
                    // One round trip: BEGIN and the claims as one simple query. The user id is
                    // a UUID printed by Rust, so the literal cannot carry anything else.
                    let begin = format!(
                        "BEGIN; SELECT set_config('request.jwt.claims', \
                         '{{\"sub\":\"{}\",\"role\":\"authenticated\"}}', true)",
                        self.user.as_uuid().hyphenated()
                    );
                    let mut tx = pool.begin_with(begin).await?;
                    // The lease check runs inside the opened transaction, not in the BEGIN
                    // query: a failed BEGIN query would leave the connection in an aborted
                    // transaction that nothing rolls back, while dropping `tx` does.
                    if let Some(guard) = self.store.guard() {
                        guard.check_pg(&mut tx).await?;
                    }
                    Ok::<_, StoreError>(Tx::Pg(tx))
                })
                .await?
            }
            Pool::Lite(pool) => {
                Box::pin(async {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    if let Some(guard) = self.store.guard() {
                        guard.check_lite(&mut tx).await?;
                    }
                    Ok::<_, StoreError>(Tx::Lite(tx))
                })
                .await?
            }
            Pool::InThread(pool) => {
                Box::pin(async {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    if let Some(guard) = self.store.guard() {
                        guard.check_in_thread(&mut tx).await?;
                    }
                    Ok::<_, StoreError>(Tx::InThread(tx))
                })
                .await?
            }
            Pool::Memory(pool) => {
                let tx = pool.begin().await?;
                if let Some(guard) = self.store.guard() {
                    guard.check_memory(&tx)?;
                }
                Tx::Memory(tx)
            }
        };
        Ok(TenantTx {
            tx,
            user: self.user,
            scope: self.store.guard().map(|guard| guard.profile),
            stats: self.store.stats_arc(),
            plant: self.store.plant(),
        })
    }
}

/// Generates `Tenant` methods that run one [`TenantTx`] operation in its own transaction.
macro_rules! in_own_transaction {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        impl Tenant<'_> {
            $(
                $(#[$doc])*
                ///
                /// Runs in its own transaction, committed on success.
                pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                    let mut tx = self.begin().await?;
                    let out = tx.$name($($arg),*).await?;
                    tx.commit().await?;
                    Ok(out)
                }
            )*
        }
    };
}

in_own_transaction! {
    /// See [`TenantTx::create_profile`].
    fn create_profile(name: &str) -> ProfileId;
    /// See [`TenantTx::create_profile_with_id`].
    fn create_profile_with_id(profile: ProfileId, name: &str) -> ();
    /// See [`TenantTx::capital`].
    fn capital(profile: ProfileId) -> Capital;
    /// See [`TenantTx::allocate`].
    fn allocate(profile: ProfileId, amount: Amount) -> Capital;
    /// See [`TenantTx::write_ahead_entry`].
    fn write_ahead_entry(request: &EntryRequest) -> WriteAhead;
    /// See [`TenantTx::write_ahead_exit`].
    fn write_ahead_exit(request: &ExitRequest) -> WriteAhead;
    /// See [`TenantTx::mark_unknown`].
    fn mark_unknown(order: &ClientOrderId) -> StatusOutcome;
    /// See [`TenantTx::confirm_accepted`].
    fn confirm_accepted(order: &ClientOrderId, exchange_order_id: &str) -> StatusOutcome;
    /// See [`TenantTx::release_order`].
    fn release_order(order: &ClientOrderId, status: OrderStatus) -> StatusOutcome;
    /// See [`TenantTx::record_fill`].
    fn record_fill(fill: &FillReport) -> FillOutcome;
    /// See [`TenantTx::rebuild_capital`].
    fn rebuild_capital(profile: ProfileId, repair: bool) -> RebuildReport;
    /// See [`TenantTx::order`].
    fn order(order: &ClientOrderId) -> Option<OrderRecord>;
    /// See [`TenantTx::position`].
    fn position(profile: ProfileId, symbol: &Symbol) -> Option<Position>;
    /// See [`TenantTx::quarantine`].
    fn quarantine(profile: ProfileId) -> Option<super::QuarantineRecord>;
    /// See [`TenantTx::enter_quarantine`].
    fn enter_quarantine(
        profile: ProfileId,
        reason: &str,
        evidence: &[super::QuarantineEvidence],
        now_ms: i64
    ) -> super::QuarantineRecord;
    /// See [`TenantTx::clear_quarantine`].
    fn clear_quarantine(profile: ProfileId) -> Option<super::QuarantineRecord>;
}

impl TenantTx {
    /// The user this transaction acts for.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The one profile whose orders this transaction sees, when its store is guarded by a
    /// profile lease.
    pub(crate) fn scope(&self) -> Option<ProfileId> {
        self.scope
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await
    }

    /// Holds this user's quota lock until the transaction ends, so that transactions that count
    /// the user's rows before adding one (their quotas) take turns. On PostgreSQL a transaction
    /// advisory lock keyed by the user; a SQLite writer already holds the whole database, and a
    /// memory store's transaction its database.
    pub async fn lock_user_quota(&mut self) -> Result<(), StoreError> {
        super::budgets::lock_budget(&mut self.tx, self.user).await
    }

    /// The PostgreSQL connection of this transaction, with the tenant's claims set: for reports
    /// and audits that read tenant tables under row-level security. `None` on SQLite.
    pub fn pg_connection(&mut self) -> Option<&mut sqlx::PgConnection> {
        match &mut self.tx {
            Tx::Pg(tx) => Some(&mut **tx),
            Tx::Lite(_) | Tx::InThread(_) | Tx::Memory(_) => None,
        }
    }

    /// Creates a profile owned by this user, with an empty capital account.
    pub async fn create_profile(&mut self, name: &str) -> Result<ProfileId, StoreError> {
        let profile = ProfileId::new_random();
        self.create_profile_with_id(profile, name).await?;
        Ok(profile)
    }

    /// Creates a profile under a chosen id, owned by this user, with an empty capital account:
    /// a replayed simulation needs the same id (client order ids derive from it) on every run.
    pub async fn create_profile_with_id(
        &mut self,
        profile: ProfileId,
        name: &str,
    ) -> Result<(), StoreError> {
        if let Err(error) = crate::ids::check_name(name, PROFILE_NAME_LEN_MAX) {
            return Err(StoreError::InvalidProfileName(name.to_owned(), error));
        }
        self.insert_profile(profile, name).await
    }

    /// The profile's capital row.
    pub async fn capital(&mut self, profile: ProfileId) -> Result<Capital, StoreError> {
        self.load_capital(profile, false).await
    }

    /// Adds `amount` to the profile's allocated capital.
    pub async fn allocate(
        &mut self,
        profile: ProfileId,
        amount: Amount,
    ) -> Result<Capital, StoreError> {
        let result = self.allocate_inner(profile, amount).await;
        self.stats.observe(result)
    }

    async fn allocate_inner(
        &mut self,
        profile: ProfileId,
        amount: Amount,
    ) -> Result<Capital, StoreError> {
        let amount = ledger::check_positive("allocation", amount.get())?;
        let moves = [Move {
            kind: JournalKind::Allocate,
            delta: CapitalDelta {
                allocated: amount,
                ..CapitalDelta::default()
            },
            dedup_key: format!("allocate:{}", uuid::Uuid::new_v4()),
        }];
        let capital = self.plan_moves(profile, &moves).await?;
        // The kernel's budget check, before the database's trigger and CHECK.
        self.lock_user_quota().await?;
        self.budget().await?.draw(amount)?;
        self.commit_moves(profile, None, &capital, moves).await?;
        Ok(capital)
    }

    /// Loads the capital row for update and checks every move against the ledger's invariant:
    /// the kernel refuses before the database's CHECK would.
    async fn plan_moves(
        &mut self,
        profile: ProfileId,
        moves: &[Move],
    ) -> Result<Capital, StoreError> {
        let mut capital = self.load_capital(profile, true).await?;
        for entry in moves {
            capital = self.checked_apply(&capital, &entry.delta)?;
        }
        assert!(capital.holds_invariant() || self.plant.is(Plant::LedgerCheckDisabled));
        Ok(capital)
    }

    /// The kernel's capital check before the database's: [`Capital::apply`], unless the
    /// simulation planted it away.
    fn checked_apply(
        &self,
        capital: &Capital,
        delta: &CapitalDelta,
    ) -> Result<Capital, StoreError> {
        if self.plant.is(Plant::LedgerCheckDisabled) {
            return Ok(capital.plus_unchecked(delta)?);
        }
        Ok(capital.apply(delta)?)
    }

    /// True unless the simulation planted fill de-duplication away.
    pub(crate) fn dedups_fills(&self) -> bool {
        !self.plant.is(Plant::FillDedupDisabled)
    }

    /// Writes the planned capital row and journals every non-zero move (the journal takes
    /// each move's key as it is).
    async fn commit_moves<const N: usize>(
        &mut self,
        profile: ProfileId,
        order: Option<&ClientOrderId>,
        capital: &Capital,
        moves: [Move; N],
    ) -> Result<(), StoreError> {
        self.write_capital(profile, capital).await?;
        for entry in moves.into_iter().filter(|m| !m.delta.is_zero()) {
            self.insert_journal(profile, order, entry).await?;
        }
        Ok(())
    }

    async fn apply_moves<const N: usize>(
        &mut self,
        profile: ProfileId,
        order: Option<&ClientOrderId>,
        moves: [Move; N],
    ) -> Result<Capital, StoreError> {
        let capital = self.plan_moves(profile, &moves).await?;
        self.commit_moves(profile, order, &capital, moves).await?;
        Ok(capital)
    }

    /// Writes an ENTRY order ahead of the exchange call: the order row (`PENDING_SUBMIT`) and its
    /// capital reservation, under the entry lock whose fence the request carries.
    ///
    /// Refused with a typed error, writing nothing, when the fence is stale, capital is
    /// insufficient, an entry is already in flight or open for the symbol, or the client order
    /// id exists with a different payload. The same request again is [`WriteAhead::Replayed`].
    pub async fn write_ahead_entry(
        &mut self,
        request: &EntryRequest,
    ) -> Result<WriteAhead, StoreError> {
        let result = self.write_ahead_entry_inner(request).await;
        self.stats.observe(result)
    }

    async fn write_ahead_entry_inner(
        &mut self,
        request: &EntryRequest,
    ) -> Result<WriteAhead, StoreError> {
        // The ledger's range and scale, which the SQLite encoding of an order row needs.
        ledger::check_positive("quantity", request.qty.get())?;
        ledger::check_positive("price", request.price.get())?;
        let reserved = lifecycle::entry_reservation(request.price, request.qty)?;
        let coid = &request.client_order_id;
        let gathered = self.gather_entry(request).await?;
        if gathered.order_exists {
            return self.entry_replay_of(coid, request).await;
        }
        if gathered.fence != Some(request.lock.fence) {
            return Err(LockError::StaleFence {
                key: request.lock.key.clone(),
                fence: request.lock.fence,
                current: gathered.fence,
            }
            .into());
        }
        let reserve = Move {
            kind: JournalKind::EntryReserve,
            delta: CapitalDelta {
                reserved_for_orders: reserved.get(),
                ..CapitalDelta::default()
            },
            dedup_key: ["reserve:", coid.as_str()].concat(),
        };
        let capital = self.checked_apply(&gathered.capital, &reserve.delta)?;
        if gathered.in_flight {
            return Err(LifecycleError::EntryInFlight {
                profile: request.profile,
                symbol: request.symbol.clone(),
            }
            .into());
        }
        let order = OrderRecord {
            client_order_id: coid.clone(),
            user: self.user,
            profile: request.profile,
            symbol: request.symbol.clone(),
            kind: IntentKind::Entry,
            side: request.side,
            qty: request.qty,
            price: request.price,
            reserved,
            reserved_remaining: reserved,
            filled_qty: FilledQty::ZERO,
            status: OrderStatus::PendingSubmit,
            lock: Some(request.lock.clone()),
            exchange_order_id: None,
        };
        let inserted = match self.tx {
            Tx::Pg(_) => self.pg_write_entry(&order, &capital, &reserve).await?,
            Tx::Lite(_) | Tx::InThread(_) | Tx::Memory(_) => {
                let inserted = self.insert_order(&order).await?;
                if inserted {
                    self.commit_moves(request.profile, Some(coid), &capital, [reserve])
                        .await?;
                }
                inserted
            }
        };
        if !inserted {
            // Written by a concurrent transaction since the first look, or another tenant's.
            return self.entry_replay_of(coid, request).await;
        }
        Ok(WriteAhead::Written(order))
    }

    async fn entry_replay_of(
        &mut self,
        coid: &ClientOrderId,
        request: &EntryRequest,
    ) -> Result<WriteAhead, StoreError> {
        let existing = self.load_order(coid, false).await?;
        let existing = existing.ok_or_else(|| LifecycleError::ClientOrderIdTaken(coid.clone()))?;
        self.entry_replay(existing, request)
    }

    fn entry_replay(
        &self,
        existing: OrderRecord,
        request: &EntryRequest,
    ) -> Result<WriteAhead, StoreError> {
        if existing.matches_entry(request) {
            self.stats.replay_duplicate();
            Ok(WriteAhead::Replayed(existing))
        } else {
            Err(LifecycleError::ReplayMismatch(existing.client_order_id).into())
        }
    }

    /// Writes an EXIT order ahead of the exchange call. It reserves nothing; it needs an open
    /// position with enough quantity not already being exited.
    pub async fn write_ahead_exit(
        &mut self,
        request: &ExitRequest,
    ) -> Result<WriteAhead, StoreError> {
        let result = self.write_ahead_exit_inner(request).await;
        self.stats.observe(result)
    }

    async fn write_ahead_exit_inner(
        &mut self,
        request: &ExitRequest,
    ) -> Result<WriteAhead, StoreError> {
        let qty = ledger::check_positive("quantity", request.qty.get())?;
        ledger::check_positive("price", request.price.get())?;
        let coid = &request.client_order_id;
        let replay = |this: &Self, existing: OrderRecord| {
            if existing.matches_exit(request) {
                this.stats.replay_duplicate();
                Ok(WriteAhead::Replayed(existing))
            } else {
                Err(StoreError::from(LifecycleError::ReplayMismatch(
                    existing.client_order_id,
                )))
            }
        };
        if let Some(existing) = self.load_order(coid, false).await? {
            return replay(self, existing);
        }
        self.load_capital(request.profile, false).await?;
        let position = self
            .open_position(request.profile, &request.symbol, true)
            .await?;
        let position = position.ok_or_else(|| LifecycleError::NoOpenPosition {
            profile: request.profile,
            symbol: request.symbol.clone(),
        })?;
        let open = position.qty_open.get()
            - self
                .pending_exit_qty(request.profile, &request.symbol)
                .await?;
        if qty > open {
            return Err(LifecycleError::ExitExceedsPosition { qty, open }.into());
        }
        let order = OrderRecord {
            client_order_id: coid.clone(),
            user: self.user,
            profile: request.profile,
            symbol: request.symbol.clone(),
            kind: IntentKind::Exit,
            side: position.side.opposite(),
            qty: request.qty,
            price: request.price,
            reserved: Reservation::ZERO,
            reserved_remaining: Reservation::ZERO,
            filled_qty: FilledQty::ZERO,
            status: OrderStatus::PendingSubmit,
            lock: None,
            exchange_order_id: None,
        };
        if !self.insert_order(&order).await? {
            let existing = self.load_order(coid, false).await?;
            let existing =
                existing.ok_or_else(|| LifecycleError::ClientOrderIdTaken(coid.clone()))?;
            return replay(self, existing);
        }
        Ok(WriteAhead::Written(order))
    }

    /// The exchange's answer was lost: the order becomes `UNKNOWN`, its reservation stays.
    pub async fn mark_unknown(
        &mut self,
        order: &ClientOrderId,
    ) -> Result<StatusOutcome, StoreError> {
        let result = self.apply_status(order, OrderStatus::Unknown, None).await;
        self.stats.observe(result)
    }

    /// The exchange accepted the order (`NEW`) under `exchange_order_id`.
    pub async fn confirm_accepted(
        &mut self,
        order: &ClientOrderId,
        exchange_order_id: &str,
    ) -> Result<StatusOutcome, StoreError> {
        let result = match lifecycle::check_exchange_id(exchange_order_id) {
            Ok(()) => {
                self.apply_status(order, OrderStatus::New, Some(exchange_order_id))
                    .await
            }
            Err(e) => Err(e.into()),
        };
        self.stats.observe(result)
    }

    /// The order ended without (further) fills: `CANCELED`, `REJECTED` or `EXPIRED`. What it
    /// still reserved is released, once: a repeated report changes nothing.
    pub async fn release_order(
        &mut self,
        order: &ClientOrderId,
        status: OrderStatus,
    ) -> Result<StatusOutcome, StoreError> {
        let result = match status {
            OrderStatus::Canceled | OrderStatus::Rejected | OrderStatus::Expired => {
                self.apply_status(order, status, None).await
            }
            other => Err(LifecycleError::NotAReleaseStatus(other).into()),
        };
        self.stats.observe(result)
    }

    async fn apply_status(
        &mut self,
        coid: &ClientOrderId,
        reported: OrderStatus,
        exchange_order_id: Option<&str>,
    ) -> Result<StatusOutcome, StoreError> {
        let mut order = self.load_order(coid, true).await?;
        let mut order = order
            .take()
            .ok_or_else(|| LifecycleError::UnknownOrder(coid.clone()))?;
        let next = match order.status.apply(reported).map_err(LifecycleError::from)? {
            Transition::Same | Transition::Stale => {
                self.stats.replay_duplicate();
                return Ok(StatusOutcome::Unchanged(order));
            }
            Transition::Advance(next) => next,
        };
        order.status = next;
        if let Some(id) = exchange_order_id {
            order.exchange_order_id = Some(id.into());
        }
        if next.is_terminal() && order.reserved_remaining > Reservation::ZERO {
            let moves = [Move {
                kind: JournalKind::CancelRelease,
                delta: CapitalDelta {
                    reserved_for_orders: -order.reserved_remaining.get(),
                    ..CapitalDelta::default()
                },
                dedup_key: ["release:", coid.as_str()].concat(),
            }];
            self.apply_moves(order.profile, Some(coid), moves).await?;
            order.reserved_remaining = Reservation::ZERO;
        }
        self.update_order(&order).await?;
        Ok(StatusOutcome::Changed(order))
    }

    /// The order (of this tenant) with this client order id.
    pub async fn order(
        &mut self,
        order: &ClientOrderId,
    ) -> Result<Option<OrderRecord>, StoreError> {
        self.load_order(order, false).await
    }

    /// The open position (ENTRY lifecycle) of (profile, symbol).
    pub async fn position(
        &mut self,
        profile: ProfileId,
        symbol: &Symbol,
    ) -> Result<Option<Position>, StoreError> {
        self.open_position(profile, symbol, false).await
    }

    /// Records a fill the exchange reported, once: the exchange trade id is the key, so the
    /// same fill again is [`FillOutcome::Duplicate`] and a different fill under the same trade id
    /// is refused. ENTRY fills move reservation to the position and open (or grow) the ENTRY
    /// row; EXIT fills release position cost, realize PnL and write the EXIT row. Fees are
    /// charged to realized PnL. Trade history gets one row per fill.
    pub async fn record_fill(&mut self, fill: &FillReport) -> Result<FillOutcome, StoreError> {
        let result = self.record_fill_inner(fill).await;
        self.stats.observe(result)
    }

    async fn record_fill_inner(&mut self, fill: &FillReport) -> Result<FillOutcome, StoreError> {
        lifecycle::check_exchange_id(&fill.exchange_trade_id)?;
        ledger::check_positive("fill quantity", fill.qty.get())?;
        ledger::check_positive("fill price", fill.price.get())?;
        ledger::check_nonnegative("fee", fill.fee)?;
        let coid = &fill.client_order_id;
        let gathered = self.gather_fill(fill).await?;
        let gathered = gathered.ok_or_else(|| LifecycleError::UnknownOrder(coid.clone()))?;
        if let Some(stored) = gathered.existing.filter(|_| self.dedups_fills()) {
            return self.fill_replay(Some(stored), fill);
        }
        let order = gathered.order;
        let filled = order.filled_after(fill.qty)?;
        let reported = lifecycle::status_after_fill(order.qty, filled);
        let next = match order.status.apply(reported).map_err(LifecycleError::from)? {
            Transition::Advance(next) => next,
            Transition::Same | Transition::Stale => order.status,
        };
        if order.kind == IntentKind::Entry && matches!(self.tx, Tx::Pg(_)) {
            return self
                .pg_entry_fill(order, filled, next, gathered.capital, fill)
                .await;
        }
        self.fill_statement_by_statement(order, filled, next, fill)
            .await
    }

    /// PostgreSQL's ENTRY fill: the capital read with the order is checked here, then every row
    /// is written by one statement.
    async fn pg_entry_fill(
        &mut self,
        order: OrderRecord,
        filled: FilledQty,
        next: OrderStatus,
        capital: Capital,
        fill: &FillReport,
    ) -> Result<FillOutcome, StoreError> {
        let mv = lifecycle::entry_fill_move(&order, fill.qty, fill.price, fill.fee)?;
        let moves = entry_fill_moves(&order, fill, mv.released, mv.cost);
        let mut planned = capital;
        for entry in &moves {
            planned = self.checked_apply(&planned, &entry.delta)?;
        }
        let after = order.after_fill(filled, mv.released, next)?;
        let first_fill = order.filled_qty == FilledQty::ZERO;
        self.pg_write_entry_fill(&after, first_fill, fill, mv.cost, &planned, &moves)
            .await?;
        Ok(FillOutcome::Recorded {
            order: Box::new(after),
            realized_pnl: Decimal::ZERO,
        })
    }

    /// Every other fill (and every fill on SQLite), one statement per row.
    async fn fill_statement_by_statement(
        &mut self,
        order: OrderRecord,
        filled: FilledQty,
        next: OrderStatus,
        fill: &FillReport,
    ) -> Result<FillOutcome, StoreError> {
        if !self.insert_fill(&order, fill).await? {
            let stored = self.load_fill(&order, &fill.exchange_trade_id).await?;
            return self.fill_replay(stored, fill);
        }
        let (realized_pnl, released) = match order.kind {
            IntentKind::Entry => (Decimal::ZERO, self.entry_fill(&order, fill).await?),
            IntentKind::Exit => (self.exit_fill(&order, fill).await?, Reservation::ZERO),
        };
        let order = order.after_fill(filled, released, next)?;
        self.update_order(&order).await?;
        self.insert_trade(&order, fill, realized_pnl).await?;
        Ok(FillOutcome::Recorded {
            order: Box::new(order),
            realized_pnl,
        })
    }

    fn fill_replay(
        &self,
        stored: Option<super::rows::StoredFill>,
        fill: &FillReport,
    ) -> Result<FillOutcome, StoreError> {
        let same = stored.is_some_and(|s| {
            s.client_order_id == fill.client_order_id.as_str()
                && s.qty == fill.qty.get()
                && s.price == fill.price.get()
                && s.fee == fill.fee
        });
        if same {
            self.stats.replay_duplicate();
            Ok(FillOutcome::Duplicate)
        } else {
            Err(LifecycleError::FillReplayMismatch(fill.exchange_trade_id.clone()).into())
        }
    }

    /// Applies an ENTRY fill to the ledger and the ENTRY row; `order` is as before the fill.
    /// Returns the reservation the fill released from the order.
    async fn entry_fill(
        &mut self,
        order: &OrderRecord,
        fill: &FillReport,
    ) -> Result<Reservation, StoreError> {
        let mv = lifecycle::entry_fill_move(order, fill.qty, fill.price, fill.fee)?;
        let moves = entry_fill_moves(order, fill, mv.released, mv.cost);
        let capital = self.plan_moves(order.profile, &moves).await?;
        let add = LifecycleAdd {
            qty: fill.qty.get(),
            cost: mv.cost,
            proceeds: Decimal::ZERO,
            realized_pnl: Decimal::ZERO,
        };
        self.add_entry_fill(order, &add).await?;
        self.commit_moves(order.profile, Some(&order.client_order_id), &capital, moves)
            .await?;
        Ok(mv.released)
    }

    /// Applies an EXIT fill to the ledger, the position and the EXIT row. Returns realized PnL.
    async fn exit_fill(
        &mut self,
        order: &OrderRecord,
        fill: &FillReport,
    ) -> Result<Decimal, StoreError> {
        let (qty, price) = (fill.qty.get(), fill.price.get());
        let position = self
            .open_position(order.profile, &order.symbol, true)
            .await?;
        let position = position.ok_or_else(|| LifecycleError::NoOpenPosition {
            profile: order.profile,
            symbol: order.symbol.clone(),
        })?;
        if qty > position.qty_open.get() {
            return Err(LifecycleError::ExitExceedsPosition {
                qty,
                open: position.qty_open.get(),
            }
            .into());
        }
        let mv = lifecycle::try_exit_fill_move(&position, qty, price, fill.fee)?;
        let trade = &fill.exchange_trade_id;
        let moves = [
            Move {
                kind: JournalKind::Exit,
                delta: CapitalDelta {
                    reserved_for_positions: -mv.cost_released,
                    ..CapitalDelta::default()
                },
                dedup_key: trade_key("exit", &order.symbol, trade),
            },
            Move {
                kind: JournalKind::RealizedPnl,
                delta: CapitalDelta {
                    realized_pnl: mv.pnl,
                    ..CapitalDelta::default()
                },
                dedup_key: trade_key("pnl", &order.symbol, trade),
            },
            fee_move(&order.symbol, trade, fill.fee),
        ];
        let capital = self.plan_moves(order.profile, &moves).await?;
        let add = LifecycleAdd {
            qty,
            cost: mv.cost_released,
            proceeds: mv.proceeds,
            realized_pnl: mv.pnl,
        };
        self.add_exit_fill(order, &position, &add).await?;
        self.commit_moves(order.profile, Some(&order.client_order_id), &capital, moves)
            .await?;
        Ok(mv.pnl)
    }

    /// Recomputes the profile's capital row from its journal. With `repair`, a differing row is
    /// overwritten by the journal's sum. Differences are counted in the store's stats.
    pub async fn rebuild_capital(
        &mut self,
        profile: ProfileId,
        repair: bool,
    ) -> Result<RebuildReport, StoreError> {
        let stored = self.load_capital(profile, true).await?;
        let journal = self.journal_sum(profile).await?;
        let differs = stored != journal;
        if differs {
            self.stats.rebuild_difference();
            if repair {
                self.write_capital(profile, &journal).await?;
            }
        }
        Ok(RebuildReport {
            stored,
            journal,
            repaired: differs && repair,
        })
    }
}

/// The journal moves of an ENTRY fill: reservation to position, then the fee.
fn entry_fill_moves(
    order: &OrderRecord,
    fill: &FillReport,
    released: Reservation,
    cost: Decimal,
) -> [Move; 2] {
    let trade = &fill.exchange_trade_id;
    [
        Move {
            kind: JournalKind::Fill,
            delta: CapitalDelta {
                reserved_for_orders: -released.get(),
                reserved_for_positions: cost,
                ..CapitalDelta::default()
            },
            dedup_key: trade_key("fill", &order.symbol, trade),
        },
        fee_move(&order.symbol, trade, fill.fee),
    ]
}

fn fee_move(symbol: &Symbol, trade: &str, fee: Decimal) -> Move {
    Move {
        kind: JournalKind::Fee,
        delta: CapitalDelta {
            realized_pnl: -fee,
            ..CapitalDelta::default()
        },
        dedup_key: trade_key("fee", symbol, trade),
    }
}

/// The journal key of a trade's move of `kind` (`fill`, `fee`, `exit`, `pnl`): at most one
/// move of each kind per exchange trade of the symbol.
fn trade_key(kind: &str, symbol: &Symbol, trade: &str) -> String {
    [kind, ":", symbol.as_str(), ":", trade].concat()
}
