//! The README's five-minute tour, run command by command as a reader would, against a real
//! `keel demo`: the commands are read from README.md's tour section, so the README cannot drift
//! from what works. Only the port, the scratch directory, the `keel` alias (the binary under
//! test instead of `cargo run`) and the two ids the reader copies from earlier answers are
//! substituted.

use std::time::Duration;

use futures::StreamExt as _;

use crate::browser;

/// The tour's section of README.md.
const TOUR_HEADING: &str = "## A five-minute tour";
/// The alias the README defines, replaced by a function running the binary under test.
const KEEL_ALIAS: &str = "alias keel='cargo run -q --release --'";
/// The address the README assumes the demo listens on.
const README_BASE: &str = "http://127.0.0.1:8080";
/// Bound on one command (the scaffold's first build compiles its dependencies).
const COMMAND_MAX: Duration = Duration::from_secs(900);

/// The shell commands of the tour's first `sh` block: continuation lines joined, a here-document
/// kept with its command, comment-only lines dropped.
fn tour_commands(readme: &str) -> Vec<String> {
    let section = keel_testkit::readme::section(readme, TOUR_HEADING);
    let block = keel_testkit::readme::sh_blocks(section)
        .into_iter()
        .next()
        .expect("the tour has a sh block");
    keel_testkit::readme::commands(block)
}

/// Whether `command` only sets shell variables (`A=1; B="x y"`), kept for the commands after
/// it; `A=1 cmd` runs a command.
fn sets_variables_only(command: &str) -> bool {
    command.split(';').all(|part| {
        let part = part.trim();
        part.split_once('=').is_some_and(|(name, value)| {
            let quoted = value.len() >= 2
                && (value.starts_with('"') && value.ends_with('"')
                    || value.starts_with('\'') && value.ends_with('\''));
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && (quoted || !value.contains(char::is_whitespace))
        })
    })
}

