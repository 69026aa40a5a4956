//! The adversarial plugin, uploaded and bound through the API of a live `keel demo` one
//! misbehaviour after another, beside two profiles that keep trading: a bind whose `init`
//! misbehaves is refused with its fault and changes nothing, each misbehaviour on `on-candle`
//! ends in its typed fault on the profile (or answers, for the legal ones), the demo keeps
//! serving, and the neighbours decide every candle of the market throughout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use super::{Demo, repo_root, wait_for};

/// The demo profile the hostile plugin is bound to; the two others are its neighbours.
const TARGET: &str = "rsi-eth";

/// Each misbehaviour in `init` and what the bind answers: 200, or 422 naming the fault.
const IN_INIT: &[(&str, u16, &str)] = &[
    ("println-in-init", 200, ""),
    ("panic-in-init", 422, "trap"),
    ("sleep-forever-in-init", 422, "deadline exceeded"),
];

/// Each misbehaviour in `on-candle` and the kind of fault it ends in (`None`: its calls answer).
/// Faulting and answering ones alternate, so each swap shows in the profile's state.
const ON_CANDLE: &[(&str, Option<&str>)] = &[
    ("panic-message", Some("trap")),
    ("eprintln", None),
    ("sleep", Some("deadline")),
    ("udp-socket", None),
    ("poll", Some("deadline")),
    ("tcp-socket", None),
    ("panic", Some("trap")),
    ("slow-legal", None),
    ("intent-flood", Some("invalid_output")),
    ("busy-legal", None),
];

/// One request as the profiles' owner: its status and JSON answer.
async fn send(
    demo: &Demo,
    token: &str,
    request: reqwest::RequestBuilder,
    what: &str,
) -> (u16, Value) {
    let response = tokio::time::timeout(Duration::from_secs(60), request.bearer_auth(token).send())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 60 s from {}", demo.base))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The profile's `health` as its owner reads it.
async fn health_of(demo: &Demo, token: &str, profile: &str) -> Value {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/profiles/{profile}", demo.base);
    let (status, view) = send(demo, token, client.get(url), "GET the profile").await;
    assert_eq!(status, 200, "{view}");
    view["health"].clone()
}

/// Records the open time of every candle each profile decided on, from the live feed.
fn follow_candles(demo: &Demo, token: &str) -> Arc<Mutex<BTreeMap<String, Vec<i64>>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<i64>>::new()));
    let url = format!(
        "{}/api/v1/ws?access_token={token}",
        demo.base.replacen("http://", "ws://", 1)
    );
    let record = seen.clone();
    tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        while let Some(Ok(message)) = ws.next().await {
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if event["type"] == "candle" {
                let profile = event["profile"].as_str().unwrap().to_owned();
                let open = event["open_time_ms"].as_i64().unwrap();
                record
                    .lock()
                    .unwrap()
                    .entry(profile)
                    .or_default()
                    .push(open);
            }
        }
    });
    seen
}

#[tokio::test]
async fn hostile_plugins_bound_live_never_stop_the_demo_or_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Demo::command_at(dir.path(), 100);
    command
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::inherit());
    let demo = Demo::spawn(command, dir.path()).await;
    demo.wait_ready().await;
    let token = demo.owner_token();
    let profiles: BTreeMap<String, String> = demo.profiles().into_iter().collect();
    let target = profiles[TARGET].clone();
    let neighbours: Vec<String> = profiles
        .iter()
        .filter(|(name, _)| name.as_str() != TARGET)
        .map(|(_, id)| id.clone())
        .collect();
    let candles = follow_candles(&demo, &token);
    wait_for("the neighbours' first candles on the live feed", || async {
        let seen = candles.lock().unwrap();
        neighbours
            .iter()
            .all(|n| seen.get(n).is_some_and(|c| c.len() >= 3))
    })
    .await;

    let client = reqwest::Client::new();
    let wasm = std::fs::read(
        repo_root().join("plugins-example/target/wasm32-wasip2/release/hostile.wasm"),
    )
    .unwrap();
    let upload = client
        .post(format!("{}/api/v1/plugins?name=hostile", demo.base))
        .header("Content-Type", "application/wasm")
        .body(wasm);
    let (status, uploaded) = send(&demo, &token, upload, "upload").await;
    assert!(status == 200 || status == 201, "{status}: {uploaded}");
    let plugin_id = uploaded["plugin_id"].as_str().unwrap().to_owned();
    let bind = |attack: &str| {
        client
            .put(format!("{}/api/v1/profiles/{target}/plugin", demo.base))
            .json(&json!({"plugin_id": plugin_id, "config": {"attack": attack}}))
    };

    for (attack, status, fault) in IN_INIT {
        let (answered, body) = send(&demo, &token, bind(attack), attack).await;
        assert_eq!(answered, *status, "{attack}: {body}");
        assert!(body.to_string().contains(fault), "{attack}: {body}");
    }
    let (_, binding) = send(
        &demo,
        &token,
        client.get(format!("{}/api/v1/profiles/{target}/plugin", demo.base)),
        "GET the binding",
    )
    .await;
    assert!(
        binding.to_string().contains("println-in-init"),
        "a refused bind leaves the last accepted one: {binding}"
    );

    for (attack, fault) in ON_CANDLE {
        let (status, body) = send(&demo, &token, bind(attack), attack).await;
        assert_eq!(status, 200, "{attack}: {body}");
        match fault {
            Some(kind) => {
                wait_for(&format!("{attack} to fault with {kind}"), || async {
                    let health = health_of(&demo, &token, &target).await;
                    health["state"] == "faulted" && health["plugin_fault"]["kind"] == *kind
                })
                .await
            }
            None => {
                wait_for(&format!("{attack}'s calls to answer"), || async {
                    health_of(&demo, &token, &target).await["state"] == "ok"
                })
                .await
            }
        }
    }
    assert_eq!(demo.get("/livez").await.0, 200);

    let seen = candles.lock().unwrap().clone();
    for neighbour in &neighbours {
        let opens = &seen[neighbour];
        let gaps: Vec<_> = opens
            .windows(2)
            .filter(|w| w[1] - w[0] != keel_host::demo::CANDLE_MS)
            .collect();
        assert!(
            gaps.is_empty(),
            "neighbour {neighbour} missed or repeated candles: {gaps:?} of {}",
            opens.len()
        );
        let health = health_of(&demo, &token, neighbour).await;
        assert_eq!(health["state"], "ok", "{health}");
        assert!(health["plugin_fault"].is_null(), "{health}");
    }
    let (status, _) = demo.stop("TERM").await;
    assert!(status.success(), "the demo stops cleanly: {status}");
}
