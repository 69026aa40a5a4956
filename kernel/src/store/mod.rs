//! The kernel's persistence: PostgreSQL (production, several host instances) and SQLite (one
//! instance, or a backtest's store run in the calling thread), behind one contract.
//!
//! Tenant data is reached only through a tenant scope: [`Store::tenant`] names the user, and
//! [`Tenant::begin`] opens a [`TenantTx`] in which, on PostgreSQL, the transaction-local setting
//! `request.jwt.claims` carries the user's id, so row-level security filters every statement. On
//! both backends every query of a [`TenantTx`] is also filtered by the user's id. Lease locks
//! are not tenant data; they live behind [`Store::locks`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), keel_kernel::store::StoreError> {
//! use keel_kernel::ids::UserId;
//! use keel_kernel::money::Amount;
//! use keel_kernel::store::{HOST_OPERATOR, Store};
//!
//! let store = Store::open_sqlite(std::path::Path::new("keel.db")).await?;
//! let user = UserId::new_random();
//! // An operator grants the user a budget; the user's allocations draw on it.
//! store.operator(HOST_OPERATOR).grant_budget(user, rust_decimal::Decimal::from(5000)).await?;
//! let mut tx = store.tenant(user).begin().await?;
//! let profile = tx.create_profile("momentum").await?;
//! tx.allocate(profile, Amount::positive(rust_decimal::Decimal::from(1000)).unwrap()).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

mod accounts;
pub(crate) mod backend;
mod budgets;
mod claims;
mod combined;
mod directory;
mod history;
mod in_thread;
mod lease;
mod listing;
mod memory;
mod pages;
mod plugins;
mod profiles;
mod quarantine;
mod rows;
mod stats;
mod switches;
mod tenant;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::ids::{ProfileId, UserId};
use crate::ledger::LedgerError;
use crate::lifecycle::LifecycleError;
use crate::lock::LockError;
#[cfg(feature = "lab")]
use crate::plant::Plant;
use crate::plant::Planted;

pub use budgets::HOST_OPERATOR;
pub use claims::{HOST_ACCOUNT, owner_account};
pub use directory::{
    DIRECTORY_ROWS_MAX, DirectoryEntry, LeaseGuard, PROFILES_CHANNEL, SETTINGS_CHANNEL,
};
pub use in_thread::Error as InThreadError;
pub use lease::Locks;
pub use memory::RowWrite;
pub use pages::{LedgerRow, OrderRow, PAGE_ROWS_MAX, Page, TradeRow};
pub use plugins::{BindingRow, NewPlugin, PLUGINS_LISTED_MAX, PluginRow, SealedCredentials};
pub use profiles::{Operator, PROFILES_LISTED_MAX, ProfileRow};
pub use quarantine::{
    QUARANTINE_EVIDENCE_BYTES_MAX, QUARANTINE_EVIDENCE_ITEMS_MAX, QUARANTINE_EVIDENCE_TEXT_LEN_MAX,
    QUARANTINE_HISTORY_MAX, QUARANTINE_REASON_LEN_MAX, QuarantineEvidence, QuarantineRecord,
};
pub use stats::{LOCK_LATENCY_BUCKETS_US, StoreStats, StoreStatsSnapshot};
pub use switches::{HOST_CHANNEL, HostSwitchesRow};
pub use tenant::{PROFILE_NAME_LEN_MAX, Tenant, TenantTx};

/// The most connections a store opens to PostgreSQL unless told otherwise.
pub const PG_CONNECTIONS_MAX_DEFAULT: u32 = 16;
/// Connections to a SQLite file: writers take turns anyway (`BEGIN IMMEDIATE`).
pub const SQLITE_CONNECTIONS_MAX: u32 = 4;
/// How long a SQLite writer waits for another before giving up.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;
/// How long a caller waits for a free connection.
pub const POOL_ACQUIRE_TIMEOUT_MS: u64 = 30_000;

