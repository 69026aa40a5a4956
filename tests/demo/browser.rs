//! The dashboard in Debian's Chromium, driven over WebDriver (chromedriver + fantoccini),
//! against a real `keel demo` process, through a scripted scenario — trading, a hot-swap, a
//! pause, a restart — with a screenshot at each moment, checked by what the page shows (its DOM)
//! and by the pixels of its price chart.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::demo_keys;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Bound on every wait, for a shared and busy machine.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(120);
/// Bound on the wait for the demo's first short trade.
const MARKERS_WAIT_MAX: Duration = Duration::from_secs(600);
const DEMO_PROFILES: [&str; 3] = ["rsi-eth", "sma-btc", "sma-eth-long-short"];
/// A profile made through the demo's API whose risk limits name both symbols of the demo's
/// market: it runs on both, and its card draws a price chart for each.
const TWO_SYMBOLS: &str = "sma-btc-eth";
const TWO_SYMBOLS_TRADED: [&str; 2] = ["BTCUSDT", "ETHUSDT"];

fn repo_root() -> PathBuf {
    keel_testkit::repo_root()
}

/// Starts `keel demo` on `port` (0: a free one) and returns it with the dashboard URL it prints.
pub(crate) async fn start_demo(data_dir: &Path, port: u16) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("demo")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--port", &port.to_string(), "--speed-ms", "50"])
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

