//! A quarantine as its owner and operators meet it through the API: its reason, time and
//! evidence in the profile's view, a request to end it (the owner's resume, an operator's
//! clear) stored under the id of who asked, and the answers to everyone else.

use axum::http::StatusCode;
use keel_kernel::ids::{ProfileId, UserId};
use keel_kernel::store::QuarantineEvidence;

use crate::{Api, Db};

crate::api_tests!(owners_and_operators_read_a_quarantine_and_ask_for_its_end);

/// Stores a quarantine of `profile` as a reconciliation pass writes it: an order on the
/// exchange the store never wrote, found at kernel time 1000.
pub async fn quarantine(db: &Db, owner: UserId, profile: &str) {
    let profile: ProfileId = profile.parse().unwrap();
    let evidence = [QuarantineEvidence::new(
        "missing_in_db",
        "E-unwritten",
        "no such order",
        "open, NEW, filled 0 of 1",
    )];
    let mut tx = db.store().tenant(owner).begin().await.unwrap();
    tx.enter_quarantine(
        profile,
        "reconciliation found what it could not repair: missing_in_db x1",
        &evidence,
        1_000,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn owners_and_operators_read_a_quarantine_and_ask_for_its_end(db: &Db) {
    let api = Api::new(db.store());
    let (alice, bob, operator) = (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    let (alice_token, bob_token) = (api.token(alice, false), api.token(bob, false));
    let operator_token = api.token(operator, true);
    let p = api.create_profile(&alice_token, "alice").await;
    let view = format!("/api/v1/profiles/{p}");
    let resume = format!("/api/v1/profiles/{p}/resume");
    let clear = format!("/api/v1/operator/profiles/{p}/quarantine/clear");

    // Not quarantined: nothing to show, nothing for an operator to clear.
    let reply = api.send("GET", &view, Some(&alice_token), None).await;
    assert_eq!(reply.body["health"]["quarantine"], serde_json::Value::Null);
    let reply = api.send("POST", &clear, Some(&operator_token), None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert!(reply.error().contains("is not quarantined"), "{reply:?}");

    // A reconciliation pass stored a quarantine: its owner reads why, since when, and what
    // each side said.
    quarantine(db, alice, &p).await;
    let reply = api.send("GET", &view, Some(&alice_token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let q = &reply.body["health"]["quarantine"];
    assert_eq!(
        q["reason"],
        "reconciliation found what it could not repair: missing_in_db x1"
    );
    assert_eq!(q["since_ms"], 1_000);
    assert_eq!(q["evidence"][0]["kind"], "missing_in_db");
    assert_eq!(q["evidence"][0]["subject"], "E-unwritten");
    assert_eq!(q["evidence"][0]["store"], "no such order");
    assert_eq!(q["evidence"][0]["exchange"], "open, NEW, filled 0 of 1");
    assert_eq!(q["clear_requested"], false);

    // Another tenant neither reads nor resumes it (404), and a tenant's token may not use the
    // operator's route (403), the owner's included.
    for (method, path) in [("GET", &view), ("POST", &resume)] {
        let reply = api.send(method, path, Some(&bob_token), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    for token in [&bob_token, &alice_token] {
        let reply = api.send("POST", &clear, Some(token), None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    }
    let reply = api.send("GET", &view, Some(&alice_token), None).await;
    assert_eq!(reply.body["health"]["quarantine"]["clear_requested"], false);

    // The owner's resume stores the request under the owner's id.
    let reply = api.send("POST", &resume, Some(&alice_token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let q = &reply.body["health"]["quarantine"];
    assert_eq!(q["clear_requested"], true, "{reply:?}");
    assert_eq!(q["clear_requested_by"], alice.to_string());
    assert!(q["clear_requested_at_ms"].as_i64().unwrap() > 0);

    // An operator asks too: the request names the operator.
    let reply = api.send("POST", &clear, Some(&operator_token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["clear_requested_by"], operator.to_string());
    assert_eq!(reply.body["evidence"][0]["subject"], "E-unwritten");
    let profile: ProfileId = p.parse().unwrap();
    let mut tx = db.store().tenant(alice).begin().await.unwrap();
    let stored = tx.quarantine(profile).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored.clear_requested_by, Some(operator));
    assert_eq!(stored.cleared_at_ms, None, "only a clean pass ends it");

    // An operator's clear of a profile nobody has: 404.
    let nobody = format!(
        "/api/v1/operator/profiles/{}/quarantine/clear",
        uuid::Uuid::new_v4()
    );
    let reply = api.send("POST", &nobody, Some(&operator_token), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}
