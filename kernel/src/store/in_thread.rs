//! SQLite in the calling thread: the third driver of the store's SQLite statements.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, so every statement is two
//! thread hand-offs, which cost more than the statement itself when the database is in memory.
//! This driver runs the same statements through rusqlite on a connection the caller holds, with
//! no thread in between: a backtest's store.
//!
//! It mirrors the small part of sqlx's query API the store's statements use (`query`,
//! `query_scalar`, `query_as`, `bind`, `fetch_*`, `execute`, `rows_affected`, `try_get`), so
//! [`with_tx!`](super::backend::with_tx) expands each statement's one text for it too, with this
//! module standing in for `sqlx`. Values are encoded as sqlx encodes them for SQLite (UUIDs as
//! 16-byte blobs, booleans as integers), so a database written by one driver reads the same
//! through the other.
//!
//! A statement here runs to completion in the task that awaits it, holding its thread: right for
//! a backtest, which does one thing at a time on a database in memory, and wrong for a server,
//! whose tasks would wait on each other's disk writes; `keel serve` and `keel demo` stay on sqlx.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::StoreError;
use super::backend::{row_ext, units_to_decimal};

/// Prepared statements kept per connection: more than the store has distinct statements.
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused or failed it.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The connection stayed taken (by a transaction not yet ended) for as long as a caller
    /// waits for it.
    #[error("timed out after {0:?} waiting for the database connection")]
    PoolTimedOut(Duration),
    /// A statement expected to return a row returned none.
    #[error("no rows returned by a query that expected to return at least one row")]
    RowNotFound,
    /// A column held a value of another type than asked for.
    #[error("column {column}: {message}")]
    ColumnDecode {
        /// The column, by name or index.
        column: String,
        /// What was wrong with its value.
        message: String,
    },
}

impl Error {
    /// The message SQLite gave with the failure, if any (it names the constraint).
    pub(crate) fn sqlite_message(&self) -> Option<&str> {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(_, Some(message))) => Some(message),
            _ => None,
        }
    }
}

/// The one connection of an in-thread store, shared by the store's clones; a transaction holds
/// it until it ends.
#[derive(Clone)]
pub(crate) struct InThreadPool {
    conn: Arc<tokio::sync::Mutex<rusqlite::Connection>>,
    /// How long a caller waits for the connection before giving up, as sqlx's pools do.
    acquire_timeout: Duration,
}

impl InThreadPool {
    /// Wraps an open, migrated connection.
    pub(crate) fn new(conn: rusqlite::Connection, acquire_timeout: Duration) -> InThreadPool {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        InThreadPool {
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
            acquire_timeout,
        }
    }

    /// Waits for the connection, at most `acquire_timeout`: a task that holds a transaction and
    /// asks the pool for another statement gets an error, not a wait without end.
    async fn acquire(&self) -> Result<tokio::sync::OwnedMutexGuard<rusqlite::Connection>, Error> {
        if let Ok(conn) = self.conn.clone().try_lock_owned() {
            return Ok(conn);
        }
        tokio::time::timeout(self.acquire_timeout, self.conn.clone().lock_owned())
            .await
            .map_err(|_| Error::PoolTimedOut(self.acquire_timeout))
    }

    /// Takes the connection and runs `begin` on it.
    pub(crate) async fn begin_with(&self, begin: &str) -> Result<Transaction, Error> {
        let conn = self.acquire().await?;
        conn.prepare_cached(begin)?.execute([])?;
        Ok(Transaction { conn, open: true })
    }

    /// A transaction as sqlx's `Pool::begin` opens one.
    pub(crate) async fn begin(&self) -> Result<Transaction, Error> {
        self.begin_with("BEGIN").await
    }
}

/// An open transaction; dropped without [`Transaction::commit`], it rolls back.
pub(crate) struct Transaction {
    conn: tokio::sync::OwnedMutexGuard<rusqlite::Connection>,
    open: bool,
}

impl Transaction {
    /// Commits. If the COMMIT fails, dropping the transaction rolls back whatever is left of it.
    pub(crate) async fn commit(mut self) -> Result<(), Error> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // A failed COMMIT may already have ended the transaction; a ROLLBACK then finds none,
        // which is what it is meant to leave.
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Deref for Transaction {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }
}

/// Where a statement runs: a connection already held (inside a transaction) or the pool's.
pub(crate) enum Target<'c> {
    Conn(&'c mut rusqlite::Connection),
    Pool(&'c InThreadPool),
}

impl<'c> From<&'c mut rusqlite::Connection> for Target<'c> {
    fn from(conn: &'c mut rusqlite::Connection) -> Self {
        Target::Conn(conn)
    }
}

