//! Real processes: one `keel exchange-sim`, `keel serve` instances with their configuration
//! files, and the database and exchange reads the scenarios check.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keel_exchange::binance::{BinanceConfig, BinanceExchange, Signer};
use keel_kernel::exchange::Exchange;
use keel_kernel::ids::{ProfileId, UserId};
use keel_kernel::market::Side;
use keel_kernel::money::Amount;
use keel_kernel::store::Store;
use rust_decimal::Decimal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{HOST_ROLE, OWNER_ROLE, PgTestDb, url_with};

/// How long any awaited condition may take, generously: the machine is shared with builds.
pub const WAIT_MAX: Duration = Duration::from_secs(120);
/// TTL of the instances' profile leases.
pub const LEASE_TTL_MS: i64 = 2_000;
/// Their renewal interval (at most a third of the TTL, as the configuration requires).
pub const LEASE_RENEW_MS: u64 = 500;
/// Capital allocated to the test profile.
pub const CAPITAL: i64 = 10_000;

pub fn repo_root() -> PathBuf {
    keel_testkit::repo_root()
}

pub fn plugin(name: &str) -> PathBuf {
    repo_root()
        .join("plugins-example/target/wasm32-wasip2/release")
        .join(name)
}

/// Waits until `condition` holds, failing the test after [`WAIT_MAX`].
pub async fn wait_for<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    keel_testkit::wait_for(what, WAIT_MAX, condition).await
}

/// Sends a signal (`TERM`, `STOP`, `CONT`, `KILL`) to a process.
pub fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

/// A running `keel exchange-sim`.
pub struct Sim {
    _child: Child,
    pub addr: String,
}

