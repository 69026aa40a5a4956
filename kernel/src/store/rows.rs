//! The statements a [`TenantTx`] is made of, each written once for both backends. Every one
//! filters by the tenant's `user_id`, on top of row-level security on PostgreSQL.

use std::sync::LazyLock;

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::ids::{ClientOrderId, Fence, IntentKind, ProfileId, Symbol, UserId};
use crate::ledger::{Capital, CapitalDelta, JournalKind};
use crate::lifecycle::{EntryRequest, FillReport, OrderRecord, Position};
use crate::lock::{FencedLock, LockKey, LockKind};
use crate::market::Side;
use crate::money::{Qty, Reservation};
use crate::order::OrderStatus;

use super::StoreError;
use super::backend::{RowExt, with_tx};
use super::memory::{self, FillRow};
use super::tenant::TenantTx;

/// The statuses of an order that may still fill ([`OrderStatus::is_open`]: it holds a
/// reservation and blocks a new ENTRY) as an SQL list in their stored form,
/// `('PENDING_SUBMIT', 'UNKNOWN', 'NEW', 'PARTIALLY_FILLED')`. Derived from the status table, so
/// the statements cannot drift from it; the partial indexes of the migrations are checked
/// against it by a test.
pub(super) fn open_statuses_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let quoted: Vec<String> = OrderStatus::ALL
            .into_iter()
            .filter(|status| status.is_open())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        format!("({})", quoted.join(", "))
    });
    &SQL
}

pub(super) const ORDER_COLUMNS: &str = "client_order_id, user_id, profile_id, symbol, kind, side, qty, price, \
     reserved, reserved_remaining, filled_qty, status, lock_key, fence, exchange_order_id";

/// One journal move: what it is, its delta and the key that makes it happen at most once.
pub(crate) struct Move {
    pub kind: JournalKind,
    pub delta: CapitalDelta,
    pub dedup_key: String,
}

pub(crate) fn side_str(side: Side) -> &'static str {
    match side {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

pub(super) fn parse_side(text: &str) -> Result<Side, StoreError> {
    match text {
        "BUY" => Ok(Side::Buy),
        "SELL" => Ok(Side::Sell),
        other => Err(StoreError::Corrupt(format!("side {other:?}"))),
    }
}

pub(crate) fn kind_str(kind: IntentKind) -> &'static str {
    match kind {
        IntentKind::Entry => "ENTRY",
        IntentKind::Exit => "EXIT",
    }
}

pub(super) fn parse_kind(text: &str) -> Result<IntentKind, StoreError> {
    match text {
        "ENTRY" => Ok(IntentKind::Entry),
        "EXIT" => Ok(IntentKind::Exit),
        other => Err(StoreError::Corrupt(format!("order kind {other:?}"))),
    }
}

pub(super) fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn decode_capital(row: &impl RowExt) -> Result<Capital, StoreError> {
    Ok(Capital {
        allocated: row.checked_money("allocated")?,
        reserved_for_orders: row.checked_money("reserved_for_orders")?,
        reserved_for_positions: row.checked_money("reserved_for_positions")?,
        realized_pnl: row.checked_money("realized_pnl")?,
    })
}

pub(super) fn decode_order(row: &impl RowExt) -> Result<OrderRecord, StoreError> {
    let coid = row.text("client_order_id")?;
    let status = row.text("status")?;
    let lock = match (row.opt_text("lock_key")?, row.opt_int("fence")?) {
        (Some(key), Some(fence)) => Some(FencedLock {
            key: LockKey::new(&key).map_err(|e| corrupt("lock key", e))?,
            fence: Fence(fence),
        }),
        _ => None,
    };
    Ok(OrderRecord {
        client_order_id: ClientOrderId::new(&coid).map_err(|e| corrupt("client order id", e))?,
        user: UserId::from_uuid(row.uuid("user_id")?),
        profile: ProfileId::from_uuid(row.uuid("profile_id")?),
        symbol: Symbol::new(&row.text("symbol")?).map_err(|e| corrupt("symbol", e))?,
        kind: parse_kind(&row.text("kind")?)?,
        side: parse_side(&row.text("side")?)?,
        qty: row.checked_money("qty")?,
        price: row.checked_money("price")?,
        reserved: row.checked_money("reserved")?,
        reserved_remaining: row.checked_money("reserved_remaining")?,
        filled_qty: row.checked_money("filled_qty")?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("order status {status:?}")))?,
        lock,
        exchange_order_id: row.opt_text("exchange_order_id")?.map(Into::into),
    })
}

