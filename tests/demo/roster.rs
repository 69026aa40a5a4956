//! Profiles created through the demo's API run in the demo, once their risk limits name a
//! symbol of its market.

use serde_json::{Value, json};

use super::{Demo, wait_for};

fn limits(symbols: &[&str]) -> Value {
    json!({
        "symbols_allowed": symbols,
        "entry_notional_max": "1000",
        "positions_open_max": 3,
        "leverage_max": "1",
        "limit_price_band_bps": 500,
        "intents_per_minute_max": 600,
        "daily_loss_max": "500",
    })
}

impl Demo {
    /// Sends `body` as JSON with `method` and a bearer token; the status and the JSON answer.
    async fn send_as(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(super) async fn profile_as(&self, id: &str, token: &str) -> Value {
        let (status, body) = self.get_as(&format!("/api/v1/profiles/{id}"), token).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

#[tokio::test]
async fn a_profile_created_through_the_api_runs_once_its_limits_name_a_market_symbol() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path()).await;
    demo.wait_ready().await;
    let user = keel_kernel::ids::UserId::new_random();
    let token = demo.token_of(user, false);
    // A new user allocates only what an operator granted them.
    let grant = format!("/api/v1/operator/users/{user}/budget");
    let (status, budget) = demo
        .send_as(
            "POST",
            &grant,
            &demo.token(true),
            json!({"amount": "10000"}),
        )
        .await;
    assert_eq!(status, 200, "{budget}");
    let created = json!({"name": "mine", "risk_limits": limits(&["SOLUSDT"])});
    let (status, profile) = demo
        .send_as("POST", "/api/v1/profiles", &token, created)
        .await;
    assert_eq!(status, 201, "{profile}");
    let id = profile["profile_id"].as_str().unwrap().to_owned();
    let amount = json!({"amount": "10000"});
    let allocations = format!("/api/v1/profiles/{id}/allocations");
    let (status, capital) = demo.send_as("POST", &allocations, &token, amount).await;
    assert_eq!(status, 200, "{capital}");

    // The demo market has no SOLUSDT: the profile is stored and waits. Several roster passes
    // (one a second) go by while it does.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(demo.profile_as(&id, &token).await["running"], false);

    let risk = format!("/api/v1/profiles/{id}/risk");
    let (status, body) = demo
        .send_as("PUT", &risk, &token, limits(&["SOLUSDT", "BTCUSDT"]))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for("the profile to run", || async {
        demo.profile_as(&id, &token).await["running"] == true
    })
    .await;
    let orders = format!("/api/v1/profiles/{id}/orders");
    wait_for("the profile's first order", || async {
        let (status, body) = demo.get_as(&orders, &token).await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        body.as_array().is_some_and(|o| !o.is_empty())
    })
    .await;
    let (_, body) = demo.get_as(&orders, &token).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    for order in body.as_array().unwrap() {
        assert_eq!(order["symbol"], "BTCUSDT", "{order}");
    }

    // A restart starts it again with the demo's own profiles.
    let (status, _) = demo.stop("INT").await;
    assert!(status.success());
    let demo = Demo::start(dir.path()).await;
    demo.wait_ready().await;
    wait_for("the profile to run after the restart", || async {
        demo.profile_as(&id, &token).await["running"] == true
    })
    .await;
    let (status, _) = demo.stop("INT").await;
    assert!(status.success());
}
