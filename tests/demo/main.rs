//! The real `keel demo` binary: it trades, reports its loops, stops cleanly on SIGINT and comes
//! back with its state; every metric the runbooks, alerts and dashboard name is in its scrape;
//! its JSON log carries the span fields and no secret.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod alerts;
mod browser;
mod docs;
mod faults;
mod hostile;
mod logs;
mod plugins;
mod roster;
mod tour;

/// How long the demo may take to become ready or to reach a condition, generously: the
/// machine is shared with other builds.
const WAIT_MAX: Duration = Duration::from_secs(90);

fn repo_root() -> PathBuf {
    keel_testkit::repo_root()
}

/// The keys that sign the demo's tokens, from the secret in its data directory.
fn demo_keys(data_dir: &Path) -> keel_api::auth::JwtKeys {
    let secret = std::fs::read_to_string(data_dir.join("jwt-secret")).unwrap();
    keel_api::auth::JwtKeys::new(secret.trim().as_bytes()).unwrap()
}

struct Demo {
    child: Child,
    base: String,
    data_dir: PathBuf,
    stdout: tokio::task::JoinHandle<Vec<String>>,
}

impl Demo {
    /// Starts the demo on a free port and waits for the line that prints its URL.
    async fn start(data_dir: &Path) -> Demo {
        let mut command = Demo::command(data_dir);
        command.env("RUST_LOG", "warn").stderr(Stdio::inherit());
        Demo::spawn(command, data_dir).await
    }

    /// `keel demo` on a free port, fast, with its stdout piped.
    fn command(data_dir: &Path) -> Command {
        Demo::command_at(data_dir, 50)
    }