/// Stops a demo as Ctrl-C does and waits for it to exit cleanly.
pub(crate) async fn interrupt(demo: &mut Child) {
    let pid = demo.id().expect("the demo runs").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT_MAX, demo.wait())
        .await
        .expect("the demo stops after SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// A chromedriver on a free port.
pub(crate) async fn start_chromedriver() -> (Child, u16) {
    let port = keel_testkit::free_port();
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

pub(crate) async fn browser(port: u16, profile_dir: &Path) -> Client {
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
        "--window-size=1400,1800".to_owned(),
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
pub(crate) async fn wait_for<F, Fut>(what: &str, condition: F)
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

/// The text of the first element matching `css` inside the card of profile `name`.
pub(crate) async fn card_text(client: &Client, name: &str, css: &str) -> Option<String> {
    let script = r#"
        const card = [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        const el = card && card.querySelector(arguments[1]);
        return el ? el.textContent : null;
    "#;
    let value = client
        .execute(
            script,
            vec![serde_json::json!(name), serde_json::json!(css)],
        )
        .await
        .unwrap();
    value.as_str().map(str::to_owned)
}

/// Saves a screenshot of the page under the test's scratch directory and checks it is a PNG
/// of the window's size; returns its path.
pub(crate) async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(width >= 800 && height >= 600, "{name}: {width}x{height}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, &png).unwrap();
    path
}

/// Pixels of the price chart of `symbol` on the card of profile `name`, counted by colour: the
/// price line, long markers, short markers, and anything not white.
#[derive(Debug, Default)]
struct ChartPixels {
    price: u64,
    long: u64,
    short: u64,
    painted: u64,
}

async fn chart_pixels(client: &Client, name: &str, symbol: &str) -> ChartPixels {
    let script = r#"
        const card = [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        const canvas = card && card.querySelector(`.price-symbol[data-symbol="${arguments[1]}"] .price-chart canvas`);
        if (!canvas || !canvas.width) return { price: 0, long: 0, short: 0, painted: 0 };
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const near = (i, [r, g, b]) => Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24
            && Math.abs(data[i + 2] - b) < 24 && data[i + 3] > 200;
        const counts = { price: 0, long: 0, short: 0, painted: 0 };
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] > 0 && !(data[i] > 240 && data[i + 1] > 240 && data[i + 2] > 240)) counts.painted++;
            if (near(i, [37, 99, 235])) counts.price++;
            if (near(i, [22, 163, 74])) counts.long++;
            if (near(i, [220, 38, 38])) counts.short++;
        }
        return counts;
    "#;
    let value = client
        .execute(
            script,
            vec![serde_json::json!(name), serde_json::json!(symbol)],
        )
        .await
        .unwrap();
    let count = |key: &str| value[key].as_u64().unwrap_or(0);
    ChartPixels {
        price: count("price"),
        long: count("long"),
        short: count("short"),
        painted: count("painted"),
    }
}

/// The price charts on the card of profile `name`, in order: each one's symbol and the last
/// price in its title.
async fn price_charts(client: &Client, name: &str) -> Vec<(String, String)> {
    let script = r#"
        const card = [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        if (!card) return [];
        return [...card.querySelectorAll('.price-symbol')].map((chart) => [
            chart.dataset.symbol, chart.querySelector('.symbol-last').textContent]);
    "#;
    let value = client
        .execute(script, vec![serde_json::json!(name)])
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// The symbols of the orders listed on the card of profile `name`.
async fn order_symbols(client: &Client, name: &str) -> std::collections::BTreeSet<String> {
    let script = r#"
        const card = [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        if (!card) return [];
        return [...card.querySelectorAll('table.orders .order-symbol')].map((s) => s.textContent);
    "#;
    let value = client
        .execute(script, vec![serde_json::json!(name)])
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// Scrolls the card of profile `name` into view (`None`: back to the top of the page).
async fn scroll_to(client: &Client, name: Option<&str>) {
    let script = r#"
        const card = arguments[0] === null ? null : [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        if (card) card.scrollIntoView(); else window.scrollTo(0, 0);
        return 1;
    "#;
    client
        .execute(script, vec![serde_json::json!(name)])
        .await
        .unwrap();
}

/// The order ids and statuses listed on the card of profile `name`, and its fill prices.
async fn order_rows(client: &Client, name: &str) -> Vec<(String, String, String)> {
    let script = r#"
        const card = [...document.querySelectorAll('[data-profile]')]
            .find((c) => c.querySelector('.name').textContent === arguments[0]);
        if (!card) return [];
        return [...card.querySelectorAll('table.orders tr[data-order]')].map((r) => [
            r.querySelector('.order-id').textContent, r.querySelector('.order-status').textContent,
            r.querySelector('.fill-price').textContent]);
    "#;
    let value = client
        .execute(script, vec![serde_json::json!(name)])
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
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

/// Clicks the element matching `css` as a person does: WebDriver scrolls it into view, moves
/// the pointer onto it, presses and releases. A page that replaces the element between the two
/// (a re-render) fails here, as it would fail its user.
async fn click(client: &Client, css: &str) {
    let element = client
        .wait()
        .at_most(WAIT_MAX)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    element
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// The status badge of every profile card, sorted by profile name.
async fn statuses(client: &Client) -> Vec<(String, String)> {
    let script = r#"
        return [...document.querySelectorAll('[data-profile]')]
            .map((c) => [c.querySelector('.name').textContent, c.querySelector('.status').textContent]);
    "#;
    let value = client.execute(script, vec![]).await.unwrap();
    let mut pairs: Vec<(String, String)> = serde_json::from_value(value).unwrap();
    pairs.sort();
    pairs
}

/// The API at `base`, as the holder of `token`.
struct UserApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl UserApi {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> serde_json::Value {
        let mut request = self
            .client
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", content_type);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: serde_json::Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// Creates a profile through the API with risk limits allowing `symbols`, allocates it the
    /// demo profiles' capital, and waits until the demo runs it. Returns its id.
    async fn create_running_profile(&self, name: &str, symbols: &[&str]) -> String {
        let limits = serde_json::json!({
            "symbols_allowed": symbols,
            "entry_notional_max": "1000",
            "positions_open_max": 3,
            "leverage_max": "1",
            "limit_price_band_bps": 500,
            "intents_per_minute_max": 600,
            "daily_loss_max": "500",
        });
        let body = serde_json::json!({"name": name, "risk_limits": limits});
        let created = self
            .send(
                reqwest::Method::POST,
                "/profiles",
                Some(body.to_string().into()),
                "application/json",
            )
            .await;
        let id = created["profile_id"].as_str().unwrap().to_owned();
        let amount = serde_json::json!({"amount": "10000"});
        self.send(
            reqwest::Method::POST,
            &format!("/profiles/{id}/allocations"),
            Some(amount.to_string().into()),
            "application/json",
        )
        .await;
        wait_for(
            "the demo to run the profile made through the API",
            || async {
                let profile = self
                    .send(
                        reqwest::Method::GET,
                        &format!("/profiles/{id}"),
                        None,
                        "application/json",
                    )
                    .await;
                profile["running"] == true
            },
        )
        .await;
        id
    }

    /// The price of the newest order of profile `id` on `symbol`.
    async fn last_order_price(&self, id: &str, symbol: &str) -> f64 {
        let orders = self
            .send(
                reqwest::Method::GET,
                &format!("/profiles/{id}/orders?limit=500"),
                None,
                "application/json",
            )
            .await;
        let newest = orders
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["symbol"] == symbol)
            .unwrap_or_else(|| panic!("no {symbol} order in {orders}"));
        newest["price"].as_str().unwrap().parse().unwrap()
    }

    async fn profile_id(&self, name: &str) -> String {
        let profiles = self
            .send(reqwest::Method::GET, "/profiles", None, "application/json")
            .await;
        profiles
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["profile_id"].as_str())
            .unwrap_or_else(|| panic!("no profile {name} in {profiles}"))
            .to_owned()
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_demo_live_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    let profile_dir = tempfile::tempdir().unwrap();
    // A fixed port: the page reconnects to the same address after the restart.
    let demo_port = keel_testkit::free_port();
    let (mut demo, url) = start_demo(data.path(), demo_port).await;
    assert!(url.contains("/#token="), "{url}");
    let (base, token) = url.split_once("/#token=").unwrap();
    let api = UserApi {
        base: base.to_owned(),
        token: token.to_owned(),
        client: reqwest::Client::new(),
    };
    // Made before the page loads: the page learns of profiles from its snapshot.
    let two_symbols = api
        .create_running_profile(TWO_SYMBOLS, &TWO_SYMBOLS_TRADED)
        .await;
    let mut all_profiles: Vec<&str> = DEMO_PROFILES.to_vec();
    all_profiles.push(TWO_SYMBOLS);
    all_profiles.sort();
    let (mut driver, port) = start_chromedriver().await;
    let client = browser(port, profile_dir.path()).await;

    client.goto(&url).await.unwrap();
    wait_for(
        "the demo's profiles and the one made through the API",
        || async { profile_names(&client).await == all_profiles },
    )
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
    let plugins = texts(&client, "[data-profile] .plugin").await;
    assert!(
        plugins
            .iter()
            .any(|m| m.starts_with("sma_cross.wasm · version ")),
        "{plugins:?}"
    );
    wait_for("capital on every card", || async {
        let allocated = texts(&client, "[data-profile] .allocated").await;
        allocated.len() == all_profiles.len() && allocated.iter().all(|a| a.starts_with("10,000"))
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

    // 1. Trading: the long-short profile's chart carries its price and markers of both sides;
    // its orders are listed by decision, each once, with their fill prices.
    // The first short comes after a few hundred candles of the demo's market: minutes on a
    // loaded machine.
    keel_testkit::wait_for(
        "long and short markers on the sma-eth-long-short chart",
        MARKERS_WAIT_MAX,
        || async {
            let pixels = chart_pixels(&client, "sma-eth-long-short", "ETHUSDT").await;
            // Not blank (axes, grid, line), the price line drawn, and both sides' markers.
            pixels.painted > 1_000 && pixels.price > 50 && pixels.long > 20 && pixels.short > 20
        },
    )
    .await;
    let rows = order_rows(&client, "sma-eth-long-short").await;
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "one row per order: {rows:?}");
    assert!(
        ids.iter().all(
            |id| (id.starts_with('E') || id.starts_with('X')) && id[1..].parse::<u64>().is_ok()
        ),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(_, status, fill)| status == "FILLED" && fill != "–"),
        "a filled order shows its fill price: {rows:?}"
    );
    let loops = texts(&client, "[data-profile] tr[data-loop]").await;
    assert!(
        loops
            .iter()
            .any(|l| l.starts_with("trading") && l.contains("ok")),
        "{loops:?}"
    );
    screenshot(&client, "1-trading").await;

    // The profile of two symbols: a price chart for each, in the order of its symbols, each with
    // its own price line and its own fills (long-only: no short marker), titled with a last
    // price of its own symbol; its orders name both symbols.
    assert_eq!(
        price_charts(&client, "sma-eth-long-short").await.len(),
        1,
        "a profile of one symbol has one price chart"
    );
    keel_testkit::wait_for(
        "a price line and long markers on both charts of the two-symbol profile",
        MARKERS_WAIT_MAX,
        || async {
            let mut ready = true;
            for symbol in TWO_SYMBOLS_TRADED {
                let pixels = chart_pixels(&client, TWO_SYMBOLS, symbol).await;
                ready &= pixels.painted > 1_000 && pixels.price > 50 && pixels.long > 20;
            }
            ready
        },
    )
    .await;
    for symbol in TWO_SYMBOLS_TRADED {
        let pixels = chart_pixels(&client, TWO_SYMBOLS, symbol).await;
        assert_eq!(pixels.short, 0, "{symbol}: a long-only profile: {pixels:?}");
    }
    let charts = price_charts(&client, TWO_SYMBOLS).await;
    let symbols: Vec<&str> = charts.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(symbols, TWO_SYMBOLS_TRADED, "{charts:?}");
    for (symbol, last) in &charts {
        // The title's price is its own symbol's: near the profile's newest order on it (the
        // demo's BTC and ETH prices are far apart).
        let last: f64 = last.replace(',', "").parse().unwrap_or(f64::NAN);
        let ordered = api.last_order_price(&two_symbols, symbol).await;
        assert!(
            (last / ordered - 1.0).abs() < 0.1,
            "{symbol}: chart's last price {last}, newest order at {ordered}"
        );
    }
    wait_for("orders of both symbols on the two-symbol card", || async {
        let seen = order_symbols(&client, TWO_SYMBOLS).await;
        seen.iter().map(String::as_str).eq(TWO_SYMBOLS_TRADED)
    })
    .await;
    scroll_to(&client, Some(TWO_SYMBOLS)).await;
    screenshot(&client, "1-two-symbols").await;
    scroll_to(&client, None).await;

    // 2. Hot-swap: the card names the new plugin and version without a reload.
    let wasm = std::fs::read(
        repo_root().join("plugins-example/target/wasm32-wasip2/release/rsi_reversion.wasm"),
    )
    .unwrap();
    let uploaded = api
        .send(
            reqwest::Method::POST,
            "/plugins?name=rsi-swapped",
            Some(wasm.into()),
            "application/wasm",
        )
        .await;
    let sma_btc = api.profile_id("sma-btc").await;
    let config = serde_json::json!({
        "plugin_id": uploaded["plugin_id"],
        "config": {"period": "6", "oversold": "40", "overbought": "60", "size_fraction": "0.05"},
    });
    let bound = api
        .send(
            reqwest::Method::PUT,
            &format!("/profiles/{sma_btc}/plugin"),
            Some(config.to_string().into()),
            "application/json",
        )
        .await;
    assert_eq!(bound["swap"], "queued", "{bound}");
    let sha256 = uploaded["sha256"].as_str().unwrap();
    let swapped = format!("rsi-swapped · version {}", &sha256[..12]);
    wait_for("the card to show the swapped plugin", || async {
        card_text(&client, "sma-btc", ".plugin").await.as_deref() == Some(swapped.as_str())
    })
    .await;
    let since = card_text(&client, "sma-btc", ".plugin-since").await;
    assert!(since.is_some_and(|s| s.contains("swapped in")));
    screenshot(&client, "2-hot-swap").await;

    // 3. Pause: the badge says so.
    api.send(
        reqwest::Method::POST,
        &format!("/profiles/{sma_btc}/pause"),
        None,
        "application/json",
    )
    .await;
    wait_for("the paused badge", || async {
        card_text(&client, "sma-btc", ".status").await.as_deref() == Some("paused")
    })
    .await;
    let same_page = client
        .execute("return window.keelNoReload === 1", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, true, "the page was reloaded");
    screenshot(&client, "3-paused").await;

    // 4. Restart: the open page reconnects by itself, and shows the history from before, the
    // bound plugin under its own name, and the pause.
    let before = api
        .send(
            reqwest::Method::GET,
            &format!(
                "/profiles/{}/orders?limit=500",
                api.profile_id("sma-eth-long-short").await
            ),
            None,
            "application/json",
        )
        .await;
    let stored_orders = before.as_array().unwrap().len();
    assert!(stored_orders >= 2, "{before}");
    interrupt(&mut demo).await;
    wait_for("the page to see the host gone", || async {
        texts(&client, "#conn-status")
            .await
            .iter()
            .any(|s| s.starts_with("disconnected"))
    })
    .await;
    let (mut demo, _) = start_demo(data.path(), demo_port).await;
    wait_for("the page to reconnect", || async {
        texts(&client, "#conn-status").await == ["live"]
    })
    .await;
    wait_for("the orders from before the restart", || async {
        order_rows(&client, "sma-eth-long-short").await.len() >= stored_orders.min(12)
    })
    .await;
    assert_eq!(
        card_text(&client, "sma-btc", ".plugin").await.as_deref(),
        Some(swapped.as_str())
    );
    assert_eq!(
        card_text(&client, "sma-btc", ".status").await.as_deref(),
        Some("paused")
    );
    wait_for("the markers from before the restart", || async {
        let pixels = chart_pixels(&client, "sma-eth-long-short", "ETHUSDT").await;
        pixels.long > 20 && pixels.short > 20
    })
    .await;
    wait_for(
        "both charts of the two-symbol profile after the restart",
        || async {
            let mut ready = price_charts(&client, TWO_SYMBOLS).await.len() == 2;
            for symbol in TWO_SYMBOLS_TRADED {
                ready &= chart_pixels(&client, TWO_SYMBOLS, symbol).await.long > 20;
            }
            ready
        },
    )
    .await;
    let same_page = client
        .execute("return window.keelNoReload === 1", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, true, "the page was reloaded");
    screenshot(&client, "4-restarted").await;

    // A reload without the fragment connects again with the token from session storage.
    client.goto(url.split('#').next().unwrap()).await.unwrap();
    wait_for("the profiles after a reload", || async {
        profile_names(&client).await == all_profiles
    })
    .await;

    // The operator's view: the host's loops with states and ages computed by the host.
    let keys = demo_keys(data.path());
    let operator = keys.mint(
        keel_kernel::ids::UserId::new_random(),
        true,
        chrono::Utc::now().timestamp(),
        600,
    );
    // A new fragment alone does not load the page again: leave it first.
    client.goto("about:blank").await.unwrap();
    client
        .goto(&format!("{base}/#token={operator}"))
        .await
        .unwrap();
    wait_for("the operator's host button", || async {
        client
            .execute(
                "const b = document.getElementById('host-toggle'); \
                 if (b.hidden) return false; if (!window.asked) { window.asked = 1; b.click(); } return true",
                vec![],
            )
            .await
            .unwrap()
            == true
    })
    .await;
    wait_for("every host loop ok, its last run recent", || async {
        let rows = texts(&client, "#host tr[data-host-loop]").await;
        rows.len() == 3
            && rows
                .iter()
                .all(|r| r.contains("\tok\t") && (r.contains("just now") || r.contains(" s ago")))
    })
    .await;
    screenshot(&client, "5-operator").await;

    client.close().await.unwrap();
    driver.kill().await.unwrap();
    interrupt(&mut demo).await;
}

/// The operator's side of the page, clicked as a person clicks: the host-wide kill switch goes
/// on, the API and every profile card agree that entries are blocked, and a second click
/// releases it.
#[tokio::test]
async fn an_operator_switches_the_host_kill_switch_with_a_click() {
    let data = tempfile::tempdir().unwrap();
    let profile_dir = tempfile::tempdir().unwrap();
    let (mut demo, url) = start_demo(data.path(), 0).await;
    let (base, user_token) = url.split_once("/#token=").unwrap();
    // The demo's user with the operator role: the page shows its profiles and the host.
    let keys = demo_keys(data.path());
    let user = keys.verify(user_token).expect("the demo's token").user;
    let token = keys.mint(user, true, chrono::Utc::now().timestamp(), 600);
    let api = UserApi {
        base: base.to_owned(),
        token: token.clone(),
        client: reqwest::Client::new(),
    };
    let host_kill = || async {
        api.send(
            reqwest::Method::GET,
            "/operator/kill",
            None,
            "application/json",
        )
        .await["engaged"]
            .as_bool()
            .expect("the switch's state")
    };
    let (mut driver, port) = start_chromedriver().await;
    let client = browser(port, profile_dir.path()).await;
    client
        .goto(&format!("{base}/#token={token}"))
        .await
        .unwrap();
    wait_for("the three demo profiles running", || async {
        let seen = statuses(&client).await;
        seen.len() == DEMO_PROFILES.len() && seen.iter().all(|(_, s)| s == "running")
    })
    .await;
    assert!(!host_kill().await, "the demo starts with the switch off");

    click(&client, "#host-toggle").await;
    wait_for("the host view with the switch off", || async {
        texts(&client, "#host .host-kill").await == ["off"]
    })
    .await;

    // On: the page, the API and every profile's entries.
    click(&client, "#host-kill-toggle").await;
    wait_for("the page to show the switch on", || async {
        texts(&client, "#host .host-kill").await == ["ON"]
    })
    .await;
    assert!(host_kill().await, "the API reports the switch on");
    wait_for("every card to show its entries blocked", || async {
        let seen = statuses(&client).await;
        seen.len() == DEMO_PROFILES.len()
            && seen
                .iter()
                .all(|(_, s)| s == "entries blocked: host kill switch")
    })
    .await;
    screenshot(&client, "operator-kill-on").await;

    // Off again: the page, the API, and the profiles run as before.
    click(&client, "#host-kill-toggle").await;
    wait_for("the page to show the switch off", || async {
        texts(&client, "#host .host-kill").await == ["off"]
    })
    .await;
    assert!(!host_kill().await, "the API reports the switch off");
    wait_for("every card running again", || async {
        statuses(&client).await.iter().all(|(_, s)| s == "running")
    })
    .await;
    screenshot(&client, "operator-kill-off").await;

    client.close().await.unwrap();
    driver.kill().await.unwrap();
    interrupt(&mut demo).await;
}