pub(super) fn decode_position(row: &impl RowExt, symbol: &Symbol) -> Result<Position, StoreError> {
    Ok(Position {
        lifecycle_id: row.int("lifecycle_id")?,
        symbol: symbol.clone(),
        side: parse_side(&row.text("side")?)?,
        qty_open: row.checked_money("qty_open")?,
        cost_open: row.checked_money("cost_open")?,
    })
}

/// What [`TenantTx::gather_entry`] reads.
pub(crate) struct EntryGather {
    pub capital: Capital,
    pub order_exists: bool,
    pub fence: Option<Fence>,
    pub in_flight: bool,
}

/// What [`TenantTx::gather_fill`] reads.
pub(crate) struct FillGather {
    pub order: OrderRecord,
    pub capital: Capital,
    pub existing: Option<StoredFill>,
}

/// A fill as stored, for comparing a replay with the original.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StoredFill {
    pub client_order_id: String,
    pub qty: Decimal,
    pub price: Decimal,
    pub fee: Decimal,
}

fn stored_fill(row: &FillRow) -> StoredFill {
    StoredFill {
        client_order_id: row.client_order_id.as_str().to_owned(),
        qty: row.qty,
        price: row.price,
        fee: row.fee,
    }
}

/// The position an open ENTRY lifecycle row of the memory store is, refused as
/// [`StoreError::Corrupt`] as a database row would be when a column is out of its type's range.
pub(super) fn memory_position(id: i64, row: &memory::LifecycleRow) -> Result<Position, StoreError> {
    Ok(Position {
        lifecycle_id: id,
        symbol: row.symbol.clone(),
        side: row.side,
        qty_open: Qty::new(row.qty_open).map_err(|e| corrupt("qty_open", e))?,
        cost_open: Reservation::new(row.cost_open).map_err(|e| corrupt("cost_open", e))?,
    })
}

impl TenantTx {
    pub(super) fn user_uuid(&self) -> Uuid {
        self.user().as_uuid()
    }