impl Sim {
    /// A simulator with `args` added to its command line.
    pub async fn start(seed: u64, args: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["exchange-sim", "--port", "0", "--candle-ms", "200"])
            .args(["--seed", &seed.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting keel exchange-sim");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().expect("the address line");
        let addr = line
            .strip_prefix("exchange-sim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Sim {
            _child: child,
            addr,
        }
    }

    /// How many times each client order id was placed on the simulator.
    pub async fn placements(&self) -> HashMap<String, u32> {
        reqwest::get(format!("http://{}/admin/placements", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The API key that placed each client order id.
    pub async fn placed_by(&self) -> HashMap<String, String> {
        reqwest::get(format!("http://{}/admin/placed-by", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn adapter(&self) -> BinanceExchange {
        let signer = Signer::Hmac {
            secret: "keel-sim-secret".to_owned(),
        };
        let config = BinanceConfig::at(
            &format!("http://{}", self.addr),
            &format!("ws://{}", self.addr),
            "keel-sim-key".to_owned(),
            signer,
        );
        BinanceExchange::connect(config).await.unwrap()
    }
}

/// Turns every fault of the simulator at `addr` off (`PUT /admin/faults {}`).
pub async fn clear_faults(addr: &str) {
    reqwest::Client::new()
        .put(format!("http://{addr}/admin/faults"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// A test database with one funded profile.
pub struct World {
    pub db: PgTestDb,
    pub sim: Sim,
    pub user: UserId,
    pub profile: ProfileId,
    pub dir: tempfile::TempDir,
    server_url: String,
}

impl World {
    pub async fn create(seed: u64) -> World {
        World::create_with(seed, &[]).await
    }

    /// A world whose simulator runs with `sim_args` added.
    pub async fn create_with(seed: u64, sim_args: &[&str]) -> World {
        let db = PgTestDb::create().await;
        let sim = Sim::start(seed, sim_args).await;
        let user = UserId::new_random();
        let tenant = db.store.tenant(user);
        let profile = tenant.create_profile("cluster").await.unwrap();
        // Room for the profiles a scenario adds beside the first.
        db.store
            .operator(keel_kernel::store::HOST_OPERATOR)
            .grant_budget(user, Decimal::from(CAPITAL * 10))
            .await
            .unwrap();
        tenant
            .allocate(profile, Amount::positive(Decimal::from(CAPITAL)).unwrap())
            .await
            .unwrap();
        // It trades on the simulator's (the host's) account, as an operator assigned.
        assert!(
            db.store
                .operator(keel_kernel::store::HOST_OPERATOR)
                .assign_host_account(profile, true)
                .await
                .unwrap()
        );
        let server_url = std::env::var("KEEL_TEST_DATABASE_URL")
            .unwrap_or_else(|_| crate::support::DEFAULT_SERVER_URL.to_owned());
        World {
            db,
            sim,
            user,
            profile,
            dir: tempfile::tempdir().unwrap(),
            server_url,
        }
    }

    /// Writes the configuration of instance `name` running `plugin` with `config` pairs.
    pub fn config_file(&self, name: &str, plugin_file: &str, pairs: &[(&str, &str)]) -> PathBuf {
        let database = format!(
            "url = \"{}\"\nadmin_url = \"{}\"",
            url_with(&self.server_url, HOST_ROLE, &self.db.name),
            url_with(&self.server_url, OWNER_ROLE, &self.db.name),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        write_config(&path, name, &database, &self.sim, plugin_file, pairs);
        path
    }

    /// Every order of the profile: client order id → (kind, status, filled quantity).
    pub async fn orders(&self) -> BTreeMap<String, (String, String, Decimal)> {
        let mut tx = self.db.store.tenant(self.user).begin().await.unwrap();
        let rows: Vec<(String, String, String, Decimal)> = sqlx::query_as(
            "SELECT client_order_id, kind, status, filled_qty FROM orders WHERE profile_id = $1",
        )
        .bind(self.profile.as_uuid())
        .fetch_all(tx.pg_connection().unwrap())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(id, kind, status, filled)| (id, (kind, status, filled)))
            .collect()
    }

    /// Orders still waiting for the exchange's word (PENDING_SUBMIT or UNKNOWN).
    pub async fn unresolved_orders(&self) -> usize {
        self.orders()
            .await
            .values()
            .filter(|(_, status, _)| status == "PENDING_SUBMIT" || status == "UNKNOWN")
            .count()
    }

    /// The profile lease row: (owner token, fence), if one is held.
    pub async fn lease(&self) -> Option<(uuid::Uuid, i64)> {
        sqlx::query_as("SELECT owner_token, fence FROM profile_leases WHERE lock_key = $1")
            .bind(format!("profile:{}", self.profile))
            .fetch_optional(self.db.store.pg_pool().unwrap())
            .await
            .unwrap()
    }

    /// Checks that the database equals the exchange, the capital invariant holds, and no order
    /// reached the exchange twice or without the database knowing it.
    pub async fn assert_agreement(&self) {
        self.check_agreement(Unresolved::Refused).await;
    }

    /// [`World::assert_agreement`] while orders the exchange never received may still wait,
    /// unresolved, for the end of the window in which a delayed request could still be
    /// accepted (`engine.unknown_resolve_after_ms`); everything the exchange knows must agree.
    pub async fn assert_agreement_on_what_the_exchange_knows(&self) {
        self.check_agreement(Unresolved::NeverPlacedMayWait).await;
    }

    async fn check_agreement(&self, unresolved: Unresolved) {
        let store: &Store = &self.db.store;
        let tenant = store.tenant(self.user);
        let placements = self.sim.placements().await;
        let orders = self.orders().await;
        for (id, count) in &placements {
            assert_eq!(*count, 1, "{id} was placed {count} times");
            assert!(
                orders.contains_key(id),
                "{id} is on the exchange, not in the database"
            );
        }
        for (id, (_, status, filled)) in &orders {
            if *filled > Decimal::ZERO {
                assert!(
                    placements.contains_key(id),
                    "{id} ({status}) filled but never placed"
                );
            }
        }
        let exchange = self.sim.adapter().await;
        let mut exchange_open: Vec<String> = exchange
            .open_orders(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.client_order_id.to_string())
            .collect();
        exchange_open.sort();
        let mut db_open: Vec<String> = tenant
            .open_orders(self.profile)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.client_order_id.to_string())
            .filter(|id| {
                let waiting = matches!(
                    orders.get(id).map(|(_, status, _)| status.as_str()),
                    Some("PENDING_SUBMIT" | "UNKNOWN")
                );
                unresolved == Unresolved::Refused || !waiting || placements.contains_key(id)
            })
            .collect();
        db_open.sort();
        assert_eq!(db_open, exchange_open, "open orders differ");
        let exchange_positions: BTreeMap<String, Decimal> = exchange
            .positions()
            .await
            .unwrap()
            .into_iter()
            .filter(|p| !p.qty.is_zero())
            .map(|p| (p.symbol.to_string(), p.qty))
            .collect();
        let db_positions: BTreeMap<String, Decimal> = tenant
            .positions(self.profile)
            .await
            .unwrap()
            .into_iter()
            .filter(|p| !p.qty_open.is_zero())
            .map(|p| {
                let signed = match p.side {
                    Side::Buy => p.qty_open,
                    Side::Sell => -p.qty_open,
                };
                (p.symbol.to_string(), signed)
            })
            .collect();
        assert_eq!(db_positions, exchange_positions, "positions differ");
        let capital = tenant.capital(self.profile).await.unwrap();
        assert!(
            capital.allocated.get()
                - capital.reserved_for_orders.get()
                - capital.reserved_for_positions.get()
                + capital.realized_pnl.get()
                >= Decimal::ZERO,
            "capital invariant broken: {capital:?}"
        );
        let rebuild = tenant.rebuild_capital(self.profile, false).await.unwrap();
        assert!(!rebuild.differs(), "{rebuild:?}");
    }

    /// Orders whose recorded fills differ from the exchange's trades for them (trade ids and
    /// quantities): client order id → (database, exchange).
    pub async fn fills_without_exchange_trades(
        &self,
    ) -> BTreeMap<String, (Vec<(String, Decimal)>, Vec<(String, Decimal)>)> {
        let mut tx = self.db.store.tenant(self.user).begin().await.unwrap();
        let rows: Vec<(String, String, String, Decimal)> = sqlx::query_as(
            "SELECT client_order_id, symbol, exchange_trade_id, qty FROM fills \
             WHERE profile_id = $1 ORDER BY exchange_trade_id",
        )
        .bind(self.profile.as_uuid())
        .fetch_all(tx.pg_connection().unwrap())
        .await
        .unwrap();
        let mut recorded: BTreeMap<(String, String), Vec<(String, Decimal)>> = BTreeMap::new();
        for (id, symbol, trade, qty) in rows {
            recorded.entry((id, symbol)).or_default().push((trade, qty));
        }
        for (id, (_, _, filled)) in self.orders().await {
            if filled > Decimal::ZERO && !recorded.keys().any(|(o, _)| *o == id) {
                recorded.insert((id, "BTCUSDT".to_owned()), Vec::new());
            }
        }
        let exchange = self.sim.adapter().await;
        let mut differing = BTreeMap::new();
        for ((id, symbol), mut ours) in recorded {
            let client_order_id = keel_kernel::ids::ClientOrderId::new(&id).unwrap();
            let symbol = keel_kernel::ids::Symbol::new(&symbol).unwrap();
            let mut theirs: Vec<(String, Decimal)> = exchange
                .fills(&symbol, &client_order_id)
                .await
                .unwrap()
                .into_iter()
                .map(|f| (f.trade_id.to_string(), f.qty.get().normalize()))
                .collect();
            for fill in &mut ours {
                fill.1 = fill.1.normalize();
            }
            ours.sort();
            theirs.sort();
            if ours != theirs {
                differing.insert(id, (ours, theirs));
            }
        }
        differing
    }

    pub async fn drop_db(self) {
        self.db.drop_db().await;
    }
}

/// Whether orders still waiting for the exchange's word break agreement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unresolved {
    Refused,
    NeverPlacedMayWait,
}

/// The `KEEL_CREDENTIALS_KEY` every test instance runs with.
pub const CREDENTIALS_KEY_HEX: &str =
    "1111111111111111111111111111111111111111111111111111111111111111";

/// Writes the configuration of instance `name`: the `[database]` lines given, the simulator as
/// its exchange (the host's key `keel-sim-key`), `plugin_file` with `pairs` on BTCUSDT candles
/// of one second.
pub fn write_config(
    path: &Path,
    name: &str,
    database: &str,
    sim: &Sim,
    plugin_file: &str,
    pairs: &[(&str, &str)],
) {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\""))
        .collect();
    let text = format!(
        r#"
[database]
{database}
connections_max = 4

[api]
listen = "127.0.0.1:0"
jwt_secret = "cluster-test-secret-cluster-test-secret"

[exchange]
kind = "binance"
rest_url = "http://{addr}"
ws_url = "ws://{addr}"
api_key = "keel-sim-key"
api_secret = "keel-sim-secret"

[instance]
id = "{name}"
lease_ttl_ms = {LEASE_TTL_MS}
lease_renew_ms = {LEASE_RENEW_MS}

[loops]
reconcile_interval_ms = 500

[engine]
entry_lock_ttl_ms = 3000
unknown_resolve_after_ms = 6000

[strategy]
plugin = "{plugin}"
symbols = ["BTCUSDT"]
interval = "1s"
config = {{ {pairs} }}
"#,
        addr = sim.addr,
        plugin = plugin(plugin_file).display(),
        pairs = pairs.join(", "),
    );
    std::fs::write(path, text).unwrap();
}

/// A running `keel serve`.
pub struct Serve {
    child: Child,
    pub name: String,
    pub owner: uuid::Uuid,
    pub base: String,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

impl Serve {
    pub async fn start(name: &str, config: &Path) -> Serve {
        Serve::start_with(name, config, &[]).await
    }

    /// Starts an instance with extra environment variables.
    pub async fn start_with(name: &str, config: &Path, env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,keel_host::serve=info")
            .env("KEEL_CREDENTIALS_KEY", CREDENTIALS_KEY_HEX)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting keel serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let stderr = tokio::spawn(async move {
            let mut lines = stderr.lines();
            let mut all = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                all.push(line);
            }
            all
        });
        let first = tokio::time::timeout(WAIT_MAX, lines.next_line())
            .await
            .expect("keel serve prints its address")
            .unwrap();
        let Some(first) = first else {
            let log = stderr.await.unwrap();
            panic!("keel serve {name} exited before printing its address: {log:#?}");
        };
        let word_after = |marker: &str| {
            first
                .split(marker)
                .nth(1)
                .and_then(|rest| rest.split([' ', ')']).next())
                .unwrap_or_else(|| panic!("no {marker:?} in {first:?}"))
                .to_owned()
        };
        let owner = word_after("(owner ").parse().unwrap();
        let base = word_after("listening on ");
        // Keep reading stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Serve {
            child,
            name: name.to_owned(),
            owner,
            base,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("{}{path}", self.base)).await {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap()),
            Err(_) => (0, String::new()),
        }
    }

    /// The value of one metric series (exactly as exposed); 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    /// Waits for the process to end on its own; the exit status and everything logged.
    pub async fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(WAIT_MAX, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not end", self.name))
            .unwrap();
        (status, self.stderr.await.unwrap())
    }

    /// SIGTERM, then the exit status and everything logged.
    pub async fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        signal(self.pid(), "TERM");
        let status = tokio::time::timeout(WAIT_MAX, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} stops after SIGTERM", self.name))
            .unwrap();
        (status, self.stderr.await.unwrap())
    }
}

/// Seconds since the Unix epoch, for minting tokens.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}