impl<'c> From<&'c InThreadPool> for Target<'c> {
    fn from(pool: &'c InThreadPool) -> Self {
        Target::Pool(pool)
    }
}

impl Target<'_> {
    async fn run<T>(
        self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match self {
            Target::Conn(conn) => f(conn),
            Target::Pool(pool) => f(&*pool.acquire().await?),
        }
    }
}

/// A value bound to a statement, encoded as sqlx encodes it for SQLite.
pub(crate) trait Encode {
    fn encode(self) -> Value;
}

impl Encode for Uuid {
    fn encode(self) -> Value {
        Value::Blob(self.as_bytes().to_vec())
    }
}

impl Encode for &str {
    fn encode(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Encode for String {
    fn encode(self) -> Value {
        Value::Text(self)
    }
}

impl Encode for i64 {
    fn encode(self) -> Value {
        Value::Integer(self)
    }
}

impl Encode for bool {
    fn encode(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Encode for &[u8] {
    fn encode(self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(self) -> Value {
        self.map_or(Value::Null, Encode::encode)
    }
}

/// What [`Query::execute`] reports.
#[derive(Debug)]
pub(crate) struct QueryResult {
    rows_affected: u64,
}

impl QueryResult {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A row read back, with its column names.
pub(crate) struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

/// Names a column of a [`Row`]: by name or by index.
pub(crate) trait ColumnIndex {
    fn index(&self, row: &Row) -> Result<usize, Error>;
}

impl ColumnIndex for &str {
    fn index(&self, row: &Row) -> Result<usize, Error> {
        row.columns
            .iter()
            .position(|c| c == self)
            .ok_or_else(|| Error::ColumnDecode {
                column: (*self).to_owned(),
                message: "no such column".to_owned(),
            })
    }
}

impl ColumnIndex for usize {
    fn index(&self, row: &Row) -> Result<usize, Error> {
        if *self < row.values.len() {
            Ok(*self)
        } else {
            Err(Error::ColumnDecode {
                column: self.to_string(),
                message: format!("index out of range for {} columns", row.values.len()),
            })
        }
    }
}

/// A type a column value decodes into, as sqlx decodes it from SQLite.
pub(crate) trait Decode: Sized {
    fn decode(value: &Value) -> Result<Self, String>;
}

fn mismatch(expected: &str, value: &Value) -> String {
    format!("expected {expected}, found {:?}", value.data_type())
}

impl Decode for i64 {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Integer(i) => Ok(*i),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl Decode for bool {
    fn decode(value: &Value) -> Result<Self, String> {
        i64::decode(value).map(|i| i != 0)
    }
}

impl Decode for String {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(text) => Ok(text.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl Decode for Vec<u8> {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => Ok(bytes.clone()),
            other => Err(mismatch("a blob", other)),
        }
    }
}

impl Decode for Uuid {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => Uuid::from_slice(bytes).map_err(|e| e.to_string()),
            other => Err(mismatch("a 16-byte blob", other)),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::decode(other).map(Some),
        }
    }
}

impl Row {
    /// The value of `column`, decoded.
    pub(crate) fn try_get<T: Decode, I: ColumnIndex>(&self, column: I) -> Result<T, Error> {
        let at = column.index(self)?;
        T::decode(&self.values[at]).map_err(|message| Error::ColumnDecode {
            column: self.columns[at].clone(),
            message,
        })
    }
}

row_ext!(Row, |row, column| Ok(units_to_decimal(
    row.try_get(column)?
)));

/// A statement with its bound values; `$N` names the N-th bound value, as in sqlx.
pub(crate) struct Query<'q> {
    sql: &'q str,
    args: Vec<Value>,
}

/// A statement, as sqlx's `query`.
pub(crate) fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

impl<'q> Query<'q> {
    /// Binds the next `$N`.
    pub(crate) fn bind(mut self, value: impl Encode) -> Self {
        self.args.push(value.encode());
        self
    }

    /// Runs the statement; how many rows it changed.
    pub(crate) async fn execute<'c>(
        self,
        target: impl Into<Target<'c>>,
    ) -> Result<QueryResult, Error> {
        target
            .into()
            .run(|conn| {
                let mut stmt = self.prepare(conn)?;
                let mut rows = stmt.raw_query();
                while rows.next()?.is_some() {}
                Ok(QueryResult {
                    rows_affected: conn.changes(),
                })
            })
            .await
    }

    /// Every row.
    pub(crate) async fn fetch_all<'c>(
        self,
        target: impl Into<Target<'c>>,
    ) -> Result<Vec<Row>, Error> {
        target.into().run(|conn| self.rows(conn, usize::MAX)).await
    }

    /// The first row, if any.
    pub(crate) async fn fetch_optional<'c>(
        self,
        target: impl Into<Target<'c>>,
    ) -> Result<Option<Row>, Error> {
        target
            .into()
            .run(|conn| Ok(self.rows(conn, 1)?.into_iter().next()))
            .await
    }

    /// The first row; [`Error::RowNotFound`] when there is none.
    pub(crate) async fn fetch_one<'c>(self, target: impl Into<Target<'c>>) -> Result<Row, Error> {
        self.fetch_optional(target).await?.ok_or(Error::RowNotFound)
    }

