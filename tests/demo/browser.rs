//! The dashboard in Debian's Chromium, driven over WebDriver (chromedriver + fantoccini),
//! against a real `keel demo` process: the profiles appear, and values change without a reload.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Bound on every wait, for a shared and busy machine.
const WAIT_MAX: Duration = Duration::from_secs(120);
const DEMO_PROFILES: [&str; 3] = ["rsi-eth", "sma-btc", "sma-eth-long-short"];

fn repo_root() -> PathBuf {
    keel_testkit::repo_root()
}

/// Starts `keel demo` on a free port and returns it with the dashboard URL it prints.
async fn start_demo(data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("demo")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--port", "0", "--speed-ms", "100"])
        .arg("--plugins-dir")
        .arg(repo_root().join("plugins-example/target/wasm32-wasip2/release"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning keel demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(WAIT_MAX, lines.next_line())
            .await
            .expect("the demo prints its dashboard URL")
            .unwrap()
            .expect("the demo exited before printing its dashboard URL");
        if let Some(rest) = line.split("dashboard at ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Keep reading so the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// A chromedriver on a free port.
async fn start_chromedriver() -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("spawning {CHROMEDRIVER} (apt-get install chromium-driver): {e}")
        });
    let status = format!("http://127.0.0.1:{port}/status");
    wait_for("chromedriver to answer", || async {
        reqwest::get(&status)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    (child, port)
}

async fn browser(port: u16, profile_dir: &Path) -> Client {
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--user-data-dir={}", profile_dir.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": CHROMIUM, "args": args}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with Chromium")
}

/// Waits until `condition` holds, failing the test after [`WAIT_MAX`].
async fn wait_for<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    keel_testkit::wait_for(what, WAIT_MAX, condition).await
}

/// The text of every element matching `css`, in document order, read in one script: the page
/// re-renders live, so elements found one call earlier may be gone.
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText)";
    let value = client
        .execute(script, vec![serde_json::json!(css)])
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// The names of the profile cards on the page, sorted.
async fn profile_names(client: &Client) -> Vec<String> {
    let mut names = texts(client, "[data-profile] .name").await;
    names.sort();
    names
}

/// Reads the page's view of one profile: last price and order updates.
async fn readings(client: &Client, name: &str) -> Option<(String, String)> {
    let script = r#"
        const card = [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        return card ? [card.querySelector('.last-price').textContent,
                       card.querySelector('.order-updates').textContent] : null;
    "#;
    let value = client
        .execute(script, vec![serde_json::json!(name)])
        .await
        .unwrap();
    let pair = value.as_array()?;
    Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned()))
}

#[tokio::test]
async fn the_dashboard_shows_the_demo_live_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    let profile_dir = tempfile::tempdir().unwrap();
    let (mut demo, url) = start_demo(data.path()).await;
    assert!(url.contains("/#token="), "{url}");
    let (mut driver, port) = start_chromedriver().await;
    let client = browser(port, profile_dir.path()).await;

    client.goto(&url).await.unwrap();
    wait_for("the three demo profiles on the page", || async {
        profile_names(&client).await == DEMO_PROFILES
    })
    .await;
    // The token left the address bar for session storage.
    let current = client.current_url().await.unwrap();
    assert_eq!(current.fragment(), None, "{current}");
    let stored = client
        .execute("return sessionStorage.getItem('keel.token')", vec![])
        .await
        .unwrap();
    assert!(url.ends_with(stored.as_str().unwrap()), "{stored}");
    let status = texts(&client, "#conn-status").await;
    assert_eq!(status, ["live"]);
    // Each card shows its plugin version and capital.
    let meta = texts(&client, "[data-profile] .meta").await;
    assert!(
        meta.iter().any(|m| m.contains("sma_cross.wasm · version ")),
        "{meta:?}"
    );
    wait_for("capital on every card", || async {
        let allocated = texts(&client, "[data-profile] .allocated").await;
        allocated.len() == 3 && allocated.iter().all(|a| a.starts_with("10,000"))
    })
    .await;

    // Live: the last price and the order count move without a reload.
    let marker = client
        .execute("window.keelNoReload = 1; return 1", vec![])
        .await
        .unwrap();
    assert_eq!(marker, 1);
    let first = readings(&client, "sma-btc")
        .await
        .expect("the sma-btc card");
    wait_for("the last price of sma-btc to change", || async {
        readings(&client, "sma-btc")
            .await
            .is_some_and(|(price, _)| price != first.0 && price != "–")
    })
    .await;
    let orders_before: u64 = first.1.parse().unwrap();
    wait_for("order updates of sma-btc to grow", || async {
        readings(&client, "sma-btc")
            .await
            .and_then(|(_, orders)| orders.parse::<u64>().ok())
            .is_some_and(|n| n > orders_before)
    })
    .await;
    wait_for("recent orders listed", || async {
        !texts(&client, "[data-profile] table.orders td")
            .await
            .is_empty()
    })
    .await;
    let loops = texts(&client, "[data-profile] tr[data-loop]").await;
    assert!(
        loops
            .iter()
            .any(|l| l.starts_with("trading") && l.contains("ok")),
        "{loops:?}"
    );
    let same_page = client
        .execute("return window.keelNoReload === 1", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, true, "the page was reloaded");

    // A reload without the fragment connects again with the token from session storage.
    client.goto(url.split('#').next().unwrap()).await.unwrap();
    wait_for("the profiles after a reload", || async {
        profile_names(&client).await == DEMO_PROFILES
    })
    .await;

    client.close().await.unwrap();
    driver.kill().await.unwrap();
    demo.kill().await.unwrap();
}