    pub(crate) async fn insert_profile(
        &mut self,
        profile: ProfileId,
        name: &str,
    ) -> Result<(), StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            sqlx::query("INSERT INTO profiles (profile_id, user_id, name) VALUES ($1, $2, $3)")
                .bind(profile.as_uuid()).bind(user).bind(name)
                .execute(&mut **c).await?;
            sqlx::query("INSERT INTO capital_accounts (profile_id, user_id) VALUES ($1, $2)")
                .bind(profile.as_uuid()).bind(user)
                .execute(&mut **c).await?;
        }, memory m => {
            m.insert_profile(profile, UserId::from_uuid(user), name)?;
        });
        Ok(())
    }

    pub(crate) async fn load_capital(
        &mut self,
        profile: ProfileId,
        lock: bool,
    ) -> Result<Capital, StoreError> {
        let user = self.user_uuid();
        let row = with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT allocated, reserved_for_orders, reserved_for_positions, realized_pnl \
                 FROM capital_accounts WHERE profile_id = $1 AND user_id = $2 {}",
                if lock { b::FOR_UPDATE } else { "" }
            );
            let row = sqlx::query(&sql).bind(profile.as_uuid()).bind(user)
                .fetch_optional(&mut **c).await?;
            row.map(|r| decode_capital(&r)).transpose()?
        }, memory m => {
            m.capital(profile, UserId::from_uuid(user))
        });
        row.ok_or(StoreError::UnknownProfile(profile))
    }

    pub(crate) async fn write_capital(
        &mut self,
        profile: ProfileId,
        capital: &Capital,
    ) -> Result<(), StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "UPDATE capital_accounts SET allocated = $3, reserved_for_orders = $4, \
                 reserved_for_positions = $5, realized_pnl = $6, updated_at_ms = {} \
                 WHERE profile_id = $1 AND user_id = $2",
                b::NOW_MS
            );
            sqlx::query(&sql)
                .bind(profile.as_uuid()).bind(user)
                .bind(b::money(capital.allocated))
                .bind(b::money(capital.reserved_for_orders))
                .bind(b::money(capital.reserved_for_positions))
                .bind(b::money(capital.realized_pnl))
                .execute(&mut **c).await?;
        }, memory m => {
            m.write_capital(profile, UserId::from_uuid(user), capital)?;
        });
        Ok(())
    }

    pub(crate) async fn insert_journal(
        &mut self,
        profile: ProfileId,
        order: Option<&ClientOrderId>,
        entry: Move,
    ) -> Result<(), StoreError> {
        let user = self.user_uuid();
        let d = entry.delta;
        with_tx!(&mut self.tx, c, b => {
            sqlx::query(
                "INSERT INTO ledger_entries (user_id, profile_id, client_order_id, entry_kind, \
                 d_allocated, d_reserved_for_orders, d_reserved_for_positions, d_realized_pnl, dedup_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(user).bind(profile.as_uuid()).bind(order.map(|o| o.as_str().to_owned()))
            .bind(entry.kind.as_str())
            .bind(b::money(d.allocated)).bind(b::money(d.reserved_for_orders))
            .bind(b::money(d.reserved_for_positions)).bind(b::money(d.realized_pnl))
            .bind(entry.dedup_key.as_str())
            .execute(&mut **c).await?;
        }, memory m => {
            let user = UserId::from_uuid(user);
            m.insert_journal(user, profile, order, entry.kind, &d, entry.dedup_key)?;
        });
        Ok(())
    }

    pub(crate) async fn journal_sum(&mut self, profile: ProfileId) -> Result<Capital, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let row = sqlx::query(
                "SELECT COALESCE(SUM(d_allocated), 0) AS allocated, \
                 COALESCE(SUM(d_reserved_for_orders), 0) AS reserved_for_orders, \
                 COALESCE(SUM(d_reserved_for_positions), 0) AS reserved_for_positions, \
                 COALESCE(SUM(d_realized_pnl), 0) AS realized_pnl \
                 FROM ledger_entries WHERE profile_id = $1 AND user_id = $2",
            )
            .bind(profile.as_uuid()).bind(user)
            .fetch_one(&mut **c).await?;
            decode_capital(&row)
        }, memory m => {
            m.journal_sum(profile, UserId::from_uuid(user))
        })
    }

    pub(crate) async fn load_order(
        &mut self,
        coid: &ClientOrderId,
        lock: bool,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let user = self.user_uuid();
        let scope = self.scope();
        let order = with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE client_order_id = $1 AND user_id = $2 {}",
                if lock { b::FOR_UPDATE } else { "" }
            );
            let row = sqlx::query(&sql).bind(coid.as_str()).bind(user)
                .fetch_optional(&mut **c).await?;
            row.map(|r| decode_order(&r)).transpose()?
        }, memory m => {
            m.order(coid, UserId::from_uuid(user)).cloned()
        });
        // Under a profile lease, another profile's order is not there.
        Ok(order.filter(|order| scope.is_none_or(|profile| order.profile == profile)))
    }

    /// Inserts the write-ahead row; false when the client order id already exists.
    pub(crate) async fn insert_order(&mut self, order: &OrderRecord) -> Result<bool, StoreError> {
        with_tx!(&mut self.tx, c, b => {
            let (lock_key, fence) = match &order.lock {
                Some(lock) => (Some(lock.key.as_str().to_owned()), Some(lock.fence.0)),
                None => (None, None),
            };
            let row = sqlx::query(
                "INSERT INTO orders (client_order_id, user_id, profile_id, symbol, kind, side, qty, \
                 price, reserved, reserved_remaining, filled_qty, status, lock_key, fence) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (client_order_id) DO NOTHING RETURNING order_id",
            )
            .bind(order.client_order_id.as_str()).bind(order.user.as_uuid())
            .bind(order.profile.as_uuid()).bind(order.symbol.as_str())
            .bind(kind_str(order.kind)).bind(side_str(order.side))
            .bind(b::money(order.qty)).bind(b::money(order.price))
            .bind(b::money(order.reserved)).bind(b::money(order.reserved_remaining))
            .bind(b::money(order.filled_qty)).bind(order.status.as_str())
            .bind(lock_key).bind(fence)
            .fetch_optional(&mut **c).await?;
            Ok(row.is_some())
        }, memory m => {
            m.insert_order(order, memory::now_ms())
        })
    }

    pub(crate) async fn update_order(&mut self, order: &OrderRecord) -> Result<(), StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "UPDATE orders SET status = $3, filled_qty = $4, reserved_remaining = $5, \
                 exchange_order_id = $6, updated_at_ms = {} WHERE client_order_id = $1 AND user_id = $2",
                b::NOW_MS
            );
            sqlx::query(&sql)
                .bind(order.client_order_id.as_str()).bind(user)
                .bind(order.status.as_str()).bind(b::money(order.filled_qty))
                .bind(b::money(order.reserved_remaining)).bind(order.exchange_order_id.as_deref())
                .execute(&mut **c).await?;
        }, memory m => {
            m.update_order(order, UserId::from_uuid(user))?;
        });
        Ok(())
    }

    /// Everything a write-ahead ENTRY decides on, read in one statement: the capital row (locked
    /// until commit on PostgreSQL), whether the client order id is already this tenant's, the
    /// lock's current unexpired fence, and whether an entry is in flight or open for the symbol.
    pub(crate) async fn gather_entry(
        &mut self,
        request: &EntryRequest,
    ) -> Result<EntryGather, StoreError> {
        let user = self.user_uuid();
        let row = with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT c.allocated, c.reserved_for_orders, c.reserved_for_positions, c.realized_pnl, \
                 (SELECT count(*) FROM orders WHERE client_order_id = $3 AND user_id = $2) AS order_exists, \
                 (SELECT fence FROM entry_locks WHERE lock_key = $4 AND expires_at_ms > {now}) AS fence, \
                 (SELECT count(*) FROM orders WHERE profile_id = $1 AND user_id = $2 AND symbol = $5 \
                  AND kind = 'ENTRY' AND status IN {open}) + \
                 (SELECT count(*) FROM lifecycles WHERE profile_id = $1 AND user_id = $2 AND symbol = $5 \
                  AND kind = 'ENTRY' AND is_open) AS in_flight \
                 FROM capital_accounts c WHERE c.profile_id = $1 AND c.user_id = $2 {lock}",
                now = b::NOW_MS,
                lock = b::FOR_UPDATE,
                open = open_statuses_sql(),
            );
            let row = sqlx::query(&sql)
                .bind(request.profile.as_uuid()).bind(user)
                .bind(request.client_order_id.as_str()).bind(request.lock.key.as_str())
                .bind(request.symbol.as_str())
                .fetch_optional(&mut **c).await?;
            row.map(|r| -> Result<EntryGather, StoreError> {
                Ok(EntryGather {
                    capital: decode_capital(&r)?,
                    order_exists: r.int("order_exists")? > 0,
                    fence: r.opt_int("fence")?.map(Fence),
                    in_flight: r.int("in_flight")? > 0,
                })
            })
            .transpose()?
        }, memory m => {
            let user = UserId::from_uuid(user);
            let key = request.lock.key.as_str();
            m.capital(request.profile, user).map(|capital| EntryGather {
                capital,
                order_exists: m.order(&request.client_order_id, user).is_some(),
                fence: m.live_fence(LockKind::Entry, key, memory::now_ms()).map(Fence),
                in_flight: m.entry_in_flight(request.profile, user, &request.symbol),
            })
        });
        row.ok_or(StoreError::UnknownProfile(request.profile))
    }

    /// Everything a fill decides on, read in one statement: the order and its profile's capital
    /// row (both locked until commit on PostgreSQL) and any fill already stored under the trade id.
    pub(crate) async fn gather_fill(
        &mut self,
        fill: &FillReport,
    ) -> Result<Option<FillGather>, StoreError> {
        let user = self.user_uuid();
        let scope = self.scope();
        let gathered = with_tx!(&mut self.tx, c, b => {
            let columns = ORDER_COLUMNS
                .split(", ")
                .map(|c| format!("o.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {columns}, c.allocated, c.reserved_for_orders, c.reserved_for_positions, \
                 c.realized_pnl, f.client_order_id AS f_client_order_id, f.qty AS f_qty, \
                 f.price AS f_price, f.fee AS f_fee \
                 FROM orders o JOIN capital_accounts c ON c.profile_id = o.profile_id AND c.user_id = o.user_id \
                 LEFT JOIN fills f ON f.profile_id = o.profile_id AND f.symbol = o.symbol \
                 AND f.exchange_trade_id = $3 \
                 WHERE o.client_order_id = $1 AND o.user_id = $2 {}",
                b::FOR_UPDATE_ORDER_CAPITAL
            );
            let row = sqlx::query(&sql)
                .bind(fill.client_order_id.as_str()).bind(user).bind(fill.exchange_trade_id.as_str())
                .fetch_optional(&mut **c).await?;
            row.map(|r| -> Result<FillGather, StoreError> {
                let existing = match r.opt_text("f_client_order_id")? {
                    Some(client_order_id) => Some(StoredFill {
                        client_order_id,
                        qty: r.money("f_qty")?,
                        price: r.money("f_price")?,
                        fee: r.money("f_fee")?,
                    }),
                    None => None,
                };
                Ok(FillGather { order: decode_order(&r)?, capital: decode_capital(&r)?, existing })
            })
            .transpose()
        }, memory m => {
            let user = UserId::from_uuid(user);
            let Some(order) = m.order(&fill.client_order_id, user) else {
                return Ok(None);
            };
            let Some(capital) = m.capital(order.profile, user) else {
                return Ok(None);
            };
            let trade = fill.exchange_trade_id.as_str();
            let existing = m.fill(order.profile, user, &order.symbol, trade).map(stored_fill);
            Ok(Some(FillGather { order: order.clone(), capital, existing }))
        })?;
        // Under a profile lease, another profile's order is not there.
        Ok(gathered.filter(|g| scope.is_none_or(|profile| g.order.profile == profile)))
    }

    /// Quantity of EXIT orders in flight for (profile, symbol) not yet filled.
    pub(crate) async fn pending_exit_qty(
        &mut self,
        profile: ProfileId,
        symbol: &Symbol,
    ) -> Result<Decimal, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT COALESCE(SUM(qty - filled_qty), 0) AS pending FROM orders \
                 WHERE profile_id = $1 AND user_id = $2 AND symbol = $3 AND kind = 'EXIT' \
                 AND status IN {open}",
                open = open_statuses_sql(),
            );
            let row = sqlx::query(&sql).bind(profile.as_uuid()).bind(user).bind(symbol.as_str())
                .fetch_one(&mut **c).await?;
            row.money("pending")
        }, memory m => {
            let user = UserId::from_uuid(user);
            let pending = m.open_orders(profile, user)
                .filter(|o| o.kind == IntentKind::Exit && &o.symbol == symbol)
                .map(|o| o.qty_remaining())
                .sum();
            Ok(memory::money(pending))
        })
    }

    pub(crate) async fn open_position(
        &mut self,
        profile: ProfileId,
        symbol: &Symbol,
        lock: bool,
    ) -> Result<Option<Position>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let sql = format!(
                "SELECT lifecycle_id, side, qty_open, cost_open FROM lifecycles \
                 WHERE profile_id = $1 AND user_id = $2 AND symbol = $3 AND kind = 'ENTRY' \
                 AND is_open {}",
                if lock { b::FOR_UPDATE } else { "" }
            );
            let row = sqlx::query(&sql).bind(profile.as_uuid()).bind(user).bind(symbol.as_str())
                .fetch_optional(&mut **c).await?;
            row.map(|r| decode_position(&r, symbol)).transpose()
        }, memory m => {
            let open = m.open_entry(profile, UserId::from_uuid(user), symbol);
            open.map(|(id, row)| memory_position(id, row)).transpose()
        })
    }

    /// Inserts a fill; false when its exchange trade id was already recorded.
    pub(crate) async fn insert_fill(
        &mut self,
        order: &OrderRecord,
        fill: &FillReport,
    ) -> Result<bool, StoreError> {
        // Without de-duplication (planted by the simulation) a repeated trade id reaches the
        // database's UNIQUE key.
        let dedup = self.dedups_fills();
        with_tx!(&mut self.tx, c, b => {
            let on_conflict = if dedup {
                "ON CONFLICT (profile_id, symbol, exchange_trade_id) DO NOTHING"
            } else {
                ""
            };
            let sql = format!(
                "INSERT INTO fills (user_id, profile_id, symbol, client_order_id, exchange_trade_id, \
                 qty, price, fee, executed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 {on_conflict} RETURNING fill_id"
            );
            let row = sqlx::query(&sql)
            .bind(order.user.as_uuid()).bind(order.profile.as_uuid()).bind(order.symbol.as_str())
            .bind(order.client_order_id.as_str()).bind(fill.exchange_trade_id.as_str())
            .bind(b::money(fill.qty.get())).bind(b::money(fill.price.get()))
            .bind(b::money(fill.fee)).bind(fill.executed_at_ms)
            .fetch_optional(&mut **c).await?;
            Ok(row.is_some())
        }, memory m => {
            let (qty, price) = (fill.qty.get(), fill.price.get());
            let trade = fill.exchange_trade_id.as_str();
            m.insert_fill(order, trade, qty, price, fill.fee, dedup)
        })
    }

    pub(crate) async fn load_fill(
        &mut self,
        order: &OrderRecord,
        trade_id: &str,
    ) -> Result<Option<StoredFill>, StoreError> {
        let user = self.user_uuid();
        with_tx!(&mut self.tx, c, b => {
            let row = sqlx::query(
                "SELECT client_order_id, qty, price, fee FROM fills WHERE profile_id = $1 \
                 AND user_id = $2 AND symbol = $3 AND exchange_trade_id = $4",
            )
            .bind(order.profile.as_uuid()).bind(user).bind(order.symbol.as_str()).bind(trade_id)
            .fetch_optional(&mut **c).await?;
            row.map(|r| -> Result<StoredFill, StoreError> {
                Ok(StoredFill {
                    client_order_id: r.text("client_order_id")?,
                    qty: r.money("qty")?,
                    price: r.money("price")?,
                    fee: r.money("fee")?,
                })
            })
            .transpose()
        }, memory m => {
            let user = UserId::from_uuid(user);
            Ok(m.fill(order.profile, user, &order.symbol, trade_id).map(stored_fill))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use super::*;

    /// The statuses an SQL list such as `('NEW', 'UNKNOWN')` names.
    fn parse_list(list: &str) -> BTreeSet<String> {
        let inner = list.trim().trim_start_matches('(').trim_end_matches(')');
        inner
            .split(',')
            .map(|item| item.trim().trim_matches('\'').to_owned())
            .collect()
    }

    /// The parenthesised list that follows `status IN` in `clause`, if any.
    fn status_list(clause: &str) -> Option<BTreeSet<String>> {
        let upper = clause.to_uppercase();
        let at = upper.find("STATUS IN")?;
        let rest = &clause[at + "STATUS IN".len()..];
        let open = rest.find('(')?;
        let close = rest.find(')')?;
        Some(parse_list(&rest[open..=close]))
    }

    /// One backend's migrations in the order they apply, without comments, split into statements
    /// on one line each.
    fn statements(backend: &str) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(backend);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no migrations in {}", dir.display());
        let mut statements = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code: Vec<&str> = text
                .lines()
                .map(|line| line.split("--").next().unwrap_or(""))
                .collect();
            let code = code.join(" ");
            for statement in code.split(';') {
                let words: Vec<&str> = statement.split_whitespace().collect();
                statements.push(words.join(" "));
            }
        }
        statements
    }

    /// The name a `CREATE [UNIQUE] INDEX [IF NOT EXISTS] name` or `DROP INDEX [IF EXISTS] name`
    /// statement is about.
    fn index_name(statement: &str) -> Option<(bool, String)> {
        let upper = statement.to_uppercase();
        let (created, rest) = if let Some(rest) = upper
            .strip_prefix("CREATE UNIQUE INDEX ")
            .or_else(|| upper.strip_prefix("CREATE INDEX "))
        {
            (true, rest.trim_start_matches("IF NOT EXISTS "))
        } else if let Some(rest) = upper.strip_prefix("DROP INDEX ") {
            (false, rest.trim_start_matches("IF EXISTS "))
        } else {
            return None;
        };
        let name = rest.split_whitespace().next()?;
        Some((created, name.to_lowercase()))
    }

    /// Every index the migrations leave defined whose WHERE clause lists order statuses, with
    /// the statuses it lists: the last migration that creates or drops an index wins.
    fn status_indexes(backend: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut indexes = BTreeMap::new();
        for statement in statements(backend) {
            let Some((created, name)) = index_name(&statement) else {
                continue;
            };
            indexes.remove(&name);
            let upper = statement.to_uppercase();
            let Some(at) = upper.find(" WHERE ").filter(|_| created) else {
                continue;
            };
            let predicate = &statement[at..];
            if !predicate.to_uppercase().contains("STATUS") {
                continue;
            }
            let listed = status_list(predicate).unwrap_or_else(|| {
                panic!("{backend}: index {name} filters on status other than by `status IN (...)`")
            });
            indexes.insert(name, listed);
        }
        indexes
    }

    fn open_statuses() -> BTreeSet<String> {
        OrderStatus::ALL
            .into_iter()
            .filter(|status| status.is_open())
            .map(|status| status.as_str().to_owned())
            .collect()
    }

    #[test]
    fn open_statuses_sql_lists_exactly_the_open_statuses() {
        assert_eq!(parse_list(open_statuses_sql()), open_statuses());
    }

    #[test]
    fn partial_indexes_on_order_status_list_exactly_the_open_statuses() {
        for backend in ["postgres", "sqlite"] {
            let indexes = status_indexes(backend);
            for expected in ["orders_one_open_entry", "orders_open"] {
                assert!(
                    indexes.contains_key(expected),
                    "{backend}: index {expected} not found among {:?}",
                    indexes.keys()
                );
            }
            for (name, listed) in &indexes {
                assert_eq!(
                    listed,
                    &open_statuses(),
                    "{backend}: index {name} lists other statuses than OrderStatus::is_open; \
                     add a migration that recreates it"
                );
            }
        }
    }

    #[test]
    fn status_check_constraint_lists_every_status() {
        let every: BTreeSet<String> = OrderStatus::ALL
            .into_iter()
            .map(|status| status.as_str().to_owned())
            .collect();
        for backend in ["postgres", "sqlite"] {
            let check = statements(backend).into_iter().rev().find_map(|statement| {
                let at = statement.find("orders_status_known")?;
                status_list(&statement[at..])
            });
            assert_eq!(check, Some(every.clone()), "{backend}: orders_status_known");
        }
    }
}
