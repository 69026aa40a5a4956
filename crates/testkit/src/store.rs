//! Test databases: a fresh PostgreSQL database per test (created and dropped here, with the
//! production role layout), a fresh SQLite file per test, and a fresh memory store.

use std::str::FromStr;

use keel_kernel::ids::UserId;
use keel_kernel::store::{RowWrite, Store, StoreError};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

/// The server the tests use unless `KEEL_TEST_DATABASE_URL` names another.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The role that owns the schema and runs migrations.
pub const OWNER_ROLE: &str = "keel_owner";
/// Connections of a test's host-role store: enough for races to overlap in the server, few
/// enough that parallel tests stay far below the server's `max_connections`.
pub const HOST_CONNECTIONS_MAX: u32 = 8;
/// The role the host runs as: a member of keel_app, owning nothing.
pub const HOST_ROLE: &str = "keel_host";

fn server_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// `base` with another user and database.
pub fn url_with(base: &str, user: &str, database: &str) -> String {
    let mut url = url::Url::parse(base).expect("KEEL_TEST_DATABASE_URL is a URL");
    url.set_username(user).expect("postgres URLs take a user");
    url.set_password(None)
        .expect("postgres URLs take a password");
    url.set_path(database);
    url.to_string()
}

async fn superuser() -> PgConnection {
    let url = server_url();
    let options = PgConnectOptions::from_str(&url).expect("KEEL_TEST_DATABASE_URL parses");
    PgConnection::connect_with(&options).await.unwrap_or_else(|e| {
        panic!(
            "no PostgreSQL server answers at {url} ({e}). Run scripts/ensure-postgres (it starts \
             one from the PostgreSQL binaries here) or set KEEL_TEST_DATABASE_URL; on Debian \
             install the server with `apt-get install postgresql`."
        )
    })
}

/// Creates the roles of the production layout once per server. Serialized by an advisory lock,
/// since test binaries run in parallel against one cluster.
async fn ensure_roles(conn: &mut PgConnection) {
    conn.execute("SELECT pg_advisory_lock(742042)")
        .await
        .unwrap();
    conn.execute(
        "DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keel_owner') THEN
                CREATE ROLE keel_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
            END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keel_app') THEN
                CREATE ROLE keel_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
            END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keel_host') THEN
                CREATE ROLE keel_host LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS IN ROLE keel_app;
            END IF;
        END $$",
    )
    .await
    .unwrap();
    conn.execute("SELECT pg_advisory_unlock(742042)")
        .await
        .unwrap();
}

/// Drops test databases left by runs whose process is gone (a panicking test skips its drop).
async fn sweep_stale(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'keel_t\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    for name in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                .await;
        }
    }
}

/// A fresh PostgreSQL database, migrated by the owner role, used by the host role.
pub struct PgTestDb {
    /// The database's name.
    pub name: String,
    /// The store, connected as the host role.
    pub store: Store,
    /// Connections as the owner role (subject to FORCEd RLS too).
    pub owner: sqlx::PgPool,
}

impl PgTestDb {
    /// Creates, migrates and connects a database of its own.
    pub async fn create() -> PgTestDb {
        let mut su = superuser().await;
        sweep_stale(&mut su).await;
        ensure_roles(&mut su).await;
        let name = format!(
            "keel_t_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        su.execute(format!("CREATE DATABASE \"{name}\" OWNER {OWNER_ROLE}").as_str())
            .await
            .unwrap();
        su.close().await.unwrap();
        let base = server_url();
        Store::migrate_postgres(&url_with(&base, OWNER_ROLE, &name))
            .await
            .expect("migrations apply on a fresh database");
        let store =
            Store::connect_postgres(&url_with(&base, HOST_ROLE, &name), HOST_CONNECTIONS_MAX)
                .await
                .unwrap();
        let owner = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url_with(&base, OWNER_ROLE, &name))
            .await
            .unwrap();
        PgTestDb { name, store, owner }
    }

    /// Closes every connection and drops the database.
    pub async fn drop_db(self) {
        self.store.close().await;
        self.owner.close().await;
        let mut su = superuser().await;
        su.execute(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name).as_str())
            .await
            .unwrap();
    }
}

/// A fresh SQLite file in a temporary directory.
pub struct LiteTestDb {
    _dir: tempfile::TempDir,
    /// The store.
    pub store: Store,
    /// A connection pool of its own on the same file, for statements outside the store API.
    pub raw: sqlx::SqlitePool,
}