    fn prepare<'c>(
        &self,
        conn: &'c rusqlite::Connection,
    ) -> Result<rusqlite::CachedStatement<'c>, Error> {
        let mut stmt = conn.prepare_cached(self.sql)?;
        for index in 1..=stmt.parameter_count() {
            let value = stmt
                .parameter_name(index)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| self.args.get(n.wrapping_sub(1)))
                .ok_or_else(|| {
                    rusqlite::Error::InvalidParameterName(
                        stmt.parameter_name(index).unwrap_or("?").to_owned(),
                    )
                })?;
            stmt.raw_bind_parameter(index, value)?;
        }
        Ok(stmt)
    }

    /// Up to `max` rows; the statement runs to its end either way, as an `INSERT … RETURNING`
    /// must to write every row.
    fn rows(&self, conn: &rusqlite::Connection, max: usize) -> Result<Vec<Row>, Error> {
        let mut stmt = self.prepare(conn)?;
        let columns: Arc<[String]> = stmt.column_names().into_iter().map(String::from).collect();
        let width = columns.len();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            if out.len() < max {
                let values = (0..width)
                    .map(|i| row.get_ref(i).map(owned))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(Row {
                    columns: columns.clone(),
                    values,
                });
            }
        }
        Ok(out)
    }
}

fn owned(value: ValueRef<'_>) -> Value {
    value.into()
}

/// A statement read as its first column, as sqlx's `query_scalar`.
pub(crate) struct QueryScalar<'q, T> {
    query: Query<'q>,
    _out: std::marker::PhantomData<fn() -> T>,
}

/// A statement whose first column is the answer.
pub(crate) fn query_scalar<T: Decode>(sql: &str) -> QueryScalar<'_, T> {
    QueryScalar {
        query: query(sql),
        _out: std::marker::PhantomData,
    }
}

impl<'q, T: Decode> QueryScalar<'q, T> {
    /// Binds the next `$N`.
    pub(crate) fn bind(mut self, value: impl Encode) -> Self {
        self.query = self.query.bind(value);
        self
    }

    /// The first row's first column, if there is a row.
    pub(crate) async fn fetch_optional<'c>(
        self,
        target: impl Into<Target<'c>>,
    ) -> Result<Option<T>, Error> {
        let row = self.query.fetch_optional(target).await?;
        row.map(|row| row.try_get(0)).transpose()
    }

    /// The first row's first column; [`Error::RowNotFound`] when there is no row.
    pub(crate) async fn fetch_one<'c>(self, target: impl Into<Target<'c>>) -> Result<T, Error> {
        self.query.fetch_one(target).await?.try_get(0)
    }
}

/// A row read as a tuple of its columns, as sqlx's `query_as` with a tuple.
pub(crate) trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, Error>;
}

impl<A: Decode, B: Decode> FromRow for (A, B) {
    fn from_row(row: &Row) -> Result<Self, Error> {
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

/// A statement read as tuples.
pub(crate) struct QueryAs<'q, T> {
    query: Query<'q>,
    _out: std::marker::PhantomData<fn() -> T>,
}

/// A statement whose rows are tuples.
pub(crate) fn query_as<T: FromRow>(sql: &str) -> QueryAs<'_, T> {
    QueryAs {
        query: query(sql),
        _out: std::marker::PhantomData,
    }
}

