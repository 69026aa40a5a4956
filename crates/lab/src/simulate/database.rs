//! The store a seed runs on, and what the simulation does to it from outside the host: writes
//! that fail, leases that lapse, and an audit of entry locks taken from a live holder.
//!
//! On SQLite these are SQL in the scratch file itself ([`SIM_SCHEMA`], on a connection of their
//! own that a host crash does not close); on the memory store they are its lab hooks at the same
//! statements ([`Store::set_memory_writes_failing`], [`RowWrite::ExpireLocks`],
//! [`Store::memory_entry_lock_steals`]). Every fault of the simulation applies to both stores.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use keel_kernel::ids::UserId;
use keel_kernel::lock::LockKind;
use keel_kernel::plant::Plant;
use keel_kernel::store::{RowWrite, Store};
use sqlx::SqlitePool;

/// Which store the simulated host runs on (`keel simulate --store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The memory store: rows in process memory, the invariants checked in Rust.
    Memory,
    /// A scratch SQLite file: the schema's constraints and triggers, through sqlx.
    Sqlite,
}

impl StoreKind {
    /// The name `--store` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
        }
    }
}

/// SQL the simulation adds to its scratch database: a switch that makes writes fail (a
/// transaction failure the host cannot tell from a lost connection), and an audit of entry
/// locks taken from a live holder — the mutual exclusion invariant 2 needs, recorded by the
/// database itself.
const SIM_SCHEMA: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS sim_faults (id INTEGER PRIMARY KEY CHECK (id = 1), armed INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO sim_faults (id, armed) VALUES (1, 0)",
    "CREATE TABLE IF NOT EXISTS sim_lock_steals (lock_key TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS sim_fail_fills BEFORE INSERT ON fills \
     WHEN (SELECT armed FROM sim_faults) = 1 BEGIN SELECT RAISE(ABORT, 'simulated transaction failure'); END",
    "CREATE TRIGGER IF NOT EXISTS sim_fail_orders BEFORE UPDATE ON orders \
     WHEN (SELECT armed FROM sim_faults) = 1 BEGIN SELECT RAISE(ABORT, 'simulated transaction failure'); END",
    "CREATE TRIGGER IF NOT EXISTS sim_audit_entry_locks BEFORE UPDATE ON entry_locks \
     WHEN OLD.owner_token <> NEW.owner_token AND OLD.expires_at_ms > NEW.acquired_at_ms \
     BEGIN INSERT INTO sim_lock_steals (lock_key) VALUES (OLD.lock_key); END",
];

/// One seed's database, outlasting the host's store across crashes and restarts.
pub(super) enum Database {
    /// A scratch SQLite file and the instruments' own connection to it.
    Sqlite {
        path: PathBuf,
        instruments: SqlitePool,
    },
    /// A memory store's rows, through a handle the host never closes.
    Memory { rows: Store },
}

impl Database {
    /// Creates seed `seed`'s database (a file in `dir` for SQLite) and the host's first store
    /// on it.
    pub(super) async fn create(
        kind: StoreKind,
        dir: &Path,
        seed: u64,
        plant: Option<Plant>,
    ) -> anyhow::Result<(Database, Store)> {
        let (database, store) = match kind {
            StoreKind::Memory => {
                let rows = Store::open_memory();
                let store = rows.reopen_memory()?;
                (Database::Memory { rows }, store)
            }
            StoreKind::Sqlite => {
                let path = dir.join(format!("seed-{seed}.db"));
                // The host's store migrates the file before the instruments add their SQL.
                let store = Database::open_sqlite(&path).await?;
                let instruments = SqlitePool::connect(&format!("sqlite:{}", path.display()))
                    .await
                    .context("opening the fault injector's connection")?;
                for sql in SIM_SCHEMA {
                    sqlx::query(sql).execute(&instruments).await?;
                }
                (Database::Sqlite { path, instruments }, store)
            }
        };
        Ok((database, with_plant(store, plant)))
    }

    async fn open_sqlite(path: &Path) -> anyhow::Result<Store> {
        Store::open_sqlite_scratch(path)
            .await
            .context("opening the simulation's SQLite store")
    }

    /// The host's store, opened (again) on this database.
    pub(super) async fn open_store(&self, plant: Option<Plant>) -> anyhow::Result<Store> {
        let store = match self {
            Database::Sqlite { path, .. } => Database::open_sqlite(path).await?,
            Database::Memory { rows } => rows.reopen_memory()?,
        };
        Ok(with_plant(store, plant))
    }

    /// Makes writes of fills and orders fail (or succeed again).
    pub(super) async fn set_writes_failing(&self, failing: bool) -> anyhow::Result<()> {
        match self {
            Database::Sqlite { instruments, .. } => {
                sqlx::query("UPDATE sim_faults SET armed = $1 WHERE id = 1")
                    .bind(i64::from(failing))
                    .execute(instruments)
                    .await?;
            }
            Database::Memory { rows } => rows.set_memory_writes_failing(failing).await?,
        }
        Ok(())
    }

    /// Every lease of `kind` lapses, as when its holder stalls past the TTL.
    pub(super) async fn expire_leases(&self, kind: LockKind) -> anyhow::Result<()> {
        match self {
            Database::Sqlite { instruments, .. } => {
                sqlx::query(&format!("UPDATE {} SET expires_at_ms = 0", kind.table()))
                    .execute(instruments)
                    .await?;
            }
            Database::Memory { rows } => {
                // Lock tables are not tenant data: the user names no scope here.
                let user = UserId::from_uuid(uuid::Uuid::nil());
                rows.plant_row_write(user, RowWrite::ExpireLocks { kind })
                    .await?;
            }
        }
        Ok(())
    }

    /// Entry locks taken so far from an owner whose lease was live.
    pub(super) async fn entry_lock_steals(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Database::Sqlite { instruments, .. } => {
                let steals: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sim_lock_steals")
                    .fetch_one(instruments)
                    .await?;
                u64::try_from(steals).context("a negative count of lock steals")?
            }
            Database::Memory { rows } => rows.memory_entry_lock_steals().await?,
        })
    }

    /// Closes the instruments and removes the file: a run of millions of seeds keeps one
    /// directory, and each seed's files go when it ends.
    pub(super) async fn remove(self) {
        if let Database::Sqlite { path, instruments } = self {
            instruments.close().await;
            for suffix in ["", "-wal", "-shm"] {
                let mut path = path.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn with_plant(store: Store, plant: Option<Plant>) -> Store {
    match plant {
        Some(plant) => store.with_plant(plant),
        None => store,
    }
}