impl LiteTestDb {
    /// Creates and migrates a database file.
    pub async fn create() -> LiteTestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.db");
        let store = Store::open_sqlite(&path)
            .await
            .expect("migrations apply on a fresh SQLite file");
        LiteTestDb::with_raw(dir, path, store).await
    }

    /// Creates and migrates a database file whose store runs its statements in the calling
    /// thread (a backtest's store).
    pub async fn create_in_thread() -> LiteTestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.db");
        let store = Store::open_sqlite_in_thread(Some(&path))
            .await
            .expect("migrations apply on a fresh SQLite file");
        LiteTestDb::with_raw(dir, path, store).await
    }

    async fn with_raw(
        dir: tempfile::TempDir,
        path: std::path::PathBuf,
        store: Store,
    ) -> LiteTestDb {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let raw = sqlx::SqlitePool::connect_with(options).await.unwrap();
        LiteTestDb {
            _dir: dir,
            store,
            raw,
        }
    }
}

/// One backend under test, with raw access for writes the store API never makes (tampering,
/// constraint probes): SQL on a database, planted rows on the memory store.
pub struct Harness {
    /// The store under test.
    pub store: Store,
    raw: Raw,
}

enum Raw {
    PgOwner(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
    /// The memory store has no SQL: writes are planted into its rows.
    Memory,
}

impl Harness {
    /// The harness of a PostgreSQL test database.
    pub fn pg(db: &PgTestDb) -> Harness {
        Harness {
            store: db.store.clone(),
            raw: Raw::PgOwner(db.owner.clone()),
        }
    }

    /// The harness of a SQLite test database.
    pub fn lite(db: &LiteTestDb) -> Harness {
        Harness {
            store: db.store.clone(),
            raw: Raw::Lite(db.raw.clone()),
        }
    }

    /// The harness of a fresh memory store.
    pub fn memory() -> Harness {
        Harness {
            store: Store::open_memory(),
            raw: Raw::Memory,
        }
    }

    /// Makes one write outside the store API: `sql` on a database (see [`Harness::raw`]), and
    /// on the memory store `planted`, the same write on its rows
    /// ([`Store::plant_row_write`]). Rows written; a refusal names its constraint.
    pub async fn write_outside(
        &self,
        user: UserId,
        sql: &str,
        planted: RowWrite,
    ) -> Result<u64, StoreError> {
        match &self.raw {
            Raw::Memory => self.store.plant_row_write(user, planted).await,
            Raw::PgOwner(_) | Raw::Lite(_) => self.raw(user, sql).await,
        }
    }

    /// Runs `sql` outside the store API: on PostgreSQL as the owner role with `user`'s claims
    /// (RLS is forced on the owner too), on SQLite directly. Errors are mapped as the store maps
    /// them, so constraint names can be checked.
    ///
    /// # Panics
    /// On the memory store, which has no SQL: use [`Harness::write_outside`].
    pub async fn raw(&self, user: UserId, sql: &str) -> Result<u64, StoreError> {
        match &self.raw {
            Raw::PgOwner(owner) => {
                let mut tx = owner.begin().await?;
                let claims = format!(r#"{{"sub":"{user}"}}"#);
                sqlx::query("SELECT set_config('request.jwt.claims', $1, true)")
                    .bind(claims)
                    .execute(&mut *tx)
                    .await?;
                let affected = sqlx::query(sql).execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok(affected)
            }
            Raw::Lite(pool) => Ok(sqlx::query(sql).execute(pool).await?.rows_affected()),
            Raw::Memory => panic!("the memory store runs no SQL: {sql}"),
        }
    }
}

/// Declares each listed `async fn name(h: &Harness)` as one test per store: PostgreSQL,
/// SQLite on sqlx, SQLite in the calling thread, and the memory store.
#[macro_export]
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::store::PgTestDb::create().await;
                    super::$name(&$crate::store::Harness::pg(&db)).await;
                    db.drop_db().await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::store::LiteTestDb::create().await;
                    super::$name(&$crate::store::Harness::lite(&db)).await;
                }
            )*
        }
        mod on_sqlite_in_thread {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::store::LiteTestDb::create_in_thread().await;
                    super::$name(&$crate::store::Harness::lite(&db)).await;
                }
            )*
        }
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&$crate::store::Harness::memory()).await;
                }
            )*
        }
    };
}
