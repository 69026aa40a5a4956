//! A panic on a profile's path, outside any plugin call, faults that profile and never the
//! process: the demo keeps serving, the fault is counted and shown (health, the profile's API),
//! and a profile whose start keeps failing is left stopped rather than restarted without end.

use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use super::{Demo, sample, wait_for};

impl Demo {
    /// Starts the demo with a crash point armed (`KEEL_CRASH_POINT`).
    async fn start_with_crash_point(data_dir: &std::path::Path, point: &str) -> Demo {
        let mut command: Command = Demo::command(data_dir);
        command
            .env("RUST_LOG", "warn")
            .env("KEEL_CRASH_POINT", point)
            .stderr(std::process::Stdio::inherit());
        Demo::spawn(command, data_dir).await
    }

    /// The health document, anonymous or as an operator.
    async fn health(&self, operator: bool) -> (u16, Value) {
        let (status, body) = if operator {
            self.get_as("/internal/health", &self.token(true)).await
        } else {
            self.get("/internal/health").await
        };
        (status, serde_json::from_str(&body).unwrap())
    }
}

#[tokio::test]
async fn a_panic_before_a_submit_faults_that_profile_and_the_demo_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // Every submit panics, after the write-ahead committed: a bug on the decision path.
    let demo = Demo::start_with_crash_point(dir.path(), "panic:before_submit").await;
    demo.wait_ready().await;
    wait_for("a profile's loops to fault", || async {
        demo.metric("keel_profile_faults_total{kind=\"panic\"}")
            .await
            >= 1.0
    })
    .await;
    let (status, health) = demo.health(false).await;
    assert_eq!(status, 200, "degraded is not down: {health:#}");
    assert_eq!(health["status"], "degraded", "{health:#}");
    assert!(
        health["profile_counts"]["faulted"].as_u64().unwrap() >= 1,
        "{health:#}"
    );
    assert!(
        health["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("profile(s) faulted")),
        "{health:#}"
    );
    assert_eq!(demo.get("/livez").await, (200, "ok".to_owned()));

    // The owner reads the fault on the profile; the operator reads it in the health detail.
    let token = demo.owner_token();
    let mut faulted = None;
    for id in demo.profile_ids() {
        let profile = demo.profile_as(&id, &token).await;
        if profile["health"]["loop_fault"].is_object() {
            faulted = Some((id, profile));
        }
    }
    let (id, profile) = faulted.expect("a profile shows its loops' fault");
    let fault = &profile["health"]["loop_fault"];
    assert_eq!(fault["kind"], "panic", "{profile:#}");
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .contains("crash point before_submit"),
        "{profile:#}"
    );
    assert!(fault["at_ms"].as_i64().unwrap() > 0, "{profile:#}");
    let state = profile["health"]["state"].as_str().unwrap();
    assert!(matches!(state, "faulted" | "stopped"), "{profile:#}");
    let (_, detail) = demo.health(true).await;
    let listed = detail["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["profile"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} in {detail:#}"));
    assert_eq!(
        listed["health"]["loop_fault"]["kind"], "panic",
        "{listed:#}"
    );

    // The faulted profile's loops run again, entries paused: it still answers candles.
    wait_for(
        "the faulted profile's loops to run again, paused",
        || async {
            let (_, detail) = demo.health(true).await;
            detail["profiles"].as_array().unwrap().iter().any(|p| {
                p["profile"] == id.as_str()
                    && p["controls"]["paused"] == true
                    && p["loops"]["trading"]["last_run_ms"].as_i64().unwrap_or(0) > 0
            })
        },
    )
    .await;
    let (status, lines) = demo.stop("INT").await;
    assert!(status.success(), "the demo stops cleanly: {lines:#?}");
}

#[tokio::test]
async fn profiles_whose_recovery_keeps_panicking_are_left_stopped_not_restarted_forever() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start_with_crash_point(dir.path(), "panic:recovery").await;
    // Readiness does not wait for profiles left stopped.
    demo.wait_ready().await;
    let profiles = demo.profile_ids().len();
    let (status, health) = demo.health(false).await;
    assert_eq!(status, 200, "{health:#}");
    assert_eq!(health["status"], "degraded", "{health:#}");
    assert_eq!(health["profile_counts"]["faulted"], profiles, "{health:#}");
    let token = demo.owner_token();
    for id in demo.profile_ids() {
        let profile = demo.profile_as(&id, &token).await;
        assert_eq!(profile["health"]["state"], "stopped", "{profile:#}");
        assert_eq!(
            profile["health"]["loop_fault"]["faults_in_window"], 4,
            "{profile:#}"
        );
    }
    // The first fault and three restarts each, then no more.
    let faults = |text: &str| sample(text, "keel_profile_faults_total{kind=\"panic\"}");
    let (_, metrics) = demo.get("/metrics").await;
    assert_eq!(faults(&metrics), (4 * profiles) as f64);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, metrics) = demo.get("/metrics").await;
    assert_eq!(
        faults(&metrics),
        (4 * profiles) as f64,
        "no restart after the last"
    );
    assert_eq!(demo.get("/livez").await, (200, "ok".to_owned()));
    let (status, lines) = demo.stop("INT").await;
    assert!(status.success(), "the demo stops cleanly: {lines:#?}");
}

#[tokio::test]
async fn an_upload_over_a_compile_limit_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path()).await;
    demo.wait_ready().await;
    let token = demo.token(false);
    let upload = |bytes: Vec<u8>| {
        let token = token.clone();
        let url = format!("{}/api/v1/plugins?name=bomb", demo.base);
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/wasm")
                .body(bytes)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let (status, body) = upload(keel_testkit::compile_bomb::many_functions(100_001)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("functions_max = 100000"), "{body}");
    let (status, body) = upload(keel_testkit::compile_bomb::many_live_locals(30_000)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("locals_per_function_max = 5000"), "{body}");
    // Over the upload limit: refused before anything is read into the engine.
    let (status, body) = upload(vec![0_u8; (32 << 20) + 1]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(demo.get("/livez").await, (200, "ok".to_owned()));
    let (status, lines) = demo.stop("INT").await;
    assert!(status.success(), "the demo stops cleanly: {lines:#?}");
}