    /// `keel demo` on a free port, a candle every `speed_ms`, with its stdout piped.
    fn command_at(data_dir: &Path, speed_ms: u64) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .arg("demo")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--port", "0", "--reconcile-interval-ms", "500"])
            .arg("--speed-ms")
            .arg(speed_ms.to_string())
            .arg("--plugins-dir")
            .arg(repo_root().join("plugins-example/target/wasm32-wasip2/release"))
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Spawns `command` and waits for the line that prints the demo's URL.
    async fn spawn(mut command: Command, data_dir: &Path) -> Demo {
        let mut child = command.spawn().expect("spawning keel demo");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT_MAX, lines.next_line())
            .await
            .expect("the demo prints its URL")
            .unwrap()
            .expect("the demo exited before printing its URL");
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"));
        let base = url.trim_end_matches("/internal/health").to_owned();
        let stdout = tokio::spawn(async move {
            let mut rest = vec![first];
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push(line);
            }
            rest
        });
        Demo {
            child,
            base,
            data_dir: data_dir.to_owned(),
            stdout,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// GET with a bearer token.
    async fn get_as(&self, path: &str, token: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// A token signed with the demo's secret, for a fresh user id.
    fn token(&self, operator: bool) -> String {
        self.token_of(keel_kernel::ids::UserId::new_random(), operator)
    }

    fn token_of(&self, user: keel_kernel::ids::UserId, operator: bool) -> String {
        let now = chrono::Utc::now().timestamp();
        demo_keys(&self.data_dir).mint(user, operator, now, 600)
    }

    /// What the demo remembers in `demo.json`.
    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.data_dir.join("demo.json")).unwrap())
            .unwrap()
    }

    /// A token of the demo's own user, who owns its three profiles.
    fn owner_token(&self) -> String {
        let state = self.state();
        let user = keel_kernel::ids::UserId::parse(state["user"].as_str().unwrap()).unwrap();
        demo_keys(&self.data_dir).mint(user, false, chrono::Utc::now().timestamp(), 600)
    }

    /// The demo's profiles: name and id of each.
    fn profiles(&self) -> Vec<(String, String)> {
        self.state()["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                let name = pair[0].as_str().unwrap().to_owned();
                (name, pair[1].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// The demo's profile ids.
    fn profile_ids(&self) -> Vec<String> {
        self.profiles().into_iter().map(|(_, id)| id).collect()
    }

    async fn wait_ready(&self) {
        wait_for("/readyz to answer 200", || async {
            self.get("/readyz").await.0 == 200
        })
        .await;
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        sample(&text, series)
    }

    /// Sends `signal` (`INT`, `TERM`), then returns the exit status and everything printed.
    async fn stop(mut self, signal: &str) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(WAIT_MAX, self.child.wait())
            .await
            .expect("the demo stops after the signal")
            .unwrap();
        (status, self.stdout.await.unwrap())
    }
}

/// Waits until `condition` holds, failing the test after [`WAIT_MAX`].
async fn wait_for<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    keel_testkit::wait_for(what, WAIT_MAX, condition).await
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare name); 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Counts of stored orders and the capital rows, read straight from the SQLite file.
async fn stored(data_dir: &Path) -> (i64, Vec<(String, String)>) {
    let url = format!("sqlite://{}?mode=ro", data_dir.join("keel.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    let capital: Vec<(String, String)> = sqlx::query_as(
        "SELECT hex(profile_id), CAST(allocated AS TEXT) FROM capital_accounts ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    (orders, capital)
}

/// The health document as an operator reads it: every component and the per-profile detail.
async fn health_is_ok(demo: &Demo) -> serde_json::Value {
    let (status, body) = demo.get_as("/internal/health", &demo.token(true)).await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{health:#}");
    for name in ["trading", "monitor", "reconciliation"] {
        let state = &health["components"]["loops"][name]["state"];
        assert_eq!(state, "ok", "loop {name}: {health:#}");
    }
    for profile in health["components"]["capital"]["profiles"]
        .as_array()
        .unwrap()
    {
        assert_eq!(profile["invariant_holds"], true, "{profile:#}");
        assert_eq!(profile["controls"]["quarantined"], false, "{profile:#}");
    }
    assert_eq!(
        health["profiles"].as_array().unwrap().len(),
        3,
        "{health:#}"
    );
    health
}

/// Without an operator token the health document says how each component is, and names no
/// tenant: no profile id, no user id, no profile name.
async fn public_health_names_no_tenant(demo: &Demo) {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.data_dir.join("demo.json")).unwrap())
            .unwrap();
    let mut tenant_words = vec![state["user"].as_str().unwrap().to_owned()];
    for pair in state["profiles"].as_array().unwrap() {
        tenant_words.push(pair[0].as_str().unwrap().to_owned());
        tenant_words.push(pair[1].as_str().unwrap().to_owned());
    }
    let user_token = demo.token(false);
    for (who, (status, body)) in [
        ("anonymous", demo.get("/internal/health").await),
        ("a user", demo.get_as("/internal/health", &user_token).await),
    ] {
        assert_eq!(status, 200, "{who}: {body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "ok", "{who}: {health:#}");
        for component in ["loops", "database", "capital", "exchange", "plugins"] {
            assert!(
                health["components"].get(component).is_some(),
                "{who}: no {component} in {health:#}"
            );
        }
        assert_eq!(
            health["components"]["capital"],
            serde_json::json!({"status": "ok"})
        );
        assert!(health.get("profiles").is_none(), "{who}: {health:#}");
        for word in &tenant_words {
            assert!(!body.contains(word.as_str()), "{who}: {word} in {body}");
        }
    }
    let (status, body) = demo.get_as("/internal/health", "forged.token.value").await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn demo_trades_stops_cleanly_and_restarts_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path()).await;
    demo.wait_ready().await;
    assert_eq!(demo.metric("keel_ready").await, 1.0);
    assert_eq!(demo.get("/livez").await.0, 200);
    wait_for("filled orders", || async {
        demo.metric("keel_orders_total{status=\"FILLED\"}").await >= 2.0
    })
    .await;
    let beat = "keel_loop_heartbeat_timestamp_seconds{loop=\"trading\"}";
    let first_beat = demo.metric(beat).await;
    wait_for("the trading heartbeat to advance", || async {
        demo.metric(beat).await > first_beat
    })
    .await;
    health_is_ok(&demo).await;
    public_health_names_no_tenant(&demo).await;

    let (status, stdout) = demo.stop("INT").await;
    assert!(status.success(), "exit {status:?}, stdout {stdout:?}");
    assert!(
        stdout.iter().any(|l| l.contains("stopped cleanly")),
        "{stdout:?}"
    );
    let (orders_before, capital_before) = stored(dir.path()).await;
    assert!(orders_before >= 2, "{orders_before} orders stored");
    assert_eq!(capital_before.len(), 3, "{capital_before:?}");

    let demo = Demo::start(dir.path()).await;
    demo.wait_ready().await;
    let (orders_after, capital_after) = stored(dir.path()).await;
    assert_eq!(capital_after, capital_before, "capital allocated once");
    assert!(orders_after >= orders_before, "order history kept");
    wait_for("trading to resume after the restart", || async {
        demo.metric("keel_orders_total{status=\"FILLED\"}").await >= 1.0
    })
    .await;
    health_is_ok(&demo).await;
    assert_eq!(
        demo.metric("keel_capital_invariant_violations_total").await,
        0.0
    );
    assert_eq!(
        demo.metric("keel_ledger_rebuild_mismatches_total").await,
        0.0
    );
    let (status, _) = demo.stop("INT").await;
    assert!(status.success());
}

/// Every `keel_*` name in `text`, histogram suffixes stripped.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("keel_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let name = name.trim_end_matches('_');
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
    }
    names
}

