//! The two backends behind one contract.
//!
//! Every query is written once, with `$N` placeholders (both drivers accept them), and expanded
//! for each backend by [`with_tx!`]: inside its body the module alias names the backend's money
//! encoding (`NUMERIC` decimals on PostgreSQL, fixed-point integer units on SQLite), its clock
//! expression and its row-locking clause. A SQLite store runs either on sqlx or in the calling
//! thread ([`super::in_thread`]); the in-thread arm expands the same body with that module standing
//! in for `sqlx`.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use sqlx::Row;
use uuid::Uuid;

use crate::ledger::AMOUNT_SCALE;

use super::StoreError;

/// An open transaction on either backend.
pub(crate) enum Tx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    Lite(sqlx::Transaction<'static, sqlx::Sqlite>),
    InThread(super::in_thread::Transaction),
    Memory(super::memory::Transaction),
}

impl Tx {
    /// A transaction of the host role, outside any tenant's scope (no claims: row-level
    /// security shows it no tenant row). A SQLite writer takes the database from the start.
    pub(crate) async fn begin_host(store: &super::Store) -> Result<Tx, StoreError> {
        Ok(match store.pool() {
            super::Pool::Pg(pool) => Tx::Pg(pool.begin().await?),
            super::Pool::Lite(pool) => Tx::Lite(pool.begin_with("BEGIN IMMEDIATE").await?),
            super::Pool::InThread(pool) => Tx::InThread(pool.begin_with("BEGIN IMMEDIATE").await?),
            super::Pool::Memory(pool) => Tx::Memory(pool.begin().await?),
        })
    }

    /// Commits (a database's commit as a boxed future, as in [`with_tx!`]).
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Pg(tx) => Box::pin(tx.commit()).await?,
            Tx::Lite(tx) => Box::pin(tx.commit()).await?,
            Tx::InThread(tx) => Box::pin(tx.commit()).await?,
            Tx::Memory(tx) => tx.commit(),
        }
        Ok(())
    }
}

/// Matches `$value`, a [`Tx`] or a [`Pool`](super::Pool), and expands `$body` once per SQL
/// variant with `$c` bound to its inner value and `$b` to the backend's helper module (`pg` or
/// `lite`); in the in-thread arm, [`super::in_thread`] stands in for `sqlx`. The memory store
/// has no SQL: `memory $m => $mem` is the statement's Rust counterpart on its rows, with `$m`
/// bound to the memory transaction or pool, and `memory => unsupported($what)` marks an
/// operation the memory store does not offer.
///
/// Each SQL arm runs as a boxed future of its own (`?` and `return` in `$body` end the arm with
/// its value): a database statement's future is large, and inline it would be part of every
/// future that waits on the operation, on every backend, to be built and moved at that size.
/// The memory arm runs inline; one allocation beside a database round trip is nothing.
macro_rules! on_each_backend {
    ($($enum:ident)::+, $value:expr, $c:ident, $b:ident => $body:block,
     memory => unsupported($what:expr)) => {
        $crate::store::backend::on_each_backend!($($enum)::+, $value, $c, $b => $body,
            memory _unused => {
                return Err($crate::store::StoreError::UnsupportedOnMemory($what).into())
            })
    };
    ($($enum:ident)::+, $value:expr, $c:ident, $b:ident => $body:block,
     memory $m:ident => $mem:block) => {
        match $value {
            $($enum)::+::Memory($m) => $mem
            $($enum)::+::Pg($c) => {
                #[allow(unused_imports)]
                use $crate::store::backend::pg as $b;
                Box::pin(async { Ok::<_, $crate::store::StoreError>($body) }).await?
            }
            $($enum)::+::Lite($c) => {
                #[allow(unused_imports)]
                use $crate::store::backend::lite as $b;
                Box::pin(async { Ok::<_, $crate::store::StoreError>($body) }).await?
            }
            $($enum)::+::InThread($c) => {
                #[allow(unused_imports)]
                use $crate::store::backend::lite as $b;
                #[allow(unused_imports)]
                use $crate::store::in_thread as sqlx;
                Box::pin(async { Ok::<_, $crate::store::StoreError>($body) }).await?
            }
        }
    };
}
pub(crate) use on_each_backend;

