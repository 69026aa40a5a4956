//! The cross-tenant matrix: Bob calls every endpoint with Alice's ids. Each answers 404 — the
//! same answer, word for word but the id, as an id that does not exist — and the database is
//! unchanged, row for row.

use axum::http::StatusCode;
use keel_kernel::ids::UserId;
use serde_json::{Value, json};

use crate::{Api, Db, plugin_bytes, risk_limits};

crate::api_tests!(another_users_ids_answer_404_and_change_nothing);

/// Every endpoint that takes an id, with a body where it needs one. `{p}` is a profile id,
/// `{q}` a plugin id, `{own_q}` a plugin of the caller.
fn matrix() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/api/v1/profiles/{p}", None),
        ("DELETE", "/api/v1/profiles/{p}", None),
        (
            "PUT",
            "/api/v1/profiles/{p}/risk",
            Some(risk_limits(&["ETHUSDT"])),
        ),
        (
            "POST",
            "/api/v1/profiles/{p}/allocations",
            Some(json!({"amount": "1"})),
        ),
        ("GET", "/api/v1/profiles/{p}/credentials", None),
        (
            "PUT",
            "/api/v1/profiles/{p}/credentials",
            Some(json!({"exchange": "paper", "api_key": "k", "api_secret": "s"})),
        ),
        ("DELETE", "/api/v1/profiles/{p}/credentials", None),
        ("GET", "/api/v1/profiles/{p}/plugin", None),
        (
            "PUT",
            "/api/v1/profiles/{p}/plugin",
            Some(json!({"plugin_id": "{own_q}", "config": {"fast": "2", "slow": "4"}})),
        ),
        ("POST", "/api/v1/profiles/{p}/pause", None),
        ("POST", "/api/v1/profiles/{p}/resume", None),
        ("POST", "/api/v1/profiles/{p}/kill", None),
        ("DELETE", "/api/v1/profiles/{p}/kill", None),
        ("GET", "/api/v1/profiles/{p}/orders", None),
        ("GET", "/api/v1/profiles/{p}/positions", None),
        ("GET", "/api/v1/profiles/{p}/ledger", None),
        ("GET", "/api/v1/profiles/{p}/trades", None),
        ("GET", "/api/v1/plugins/{q}", None),
        (
            "PUT",
            "/api/v1/profiles/{own_p}/plugin",
            Some(json!({"plugin_id": "{q}", "config": {}})),
        ),
    ]
}

fn fill(text: &str, ids: &[(&str, &str)]) -> String {
    ids.iter()
        .fold(text.to_owned(), |text, (key, id)| text.replace(key, id))
}

async fn another_users_ids_answer_404_and_change_nothing(db: &Db) {
    let api = Api::new(db.store());
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let (alice_token, bob_token) = (api.token(alice, false), api.token(bob, false));

    // Alice's profile holds capital, credentials, a switch and a bound plugin.
    api.grant(alice, "100").await;
    let p = api.create_profile(&alice_token, "alice").await;
    let q = api
        .upload(&alice_token, "alice-sma", plugin_bytes("sma-cross"))
        .await
        .body["plugin_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let setup = [
        (
            "POST",
            format!("/api/v1/profiles/{p}/allocations"),
            Some(json!({"amount": "100"})),
        ),
        (
            "PUT",
            format!("/api/v1/profiles/{p}/credentials"),
            Some(
                json!({"exchange": "paper", "api_key": "alice-key", "api_secret": "alice-secret"}),
            ),
        ),
        (
            "PUT",
            format!("/api/v1/profiles/{p}/plugin"),
            Some(json!({"plugin_id": q, "config": {"fast": "3", "slow": "8"}})),
        ),
        ("POST", format!("/api/v1/profiles/{p}/pause"), None),
    ];
    for (method, path, body) in setup {
        let reply = api.send(method, &path, Some(&alice_token), body).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} {path}: {reply:?}");
    }
    // And a quarantine, whose end Bob's resume must not ask for.
    crate::quarantine::quarantine(db, alice, &p).await;
    // Bob has a profile and a plugin of his own.
    let own_p = api.create_profile(&bob_token, "bob").await;
    let own_q = api
        .upload(&bob_token, "bob-sma", plugin_bytes("sma-cross"))
        .await
        .body["plugin_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(own_q, q, "each user's upload is their own row");

    let before = db.fingerprint().await;
    let nobody_p = uuid::Uuid::new_v4().to_string();
    let nobody_q = uuid::Uuid::new_v4().to_string();
    for (method, path, body) in matrix() {
        let theirs = [
            ("{own_p}", own_p.as_str()),
            ("{own_q}", own_q.as_str()),
            ("{p}", p.as_str()),
            ("{q}", q.as_str()),
        ];
        let missing = [
            ("{own_p}", own_p.as_str()),
            ("{own_q}", own_q.as_str()),
            ("{p}", nobody_p.as_str()),
            ("{q}", nobody_q.as_str()),
        ];
        let body_with = |ids: &[(&str, &str)]| {
            body.as_ref()
                .map(|b| serde_json::from_str::<Value>(&fill(&b.to_string(), ids)).unwrap())
        };
        let reply = api
            .send(
                method,
                &fill(path, &theirs),
                Some(&bob_token),
                body_with(&theirs),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path} with Alice's ids: {reply:?}"
        );
        let absent = api
            .send(
                method,
                &fill(path, &missing),
                Some(&bob_token),
                body_with(&missing),
            )
            .await;
        assert_eq!(
            absent.status,
            StatusCode::NOT_FOUND,
            "{method} {path} with unknown ids: {absent:?}"
        );
        let normalized = reply.body.to_string().replace(&p, "ID").replace(&q, "ID");
        let normalized_absent = absent
            .body
            .to_string()
            .replace(&nobody_p, "ID")
            .replace(&nobody_q, "ID");
        assert_eq!(
            normalized, normalized_absent,
            "{method} {path}: another user's id reads like a missing one"
        );
    }
    let after = db.fingerprint().await;
    assert_eq!(
        before, after,
        "Bob's requests changed nothing in the database"
    );

    // Lists show each user only their own rows.
    let bobs = api
        .send("GET", "/api/v1/profiles", Some(&bob_token), None)
        .await;
    let ids: Vec<&str> = bobs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["profile_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [own_p.as_str()]);
    let plugins = api
        .send("GET", "/api/v1/plugins", Some(&bob_token), None)
        .await;
    let ids: Vec<&str> = plugins
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["plugin_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [own_q.as_str()]);
    // Alice's profile is as she left it.
    let hers = api
        .send(
            "GET",
            &format!("/api/v1/profiles/{p}"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(hers.body["paused"], true);
    assert_eq!(hers.body["capital"]["allocated"], "100");
    assert_eq!(hers.body["plugin"]["plugin_id"], q.as_str());
}