/// Every query (`expr`) of a Grafana dashboard, panels and rows at any depth.
fn dashboard_queries(node: &serde_json::Value, queries: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => queries.push(expr.clone()),
                    _ => dashboard_queries(value, queries),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_queries(item, queries);
            }
        }
        _ => {}
    }
}

/// Every `keel_*` name in the runbooks, the alert rules and the dashboard's queries.
fn documented_metric_names() -> BTreeSet<String> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("runbooks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.push(root.join("deploy/prometheus/alerts.yml"));
    let mut names = BTreeSet::new();
    for file in files {
        names.extend(metric_names_in(&std::fs::read_to_string(&file).unwrap()));
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/keel.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() > 10, "the dashboard has queries: {queries:?}");
    for query in &queries {
        let used = metric_names_in(query);
        assert!(
            !used.is_empty(),
            "a dashboard query names no metric: {query}"
        );
        names.extend(used);
    }
    names
}

#[tokio::test]
async fn every_metric_named_in_runbooks_alerts_and_the_dashboard_is_scraped() {
    let names = documented_metric_names();
    assert!(names.len() > 10, "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path()).await;
    demo.wait_ready().await;
    // Labelled series appear once they have a value: let the host trade first.
    wait_for("a filled order", || async {
        demo.metric("keel_orders_total{status=\"FILLED\"}").await > 0.0
    })
    .await;
    let (_, text) = demo.get("/metrics").await;
    let scraped: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !scraped.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in the scrape: {missing:?}");
    // Fed by the running host, not merely registered: the plugins burn fuel, the store's lock
    // counters reach the registry.
    for series in [
        "keel_plugin_fuel_consumed_total",
        "keel_lock_acquire_duration_seconds_count{lock=\"entry\"}",
        "keel_lock_acquire_duration_seconds_count{lock=\"reconciliation\"}",
    ] {
        assert!(sample(&text, series) > 0.0, "{series} is zero");
    }
    let (status, stdout) = demo.stop("TERM").await;
    assert!(
        status.success(),
        "SIGTERM: exit {status:?}, stdout {stdout:?}"
    );
    assert!(
        stdout.iter().any(|l| l.contains("stopped cleanly")),
        "{stdout:?}"
    );
}