impl<'q, T: FromRow> QueryAs<'q, T> {
    /// The first row; [`Error::RowNotFound`] when there is none.
    pub(crate) async fn fetch_one<'c>(self, target: impl Into<Target<'c>>) -> Result<T, Error> {
        T::from_row(&self.query.fetch_one(target).await?)
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::query;
    use crate::ids::UserId;
    use crate::money::Amount;
    use crate::store::backend::Tx;
    use crate::store::{Constraint, Store, StoreError};

    async fn store_with_profile() -> (Store, UserId, crate::ids::ProfileId) {
        let store = Store::open_sqlite_in_thread(None).await.unwrap();
        let user = UserId::new_random();
        let tenant = store.tenant(user);
        let profile = tenant.create_profile("p").await.unwrap();
        let amount = Amount::positive(Decimal::from(100)).unwrap();
        let operator = store.operator(crate::store::HOST_OPERATOR);
        operator.grant_budget(user, amount.get()).await.unwrap();
        tenant.allocate(profile, amount).await.unwrap();
        (store, user, profile)
    }

    #[tokio::test]
    async fn dollar_n_names_the_nth_bound_value_wherever_it_appears() {
        let (store, user, _) = store_with_profile().await;
        let mut tx = store.tenant(user).begin().await.unwrap();
        let Tx::InThread(conn) = &mut tx.tx else {
            panic!("an in-thread store opens in-thread transactions")
        };
        let row = query("SELECT $3 AS c, $1 - $2 AS d")
            .bind(10_i64)
            .bind(3_i64)
            .bind("third")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("c").unwrap(), "third");
        assert_eq!(row.try_get::<i64, _>("d").unwrap(), 7);
        assert!(matches!(
            row.try_get::<i64, _>("c"),
            Err(super::Error::ColumnDecode { .. })
        ));
        let unbound = query("SELECT $2").bind(1_i64).fetch_one(&mut **conn).await;
        assert!(unbound.is_err(), "a $N without an N-th value is refused");
    }

    #[tokio::test]
    async fn a_refused_write_names_its_constraint_and_rolls_back_with_its_transaction() {
        let (store, user, profile) = store_with_profile().await;
        let mut tx = store.tenant(user).begin().await.unwrap();
        tx.create_profile("doomed").await.unwrap();
        let Tx::InThread(conn) = &mut tx.tx else {
            panic!("an in-thread store opens in-thread transactions")
        };
        let error = query(
            "UPDATE capital_accounts SET reserved_for_orders = allocated + 1 \
             WHERE profile_id = $1",
        )
        .bind(profile.as_uuid())
        .execute(&mut **conn)
        .await
        .unwrap_err();
        assert!(matches!(
            StoreError::from(error),
            StoreError::Constraint(Constraint::CapitalInvariant)
        ));
        let error = query("DELETE FROM ledger_entries")
            .execute(&mut **conn)
            .await
            .unwrap_err();
        assert!(matches!(
            StoreError::from(error),
            StoreError::Constraint(Constraint::LedgerAppendOnly)
        ));
        drop(tx);
        // The connection is free again, and nothing of the dropped transaction is left.
        let profiles = store.tenant(user).begin().await.unwrap().profiles().await;
        assert_eq!(profiles.unwrap().len(), 1);
        let capital = store.tenant(user).capital(profile).await.unwrap();
        assert_eq!(capital.reserved_for_orders.get(), Decimal::ZERO);
    }

    #[tokio::test]
    async fn a_statement_waiting_for_a_connection_held_by_a_transaction_times_out() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let pool = super::InThreadPool::new(conn, std::time::Duration::from_millis(50));
        let tx = pool.begin().await.unwrap();
        let waited = query("SELECT 1").execute(&pool).await;
        assert!(matches!(waited, Err(super::Error::PoolTimedOut(_))));
        tx.commit().await.unwrap();
        query("SELECT 1").execute(&pool).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_commit_rolls_back_and_frees_the_connection() {
        let (store, user, _) = store_with_profile().await;
        let super::super::Pool::InThread(pool) = store.pool() else {
            panic!("an in-thread store has an in-thread pool")
        };
        let mut tx = pool.begin().await.unwrap();
        // A foreign key checked at COMMIT: the COMMIT fails and leaves the transaction open.
        query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut *tx)
            .await
            .unwrap();
        query("INSERT INTO capital_accounts (profile_id, user_id) VALUES ($1, $2)")
            .bind(uuid::Uuid::new_v4())
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
        assert!(tx.commit().await.is_err());
        let rows = query("SELECT profile_id FROM capital_accounts")
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "only the profile made before is left");
        pool.begin().await.unwrap().commit().await.unwrap();
    }
}
