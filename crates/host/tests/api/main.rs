//! The REST API against real PostgreSQL (host role, forced RLS) and real SQLite, driven in
//! process through the router: every endpoint, the cross-tenant matrix, auth edge cases, bad
//! input, and control of running profile loops.

use keel_testkit::store as support;

mod auth;
mod endpoints;
mod quarantine;
mod quotas;
mod running;
mod tenancy;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keel_api::auth::JwtKeys;
use keel_api::{ApiState, CredentialsKey, ProfileControl};
use keel_host::serve::control::LoopControl;
use keel_kernel::engine::HostSwitches;
use keel_kernel::ids::UserId;
use keel_kernel::store::Store;
use keel_runtime::{EngineSettings, PluginEngine};
use serde_json::Value;
use tower::ServiceExt as _;

/// The secret the tests' tokens are signed with.
pub const SECRET: &[u8] = b"the-api-tests-secret-of-32-bytes-or-more";

pub use keel_testkit::example_plugin_bytes as plugin_bytes;

/// A plugin engine whose compiled code is cached across the tests of this target.
pub fn plugin_engine() -> PluginEngine {
    let settings = EngineSettings {
        instances_max: 16,
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("api-plugin-cache")),
        ..EngineSettings::default()
    };
    PluginEngine::new(settings).expect("building the plugin engine")
}

/// The database under test, with a connection that sees every row (the PostgreSQL superuser,
/// which row-level security does not filter; the SQLite file itself).
pub enum Db {
    /// PostgreSQL.
    Pg(support::PgTestDb, sqlx::PgPool),
    /// SQLite.
    Lite(support::LiteTestDb),
}

impl Db {
    /// A fresh PostgreSQL database.
    pub async fn pg() -> Db {
        let db = support::PgTestDb::create().await;
        let base = std::env::var("KEEL_TEST_DATABASE_URL")
            .unwrap_or_else(|_| support::DEFAULT_SERVER_URL.to_owned());
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&db.name);
        let su = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url.as_str())
            .await
            .unwrap();
        Db::Pg(db, su)
    }

    /// A fresh SQLite file.
    pub async fn lite() -> Db {
        Db::Lite(support::LiteTestDb::create().await)
    }

    /// The store under test.
    pub fn store(&self) -> Store {
        match self {
            Db::Pg(db, _) => db.store.clone(),
            Db::Lite(db) => db.store.clone(),
        }
    }

    /// Every row of every table the API writes, as text, sorted: equal fingerprints mean
    /// nothing changed.
    pub async fn fingerprint(&self) -> Vec<String> {
        const TABLES: [(&str, &[&str]); 11] = [
            (
                "profiles",
                &[
                    "profile_id",
                    "user_id",
                    "name",
                    "risk_limits",
                    "paused",
                    "killed",
                    "deleted_at_ms",
                ],
            ),
            (
                "capital_accounts",
                &[
                    "profile_id",
                    "allocated",
                    "reserved_for_orders",
                    "reserved_for_positions",
                    "realized_pnl",
                    "updated_at_ms",
                ],
            ),
            (
                "ledger_entries",
                &[
                    "entry_id",
                    "profile_id",
                    "entry_kind",
                    "d_allocated",
                    "dedup_key",
                ],
            ),
            ("orders", &["client_order_id", "status", "filled_qty"]),
            (
                "plugins",
                &["plugin_id", "user_id", "name", "sha256", "size_bytes"],
            ),
            (
                "profile_bindings",
                &["profile_id", "plugin_id", "config", "bound_at_ms"],
            ),
            (
                "profile_credentials",
                &[
                    "profile_id",
                    "exchange",
                    "nonce",
                    "ciphertext",
                    "updated_at_ms",
                ],
            ),
            (
                "capital_budgets",
                &["user_id", "granted", "allocated", "updated_at_ms"],
            ),
            (
                "budget_grants",
                &["grant_id", "user_id", "operator_id", "amount"],
            ),
            ("host_account_assignments", &["profile_id", "operator_id"]),
            (
                "profile_quarantines",
                &[
                    "profile_id",
                    "reason",
                    "clear_requested_by",
                    "clear_requested_at_ms",
                    "cleared_at_ms",
                ],
            ),
        ];
        let mut rows = Vec::new();
        for (table, columns) in TABLES {
            let cast = |c: &str| match self {
                Db::Pg(..) => format!("coalesce({c}::text, '-')"),
                Db::Lite(_) => format!(
                    "coalesce(CASE typeof({c}) WHEN 'blob' THEN hex({c}) ELSE CAST({c} AS TEXT) END, '-')"
                ),
            };
            let expr = columns
                .iter()
                .map(|c| cast(c))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let sql = format!("SELECT '{table}|' || {expr} AS row FROM {table}");
            let mut found: Vec<String> = match self {
                Db::Pg(_, su) => sqlx::query_scalar(&sql).fetch_all(su).await.unwrap(),
                Db::Lite(db) => sqlx::query_scalar(&sql).fetch_all(&db.raw).await.unwrap(),
            };
            rows.append(&mut found);
        }
        rows.sort();
        rows
    }

    /// The one integer `sql` selects, read past row-level security.
    pub async fn scalar_count(&self, sql: &str) -> i64 {
        match self {
            Db::Pg(_, su) => sqlx::query_scalar(sql).fetch_one(su).await.unwrap(),
            Db::Lite(db) => sqlx::query_scalar(sql).fetch_one(&db.raw).await.unwrap(),
        }
    }

    /// Drops the PostgreSQL database.
    pub async fn finish(self) {
        if let Db::Pg(db, su) = self {
            su.close().await;
            db.drop_db().await;
        }
    }
}