/// A database constraint (or constraint-like trigger) that refused a write, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// `capital_invariant`: free capital would go negative.
    CapitalInvariant,
    /// `capital_*_nonnegative`: a capital column would go negative.
    CapitalNonNegative(String),
    /// `orders_client_order_id_key`.
    ClientOrderIdKey,
    /// `orders_one_open_entry`: a second ENTRY order in flight for (profile, symbol).
    OneOpenEntryOrder,
    /// `lifecycles_one_open_entry`: a second open ENTRY lifecycle for (profile, symbol).
    OneOpenEntryLifecycle,
    /// `fills_exchange_trade_key` or `trade_history_exchange_trade_key`.
    ExchangeTradeKey,
    /// `ledger_entries_dedup_key`: a journal move applied twice.
    LedgerDedupKey,
    /// `ledger_entries_append_only`: the journal refuses UPDATE and DELETE.
    LedgerAppendOnly,
    /// `orders_current_fence`: a write-ahead order with a stale fence.
    CurrentFence,
    /// `locks_fence_only_grows`.
    FenceOnlyGrows,
    /// `profile_lease_current`: a profile's write under a profile lease that expired or was
    /// taken over by another instance.
    StaleProfileLease,
    /// `capital_budgets_within_grant` or another CHECK of `capital_budgets`: an allocation
    /// beyond its owner's budget (or by a user without one), or a grant out of range.
    Budget(String),
    /// `fills_order_fkey`, `lifecycles_order_fkey`, `trade_history_order_fkey` or
    /// `ledger_entries_order_fkey`: a row naming an order that is not its profile's.
    OrderOfAnotherProfile(String),
    /// `profile_quarantines_one_open`: a second open quarantine of a profile.
    OneOpenQuarantine,
    /// Any other named constraint.
    Other(String),
}

impl Constraint {
    fn from_name(name: &str) -> Constraint {
        match name {
            "capital_invariant" => Constraint::CapitalInvariant,
            "orders_client_order_id_key" => Constraint::ClientOrderIdKey,
            "orders_one_open_entry" => Constraint::OneOpenEntryOrder,
            "lifecycles_one_open_entry" => Constraint::OneOpenEntryLifecycle,
            "fills_exchange_trade_key" | "trade_history_exchange_trade_key" => {
                Constraint::ExchangeTradeKey
            }
            "ledger_entries_dedup_key" => Constraint::LedgerDedupKey,
            "ledger_entries_append_only" => Constraint::LedgerAppendOnly,
            "orders_current_fence" => Constraint::CurrentFence,
            "locks_fence_only_grows" => Constraint::FenceOnlyGrows,
            "profile_lease_current" => Constraint::StaleProfileLease,
            "profile_quarantines_one_open" => Constraint::OneOpenQuarantine,
            other if other.starts_with("capital_budgets_") => Constraint::Budget(other.to_owned()),
            "fills_order_fkey"
            | "lifecycles_order_fkey"
            | "trade_history_order_fkey"
            | "ledger_entries_order_fkey" => Constraint::OrderOfAnotherProfile(name.to_owned()),
            other if other.starts_with("capital_") && other.ends_with("_nonnegative") => {
                Constraint::CapitalNonNegative(other.to_owned())
            }
            other => Constraint::Other(other.to_owned()),
        }
    }
}

/// Why a store operation failed. The transaction it ran in must be dropped (rolled back).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The capital ledger refused the operation.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The order lifecycle refused the operation.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A lock refused the operation.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The profile does not exist for this tenant (or belongs to another one).
    #[error("no profile {0} for this user")]
    UnknownProfile(ProfileId),
    /// A profile name was refused by [`crate::ids::check_name`].
    #[error("invalid profile name {0:?}: {1}")]
    InvalidProfileName(String, crate::ids::NameError),
    /// The database refused a write by a named constraint.
    #[error("the database refused the write by constraint {0:?}")]
    Constraint(Constraint),
    /// A quarantine the kernel will not store (a reason or evidence out of bounds).
    #[error("quarantine refused: {0}")]
    InvalidQuarantine(String),
    /// A stored value the kernel cannot read back: a status or side it does not know, or an
    /// amount its money type refuses (out of range, negative where it cannot be).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The store was opened with a URL it does not understand.
    #[error("unsupported database url {0:?}: expected postgres://, postgresql:// or sqlite:")]
    UnsupportedUrl(String),
    /// Applying migrations failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database failure (connection, I/O, timeout).
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// Any other failure of an in-thread SQLite store.
    #[error("database: {0}")]
    InThread(#[source] InThreadError),
    /// A memory store's database stayed taken (by a transaction not yet ended) for as long as a
    /// caller waits for it.
    #[error("timed out after {0:?} waiting for the memory store")]
    MemoryBusy(Duration),
    /// An operation the memory store does not offer: it serves runs whose state is thrown away
    /// (backtests), which never call it.
    #[error("{0} is not supported by the memory store")]
    UnsupportedOnMemory(&'static str),
    /// An operation only the memory store offers.
    #[error("{0} is offered by the memory store only")]
    MemoryOnly(&'static str),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match backend::constraint_name(&error) {
            Some(name) => StoreError::Constraint(Constraint::from_name(&name)),
            None => StoreError::Database(error),
        }
    }
}