/// Runs `command` in bash after `prelude`, with the environment a reader of the tour has.
async fn run(prelude: &[String], command: &str, token: &str) -> String {
    let script = format!("set -euo pipefail\n{}\n{command}\n", prelude.join("\n"));
    let output = tokio::time::timeout(
        COMMAND_MAX,
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("TOKEN", token)
            // The scaffold's dependencies come from the local registry cache.
            .env("CARGO_NET_OFFLINE", "true")
            // The tour's path to the built component assumes cargo's default target directory.
            .env_remove("CARGO_TARGET_DIR")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{command}: still running after {COMMAND_MAX:?}"))
    .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command}\nexit {:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json(command: &str, stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {stdout}"))
}

/// The first profile of the WebSocket snapshot named `name`.
async fn snapshot_profile(base: &str, token: &str, name: &str) -> serde_json::Value {
    let url = format!(
        "{}/api/v1/ws?access_token={token}",
        base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let message = tokio::time::timeout(browser::WAIT_MAX, ws.next())
        .await
        .expect("a snapshot")
        .expect("the socket stays open")
        .unwrap();
    let snapshot: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    snapshot["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {snapshot}"))
}

#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let readme = std::fs::read_to_string(keel_testkit::repo_root().join("README.md")).unwrap();
    let commands = tour_commands(&readme);
    assert!(commands.len() >= 8, "{commands:#?}");
    assert_eq!(
        commands[0], KEEL_ALIAS,
        "the tour starts with the alias this test replaces"
    );

    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (mut demo, url) = browser::start_demo(data.path(), 0).await;
    let (base, token) = url
        .split_once("/#token=")
        .expect("a dashboard URL with a token");
    let scratch_dir = scratch.path().display().to_string();
    let keel = env!("CARGO_BIN_EXE_keel");
    let mut prelude = vec![format!("keel() {{ '{keel}' \"$@\"; }}")];
    let mut plugin: Option<serde_json::Value> = None;
    let mut profile_id: Option<String> = None;
    let mut steps = Vec::new();

    for command in &commands[1..] {
        let mut command = command
            .replace("/tmp", &scratch_dir)
            .replace(README_BASE, base);
        if let Some(plugin) = &plugin {
            command = command.replace("PLUGIN_ID", plugin["plugin_id"].as_str().unwrap());
        }
        if let Some(profile) = &profile_id {
            command = command.replace("PROFILE_ID", profile);
        }
        if sets_variables_only(&command) {
            prelude.push(command);
            continue;
        }
        let stdout = run(&prelude, &command, token).await;
        if command.contains("keel plugin new") {
            steps.push("scaffold");
            assert!(scratch.path().join("my-strategy/Cargo.toml").is_file());
        } else if command.contains("cargo build") {
            steps.push("build");
        } else if command.contains("keel plugin check") {
            steps.push("check");
        } else if command.contains("keel backtest") {
            steps.push("backtest");
            assert!(stdout.contains("total return"), "{stdout}");
            let plot = std::fs::read_to_string(scratch.path().join("bt.svg"))
                .expect("the backtest wrote its plot");
            assert!(plot.contains("<svg"), "{plot:.200}");
        } else if command.contains("/plugins?name=") {
            steps.push("upload");
            let uploaded = json(&command, &stdout);
            assert!(uploaded["plugin_id"].is_string(), "{uploaded}");
            plugin = Some(uploaded);
        } else if command.contains("-X PUT") {
            steps.push("bind");
            let bound = json(&command, &stdout);
            assert_eq!(bound["swap"], "queued", "{bound}");
        } else if command.contains("/profiles") {
            steps.push("list");
            let profiles = json(&command, &stdout);
            let chosen = profiles
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "sma-btc" && p["running"] == true)
                .unwrap_or_else(|| panic!("no running sma-btc in {profiles}"));
            assert_eq!(
                chosen["running_plugin"]["name"], "sma_cross.wasm",
                "{chosen}"
            );
            profile_id = Some(chosen["profile_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        steps,
        [
            "scaffold", "build", "check", "backtest", "upload", "list", "bind"
        ],
        "the tour's steps, in order"
    );

    // 6. The new plugin runs: the API, a new WebSocket snapshot and the dashboard say so.
    let plugin = plugin.unwrap();
    let sha256 = plugin["sha256"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    browser::wait_for("the API to report the bound plugin running", || async {
        let profiles: serde_json::Value = client
            .get(format!("{base}/api/v1/profiles"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        profiles.as_array().unwrap().iter().any(|p| {
            p["name"] == "sma-btc"
                && p["running_plugin"]["name"] == "mine"
                && p["running_plugin"]["sha256"] == sha256.as_str()
        })
    })
    .await;
    // The API reads the swap as the loop takes it; the live feed publishes it once that step
    // ends: a snapshot taken in between still names the old plugin.
    browser::wait_for("a live snapshot to name the bound plugin", || async {
        snapshot_profile(base, token, "sma-btc").await["plugin"] == "mine"
    })
    .await;
    let snapshot = snapshot_profile(base, token, "sma-btc").await;
    assert_eq!(snapshot["plugin"], "mine", "{snapshot}");
    assert_eq!(snapshot["plugin_version"], sha256.as_str(), "{snapshot}");

    let profile_dir = tempfile::tempdir().unwrap();
    let (mut driver, port) = browser::start_chromedriver().await;
    let chromium = browser::browser(port, profile_dir.path()).await;
    chromium.goto(&url).await.unwrap();
    let expected = format!("mine · version {}", &sha256[..12]);
    browser::wait_for("the dashboard to show the bound plugin", || async {
        browser::card_text(&chromium, "sma-btc", ".plugin")
            .await
            .is_some_and(|text| text == expected)
    })
    .await;
    browser::screenshot(&chromium, "tour-bound").await;
    chromium.close().await.unwrap();
    driver.kill().await.unwrap();
    browser::interrupt(&mut demo).await;
}

#[test]
fn the_tour_is_read_as_whole_commands() {
    let readme = "intro\n## A five-minute tour\n\n```sh\nalias k='x'\n# a comment\nA=1; B=\"$A\"\n\
                  cat > f <<'PY'   # a note\nline \\\nPY\nk a \\\n  b\n```\nafter\n```sh\nnot this\n```\n";
    let commands = tour_commands(readme);
    assert_eq!(
        commands,
        [
            "alias k='x'",
            "A=1; B=\"$A\"",
            "cat > f <<'PY'   # a note\nline \\\nPY",
            "k a \\\n  b",
        ]
    );
    assert!(sets_variables_only(&commands[1]));
    assert!(!sets_variables_only(&commands[3]));
    assert!(!sets_variables_only("W=1 keel check"));
}