/// The API in process, as one host serves it.
pub struct Api {
    /// The router.
    pub router: Router,
    /// The keys the tokens are signed with.
    pub keys: JwtKeys,
    /// The loops' control (no loop registered unless a test registers one).
    pub control: Arc<LoopControl>,
    /// The key credentials are sealed with.
    pub credentials: CredentialsKey,
}

/// A response: status and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// The error message of an error response.
    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {self:?}"))
    }
}

impl Api {
    /// The API over `store` with a fresh loop control.
    pub fn new(store: Store) -> Api {
        Api::with_control(
            store,
            Arc::new(LoopControl::new(Arc::new(HostSwitches::default()))),
        )
    }

    /// The API over `store` controlling the loops of `control`.
    pub fn with_control(store: Store, control: Arc<LoopControl>) -> Api {
        Api::with_limits(store, control, keel_api::BodyLimits::default())
    }

    /// The API over `store` reading bodies up to `limits`.
    pub fn with_limits(
        store: Store,
        control: Arc<LoopControl>,
        limits: keel_api::BodyLimits,
    ) -> Api {
        Api::build(store, control, limits, keel_api::Quotas::default())
    }

    /// The API over `store` with `quotas`.
    pub fn with_quotas(store: Store, quotas: keel_api::Quotas) -> Api {
        Api::build(
            store,
            Arc::new(LoopControl::new(Arc::new(HostSwitches::default()))),
            keel_api::BodyLimits::default(),
            quotas,
        )
    }

    /// The API over `store` controlling the loops of `control`, with `quotas`.
    pub fn build(
        store: Store,
        control: Arc<LoopControl>,
        limits: keel_api::BodyLimits,
        quotas: keel_api::Quotas,
    ) -> Api {
        let keys = JwtKeys::new(SECRET).unwrap();
        let credentials = CredentialsKey::from_hex(&CredentialsKey::generate_hex()).unwrap();
        let state = ApiState {
            store,
            auth: keys.clone(),
            plugins: plugin_engine(),
            control: control.clone() as Arc<dyn ProfileControl>,
            credentials: credentials.clone(),
            limits,
            quotas,
            health: Arc::new(keel_api::health::LoopHealth::default()),
        };
        Api {
            router: keel_api::router(state),
            keys,
            control,
            credentials,
        }
    }

    /// A token of `user`, valid for an hour.
    pub fn token(&self, user: UserId, operator: bool) -> String {
        self.keys
            .mint(user, operator, chrono::Utc::now().timestamp(), 3600)
    }

    /// Grants `user` a capital budget of `amount` more, as an operator would.
    pub async fn grant(&self, user: UserId, amount: &str) -> Reply {
        let operator = self.token(UserId::new_random(), true);
        let reply = self
            .send(
                "POST",
                &format!("/api/v1/operator/users/{user}/budget"),
                Some(&operator),
                Some(serde_json::json!({"amount": amount})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.raw(request.body(body).unwrap()).await
    }

    /// Sends a prepared request.
    pub async fn raw(&self, request: Request<Body>) -> Reply {
        self.raw_with_headers(request).await.0
    }

    /// Sends a prepared request; the reply and its headers.
    pub async fn raw_with_headers(&self, request: Request<Body>) -> (Reply, axum::http::HeaderMap) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes))
            })
        };
        assert!(!status.is_server_error(), "a 5xx is a bug: {status} {body}");
        (Reply { status, body }, headers)
    }

    /// Uploads plugin bytes.
    pub async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> Reply {
        let request = Request::post(format!("/api/v1/plugins?name={name}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(Body::from(bytes))
            .unwrap();
        self.raw(request).await
    }

    /// Creates a profile allowed to trade BTCUSDT and returns its id.
    pub async fn create_profile(&self, token: &str, name: &str) -> String {
        let reply = self
            .send(
                "POST",
                "/api/v1/profiles",
                Some(token),
                Some(serde_json::json!({
                    "name": name,
                    "risk_limits": risk_limits(&["BTCUSDT"]),
                })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["profile_id"].as_str().unwrap().to_owned()
    }
}

/// A valid risk configuration for `symbols`.
pub fn risk_limits(symbols: &[&str]) -> Value {
    serde_json::json!({
        "symbols_allowed": symbols,
        "entry_notional_max": "1000",
        "positions_open_max": 3,
        "leverage_max": "1",
        "limit_price_band_bps": 500,
        "intents_per_minute_max": 60,
        "daily_loss_max": "500",
    })
}

/// Declares each listed `async fn name(db: &Db)` as one test per backend.
#[macro_export]
macro_rules! api_tests {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::Db::pg().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::Db::lite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}