impl From<InThreadError> for StoreError {
    fn from(error: InThreadError) -> Self {
        match error
            .sqlite_message()
            .and_then(backend::constraint_in_message)
        {
            Some(name) => StoreError::Constraint(Constraint::from_name(&name)),
            None => StoreError::InThread(error),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        InThreadError::from(error).into()
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
    /// Rows in process memory (see [`Store::open_memory`]).
    Memory,
}

#[derive(Clone)]
pub(crate) enum Pool {
    Pg(PgPool),
    Lite(SqlitePool),
    InThread(in_thread::InThreadPool),
    Memory(memory::MemoryPool),
}

/// The kernel's store. Cheap to clone: clones share the pool and the counters.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    stats: Arc<StoreStats>,
    plant: Planted,
    guard: Option<LeaseGuard>,
}

impl Store {
    /// Connects to PostgreSQL as the host role (`database.url`). Migrations are not run: they
    /// belong to the owner role, see [`Store::migrate_postgres`].
    pub async fn connect_postgres(url: &str, connections_max: u32) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .connect_with(options)
            .await?;
        Ok(Store::from_pool(Pool::Pg(pool)))
    }

    /// Applies the PostgreSQL migrations as the owner role (`database.admin_url`).
    pub async fn migrate_postgres(admin_url: &str) -> Result<(), StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(PgConnectOptions::from_str(admin_url)?)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    /// Opens (creating if needed) a SQLite database file and applies its migrations: with one
    /// instance and one file there is no separate owner role.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        // The ledger is money: a commit survives a power cut.
        Store::open_sqlite_with(path, SqliteSynchronous::Full).await
    }

    /// Opens a throwaway SQLite database (a backtest's): the same schema, constraints and code
    /// path as [`Store::open_sqlite`], without waiting for the disk on each commit, since the
    /// file is deleted after the run and nothing in it must survive a power cut.
    pub async fn open_sqlite_scratch(path: &Path) -> Result<Store, StoreError> {
        Store::open_sqlite_with(path, SqliteSynchronous::Off).await
    }

    /// Opens a private in-memory SQLite database (a backtest's): the same schema, constraints
    /// and code path as [`Store::open_sqlite`], with nothing written to disk. It lives on one
    /// connection that is never closed while the store lives (an in-memory database dies with its
    /// connection), and the pool does not ping it before each use: the connection is in this
    /// process and nothing else can break it.
    pub async fn open_sqlite_memory() -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?
            .shared_cache(false)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Store::from_pool(Pool::Lite(pool)))
    }

    /// Opens a SQLite database whose statements run in the calling thread (a backtest's): the
    /// same schema, constraints and statements as [`Store::open_sqlite`], on one connection that
    /// a transaction holds until it ends, with no worker thread between the caller and SQLite.
    /// `None` keeps the database in memory; a path is a scratch file, written without waiting for
    /// the disk (see [`Store::open_sqlite_scratch`]).
    pub async fn open_sqlite_in_thread(path: Option<&Path>) -> Result<Store, StoreError> {
        let conn = match path {
            None => {
                let mut conn = rusqlite::Connection::open_in_memory()?;
                conn.pragma_update(None, "foreign_keys", true)?;
                for migration in sqlx::migrate!("../migrations/sqlite").iter() {
                    let tx = conn.transaction()?;
                    tx.execute_batch(&migration.sql)?;
                    tx.commit()?;
                }
                conn
            }
            Some(path) => {
                // sqlx's migrator records what it applied in the file, as for every other store.
                Store::open_sqlite_scratch(path).await?.close().await;
                let conn = rusqlite::Connection::open(path)?;
                conn.pragma_update(None, "foreign_keys", true)?;
                conn.pragma_update(None, "synchronous", "OFF")?;
                conn.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))?;
                conn
            }
        };
        Ok(Store::from_pool(Pool::InThread(
            in_thread::InThreadPool::new(conn, Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS)),
        )))
    }

    /// Opens a memory store: the store's tables as rows in this process, gone when the last
    /// clone of the store is dropped (a backtest's). It refuses what the database stores refuse,
    /// with the same errors, by Rust checks alone; see `docs/store.md` for why that is allowed
    /// for a run thrown away and how the equivalence is proven.
    pub fn open_memory() -> Store {
        Store::from_pool(Pool::Memory(memory::MemoryPool::new(
            Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS),
        )))
    }

    /// Makes `write` on a memory store's rows in `user`'s scope, outside the store API, as a raw
    /// SQL statement is made on a database: tests plant writes that break an invariant to show
    /// the memory store's tables refuse them. Rows written, as a statement's; refused writes
    /// leave nothing. [`StoreError::MemoryOnly`] on a database store.
    pub async fn plant_row_write(&self, user: UserId, write: RowWrite) -> Result<u64, StoreError> {
        let Pool::Memory(pool) = &self.pool else {
            return Err(StoreError::MemoryOnly("a planted row write"));
        };
        let mut tx = pool.begin_outside().await?;
        let written = tx.plant(user, write)?;
        tx.commit();
        Ok(written)
    }

    /// A memory store opened again over the same rows after [`Store::close`], as a restarted
    /// process opens its database again: a new pool, no plant, new counters. The simulation's
    /// host restarts this way. [`StoreError::MemoryOnly`] on a database store.
    #[cfg(feature = "lab")]
    pub fn reopen_memory(&self) -> Result<Store, StoreError> {
        let Pool::Memory(pool) = &self.pool else {
            return Err(StoreError::MemoryOnly("opening the same rows again"));
        };
        Ok(Store::from_pool(Pool::Memory(pool.reopened())))
    }

    /// Makes a memory store's inserts into `fills` and updates of `orders` fail (or succeed
    /// again), with a database error the host cannot tell from a lost connection: the
    /// simulation's transaction failure, which on SQLite is a trigger. It reaches the rows even
    /// after [`Store::close`], as another connection would. [`StoreError::MemoryOnly`] on a
    /// database store.
    #[cfg(feature = "lab")]
    pub async fn set_memory_writes_failing(&self, failing: bool) -> Result<(), StoreError> {
        let Pool::Memory(pool) = &self.pool else {
            return Err(StoreError::MemoryOnly("failing writes"));
        };
        pool.begin_outside().await?.set_writes_failing(failing);
        Ok(())
    }

    /// How many times a memory store granted an entry lock over another owner's live lease:
    /// the simulation's audit of mutual exclusion, which on SQLite is a trigger. It reaches the
    /// rows even after [`Store::close`]. [`StoreError::MemoryOnly`] on a database store.
    #[cfg(feature = "lab")]
    pub async fn memory_entry_lock_steals(&self) -> Result<u64, StoreError> {
        let Pool::Memory(pool) = &self.pool else {
            return Err(StoreError::MemoryOnly("the entry lock audit"));
        };
        Ok(pool.begin_outside().await?.entry_lock_steals())
    }

    async fn open_sqlite_with(
        path: &Path,
        synchronous: SqliteSynchronous,
    ) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS));
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Store::from_pool(Pool::Lite(pool)))
    }

    /// Opens a store by URL: `postgres://…` (host role, no migrations) or `sqlite:PATH`
    /// (created and migrated).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::connect_postgres(url, PG_CONNECTIONS_MAX_DEFAULT).await
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            Store::open_sqlite(Path::new(path)).await
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    fn from_pool(pool: Pool) -> Store {
        Store {
            pool,
            stats: Arc::new(StoreStats::default()),
            plant: Planted::default(),
            guard: None,
        }
    }

    /// This store with one protection switched off. Only the deterministic simulation calls
    /// this, to show it catches the bug (see [`crate::plant`]).
    #[cfg(feature = "lab")]
    pub fn with_plant(mut self, plant: Plant) -> Store {
        self.plant = Planted::new(plant);
        self
    }

    pub(crate) fn plant(&self) -> Planted {
        self.plant
    }

    /// This store with every tenant transaction opened under `guard`: the transaction first
    /// checks that the profile lease is still this fence's and unexpired (by the database
    /// clock), and is refused otherwise. An instance hands such a store to the engine of each
    /// profile it runs, so a stale owner's write is rejected inside its own transaction.
    pub fn guarded_by(&self, guard: LeaseGuard) -> Store {
        Store {
            guard: Some(guard),
            ..self.clone()
        }
    }

    /// The lease guard of this store's tenant transactions, if any.
    pub fn guard(&self) -> Option<&LeaseGuard> {
        self.guard.as_ref()
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Pg(_) => Backend::Postgres,
            Pool::Lite(_) | Pool::InThread(_) => Backend::Sqlite,
            Pool::Memory(_) => Backend::Memory,
        }
    }

    /// The scope of one tenant: the only way to tenant data.
    pub fn tenant(&self, user: UserId) -> Tenant<'_> {
        Tenant::new(self, user)
    }

    /// Lease locks: entry locks, reconciliation locks and profile leases.
    pub fn locks(&self) -> Locks<'_> {
        Locks::new(self)
    }

    /// The store's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The PostgreSQL pool, for work outside the tenant tables (benchmarks, health checks). It
    /// carries no claims, so row-level security shows it no tenant rows.
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Pg(pool) => Some(pool),
            Pool::Lite(_) | Pool::InThread(_) | Pool::Memory(_) => None,
        }
    }

    /// Closes every connection. A memory store's rows stay until its last clone is dropped,
    /// but it opens no more transactions.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Pg(pool) => pool.close().await,
            Pool::Lite(pool) => pool.close().await,
            // One connection, closed when the last clone of the store is dropped.
            Pool::InThread(_) => {}
            Pool::Memory(pool) => pool.close(),
        }
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn stats_arc(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }
}
