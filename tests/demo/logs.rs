//! The demo's log as production sees it: every stderr line one JSON object, the spans carrying
//! `profile_id`, `user_id`, `client_order_id` and `plugin_sha256`, and no secret anywhere.

use keel_runtime::PluginDigest;
use serde_json::Value;

use super::*;

/// Every value of `field` in the spans of the JSON log lines.
fn span_values(lines: &[Value], field: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|line| line["spans"].as_array())
        .flatten()
        .filter_map(|span| span[field].as_str())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn json_log_lines_carry_the_span_fields_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Demo::command(dir.path());
    command
        .env("KEEL_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    let mut demo = Demo::spawn(command, dir.path()).await;
    let mut stderr = BufReader::new(demo.child.stderr.take().unwrap()).lines();
    let log = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            lines.push(line);
        }
        lines
    });
    demo.wait_ready().await;
    wait_for("a filled order", || async {
        demo.metric("keel_orders_total{status=\"FILLED\"}").await > 0.0
    })
    .await;
    let (status, stdout) = demo.stop("TERM").await;
    assert!(status.success(), "exit {status:?}, stdout {stdout:?}");
    let raw = log.await.unwrap();

    let parsed: Vec<Value> = raw
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &parsed {
        for key in ["timestamp", "level", "fields", "target"] {
            assert!(line.get(key).is_some(), "no {key} in {line}");
        }
    }

    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo.json")).unwrap()).unwrap();
    let user = state["user"].as_str().unwrap().to_owned();
    assert_eq!(
        span_values(&parsed, "user_id"),
        BTreeSet::from([user]),
        "every profile step names the demo user"
    );
    let profiles: BTreeSet<String> = state["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect();
    let logged_profiles = span_values(&parsed, "profile_id");
    assert!(
        !logged_profiles.is_empty() && logged_profiles.is_subset(&profiles),
        "{logged_profiles:?} vs {profiles:?}"
    );
    let orders = span_values(&parsed, "client_order_id");
    assert!(!orders.is_empty(), "no order span in {raw:#?}");
    let plugins_dir = repo_root().join("plugins-example/target/wasm32-wasip2/release");
    let shipped: BTreeSet<String> = std::fs::read_dir(&plugins_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .map(|p| PluginDigest::of(&std::fs::read(p).unwrap()).to_string())
        .collect();
    let running = span_values(&parsed, "plugin_sha256");
    // The demo runs two example plugins (sma-cross for two profiles, rsi-reversion).
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.is_subset(&shipped), "{running:?} vs {shipped:?}");

    // Each span once per line, and no event field repeating one of its spans' fields.
    for line in &parsed {
        assert!(
            line.get("span").is_none(),
            "the innermost span twice: {line}"
        );
        let spans = line["spans"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut names = BTreeSet::new();
        for span in spans {
            let name = span["name"].as_str().unwrap_or_default();
            assert!(names.insert(name), "span {name} twice: {line}");
            for (field, _) in span.as_object().into_iter().flatten() {
                assert!(
                    field == "name" || line["fields"].get(field).is_none(),
                    "{field} in the event and in its span: {line}"
                );
            }
        }
    }

    // The demo's secrets: the JWT secret in its data directory and the token it prints.
    let secret = std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap();
    let token = stdout
        .iter()
        .find_map(|l| l.split("(valid 24 h): ").nth(1))
        .unwrap_or_else(|| panic!("no token in {stdout:?}"));
    for line in &raw {
        assert!(
            !line.contains(secret.trim()),
            "the JWT secret leaked: {line}"
        );
        assert!(!line.contains(token.trim()), "the token leaked: {line}");
    }
}