/// Expands `$body` once per SQL backend with `$c` bound to the transaction and `$b` to the
/// backend's helper module (`pg` or `lite`), and the memory arm on the memory transaction.
macro_rules! with_tx {
    ($tx:expr, $c:ident, $b:ident => $body:block, memory $($mem:tt)+) => {
        $crate::store::backend::on_each_backend!(
            $crate::store::backend::Tx, $tx, $c, $b => $body, memory $($mem)+
        )
    };
}
pub(crate) use with_tx;

/// [`with_tx!`] for a statement run on the pool, outside a transaction: `$p` is the pool of
/// either backend, `$b` that backend's helpers.
macro_rules! with_pool {
    ($pool:expr, $p:ident, $b:ident => $body:block, memory $($mem:tt)+) => {
        $crate::store::backend::on_each_backend!(
            $crate::store::Pool, $pool, $p, $b => $body, memory $($mem)+
        )
    };
}
pub(crate) use with_pool;

/// Declares a SQLite-only statement sequence once as two functions: `$lite` on a sqlx
/// connection and `$in_thread` on an in-thread one ([`super::in_thread`]), with the same body.
macro_rules! sqlite_fns {
    ($(#[$meta:meta])* async fn $lite:ident / $in_thread:ident ($conn:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        async fn $lite($conn: &mut sqlx::SqliteConnection $(, $arg: $ty)*) -> $ret $body

        $(#[$meta])*
        async fn $in_thread($conn: &mut rusqlite::Connection $(, $arg: $ty)*) -> $ret {
            #[allow(unused_imports)]
            use $crate::store::in_thread as sqlx;
            $body
        }
    };
}
pub(crate) use sqlite_fns;

/// PostgreSQL: money is `NUMERIC(30, 8)`, time is the server's `clock_timestamp()`.
pub(crate) mod pg {
    use rust_decimal::Decimal;

    /// The money encoding.
    pub fn money(value: impl Into<Decimal>) -> Decimal {
        value.into()
    }

    /// Milliseconds since the epoch by the database clock.
    pub const NOW_MS: &str = "keel_now_ms()";
    /// Locks a row against concurrent writers until commit.
    pub const FOR_UPDATE: &str = "FOR UPDATE";
    /// Locks the order and capital rows of a fill (aliases `o` and `c`) until commit.
    pub const FOR_UPDATE_ORDER_CAPITAL: &str = "FOR UPDATE OF o, c";
}

/// SQLite: money is INTEGER units of 10^-8; transactions start with `BEGIN IMMEDIATE`, so a
/// writer holds the database from its first statement and row locks are not needed.
pub(crate) mod lite {
    use rust_decimal::Decimal;

    /// The money encoding: exact units of 10^-8.
    pub fn money(value: impl Into<Decimal>) -> i64 {
        super::decimal_to_units(value.into())
    }

    /// Milliseconds since the epoch by the database clock.
    pub const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
    /// Not needed: the writer holds the whole database.
    pub const FOR_UPDATE: &str = "";
    /// Not needed: the writer holds the whole database.
    pub const FOR_UPDATE_ORDER_CAPITAL: &str = "";
}

/// Converts a ledger-checked decimal into SQLite units.
pub(crate) fn decimal_to_units(value: Decimal) -> i64 {
    // `value * 10^8` exactly: the ledger refused more than AMOUNT_SCALE places beforehand.
    let units = (value * Decimal::from(10_i64.pow(AMOUNT_SCALE))).trunc();
    assert_eq!(
        units / Decimal::from(10_i64.pow(AMOUNT_SCALE)),
        value,
        "amount {value} was not checked against the ledger scale"
    );
    units
        .to_i64()
        .expect("amounts are bounded by CAPITAL_MAX, far inside i64 units")
}

/// Reads typed values out of a row of either backend.
pub(crate) trait RowExt {
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError>;
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
    fn money(&self, column: &str) -> Result<Decimal, StoreError>;

    /// A money column read into one of the checked types of [`crate::money`]: a value the type
    /// refuses (out of its range, negative where it cannot be) is [`StoreError::Corrupt`],
    /// naming the column, as a status the kernel does not know is.
    fn checked_money<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: TryFrom<Decimal>,
        T::Error: std::fmt::Display,
    {
        let value = self.money(column)?;
        T::try_from(value).map_err(|error| StoreError::Corrupt(format!("{column}: {error}")))
    }
}

/// Implements [`RowExt`] for a row type whose `try_get(column)` decodes each of the types, with
/// `$money` reading a money column in the backend's encoding.
macro_rules! row_ext {
    ($row:ty, |$r:ident, $column:ident| $money:expr) => {
        impl $crate::store::backend::RowExt for $row {
            fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn text(&self, column: &str) -> Result<String, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn flag(&self, column: &str) -> Result<bool, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn money(&self, $column: &str) -> Result<Decimal, StoreError> {
                let $r = self;
                $money
            }
        }
    };
}
pub(crate) use row_ext;

row_ext!(sqlx::postgres::PgRow, |row, column| Ok(row
    .try_get::<Decimal, _>(column)?
    .normalize()));
row_ext!(sqlx::sqlite::SqliteRow, |row, column| Ok(units_to_decimal(
    row.try_get(column)?
)));

/// Reads SQLite units back into a decimal.
pub(crate) fn units_to_decimal(units: i64) -> Decimal {
    Decimal::new(units, AMOUNT_SCALE).normalize()
}

/// The name of the constraint (or constraint-like trigger) an error reports, on either backend.
///
/// PostgreSQL names it in the error fields. SQLite names CHECK constraints in the message, lists
/// the columns of a UNIQUE violation, and Keel's triggers start their message with a name.
pub(crate) fn constraint_name(error: &sqlx::Error) -> Option<String> {
    let db = error.as_database_error()?;
    if let Some(name) = db.constraint() {
        return Some(name.to_owned());
    }
    constraint_in_message(db.message())
}

/// The constraint a SQLite error message names (see [`constraint_name`]).
pub(crate) fn constraint_in_message(message: &str) -> Option<String> {
    if let Some(name) = message.strip_prefix("CHECK constraint failed: ") {
        return Some(name.trim().to_owned());
    }
    if let Some(columns) = message.strip_prefix("UNIQUE constraint failed: ") {
        return sqlite_unique_name(columns.trim()).map(str::to_owned);
    }
    let (name, _) = message.split_once(':')?;
    TRIGGER_NAMES.contains(&name).then(|| name.to_owned())
}

const TRIGGER_NAMES: [&str; 9] = [
    "ledger_entries_append_only",
    "budget_grants_append_only",
    "capital_budgets_within_grant",
    "fills_order_fkey",
    "lifecycles_order_fkey",
    "trade_history_order_fkey",
    "ledger_entries_order_fkey",
    "orders_current_fence",
    "locks_fence_only_grows",
];

fn sqlite_unique_name(columns: &str) -> Option<&'static str> {
    Some(match columns {
        "orders.client_order_id" => "orders_client_order_id_key",
        "orders.profile_id, orders.symbol" => "orders_one_open_entry",
        "lifecycles.profile_id, lifecycles.symbol" => "lifecycles_one_open_entry",
        "lifecycles.client_order_id" => "lifecycles_client_order_id_key",
        "fills.profile_id, fills.symbol, fills.exchange_trade_id" => "fills_exchange_trade_key",
        "trade_history.profile_id, trade_history.symbol, trade_history.exchange_trade_id" => {
            "trade_history_exchange_trade_key"
        }
        "ledger_entries.profile_id, ledger_entries.dedup_key" => "ledger_entries_dedup_key",
        "profile_quarantines.profile_id" => "profile_quarantines_one_open",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn units_are_exact_at_ledger_scale() {
        assert_eq!(decimal_to_units(dec!(1.00000001)), 100_000_001);
        assert_eq!(decimal_to_units(dec!(-0.5)), -50_000_000);
        assert_eq!(
            decimal_to_units(dec!(10_000_000_000)),
            1_000_000_000_000_000_000
        );
    }

    #[test]
    #[should_panic(expected = "not checked against the ledger scale")]
    fn units_refuse_unchecked_precision() {
        decimal_to_units(dec!(0.000000001));
    }
}
