//! The quarantine runbook (`runbooks/reconciliation-mismatch.md`) followed against real
//! `keel serve` instances on PostgreSQL and `keel exchange-sim`: an order on the exchange that the
//! store never wrote quarantines the profile; its reason and evidence are read through the API of
//! the instance that does not run it; the instance running it is killed and the one that takes
//! it over stays quarantined; the drift is put right, the owner resumes the profile through an
//! instance that does not run it, and the next clean pass ends the quarantine, kept as history.

use keel_api::auth::JwtKeys;
use keel_kernel::exchange::{Exchange, OrderRequest, OrderType, PlaceOutcome};
use keel_kernel::ids::{ClientOrderId, IntentKind, Symbol};
use keel_kernel::market::Side;
use keel_kernel::money::{Price, Qty};
use rust_decimal_macros::dec;
use serde_json::Value;

use crate::harness::{Serve, World, now_secs, signal, wait_for};

/// The `api.jwt_secret` of the test configurations.
const JWT_SECRET: &[u8] = b"cluster-test-secret-cluster-test-secret";

/// The profile as `token`'s holder reads it through `serve`'s API.
async fn profile_view(serve: &Serve, world: &World, token: &str) -> Value {
    let reply = reqwest::Client::new()
        .get(format!("{}/api/v1/profiles/{}", serve.base, world.profile))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    reply.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarantine_runbook_ends_a_stored_quarantine_through_another_instance() {
    let world = World::create(41).await;
    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    crate::stored::bind_never_trades(&world, &mut tx).await;
    tx.commit().await.unwrap();
    let token = JwtKeys::new(JWT_SECRET)
        .unwrap()
        .mint(world.user, false, now_secs(), 600);
    let a = Serve::start("a", &world.config_file("a", "boundary.wasm", &[])).await;
    let b = Serve::start("b", &world.config_file("b", "boundary.wasm", &[])).await;
    wait_for("a lease on the profile", || async {
        world.lease().await.is_some()
    })
    .await;
    let (owner, _) = world.lease().await.unwrap();
    let (running, other) = if a.owner == owner { (a, b) } else { (b, a) };
    wait_for("the profile's recovery", || async {
        running.get("/readyz").await.0 == 200
    })
    .await;

    // Drift: an order under a client order id the profile derives, which its store never
    // wrote (what a database restored from a backup leaves), resting far below the market.
    let exchange = world.sim.adapter().await;
    let btc = Symbol::new("BTCUSDT").unwrap();
    let unwritten = ClientOrderId::derive(world.profile, &btc, 9_999, IntentKind::Entry);
    let placed = exchange
        .place(&OrderRequest {
            client_order_id: unwritten.clone(),
            symbol: btc.clone(),
            side: Side::Buy,
            order_type: OrderType::Limit {
                price: Price::new(dec!(30000)).unwrap(),
            },
            qty: Qty::new(dec!(0.01)).unwrap(),
            reduce_only: false,
        })
        .await;
    assert!(matches!(placed, PlaceOutcome::Accepted(_)), "{placed:?}");

    // Runbook step 1: read the reason and the evidence, through either instance.
    wait_for("the profile quarantined", || async {
        profile_view(&other, &world, &token).await["health"]["quarantine"].is_object()
    })
    .await;
    let view = profile_view(&other, &world, &token).await;
    let q = &view["health"]["quarantine"];
    assert!(
        q["reason"].as_str().unwrap().contains("missing_in_db x1"),
        "{q}"
    );
    assert_eq!(q["evidence"][0]["subject"], unwritten.as_str(), "{q}");
    assert_eq!(q["evidence"][0]["store"], "no such order", "{q}");
    let since_ms = q["since_ms"].clone();
    let (_, health) = running.get("/internal/health").await;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["profile_counts"]["quarantined"], 1, "{health}");
    assert_eq!(running.metric("keel_profiles_quarantined").await, 1.0);
    assert_eq!(other.metric("keel_profiles_quarantined").await, 0.0);

    // A restart is no way out: the instance running it dies, the other takes it over and
    // restores the stored quarantine (same reason, same time).
    signal(running.pid(), "KILL");
    let survivor = other;
    wait_for("the takeover", || async {
        world
            .lease()
            .await
            .is_some_and(|(owner, _)| owner == survivor.owner)
    })
    .await;
    wait_for("the new owner counts the quarantine", || async {
        survivor.metric("keel_profiles_quarantined").await == 1.0
    })
    .await;
    let view = profile_view(&survivor, &world, &token).await;
    assert_eq!(view["health"]["quarantine"]["since_ms"], since_ms, "{view}");

    // Runbook step 2: put the drift right (the unwritten order cancelled), then step 3: the
    // owner resumes the profile through an instance that does not run it.
    exchange.cancel(&btc, &unwritten).await.unwrap();
    let restarted = Serve::start(
        "a-again",
        &world.config_file("a-again", "boundary.wasm", &[]),
    )
    .await;
    let resumed = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/profiles/{}/resume",
            restarted.base, world.profile
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status().as_u16(), 200);
    assert_eq!(
        world.lease().await.map(|(owner, _)| owner),
        Some(survivor.owner),
        "the profile still runs on the survivor"
    );

    // Step 4: the instance running it hears the request; a clean pass ends the quarantine.
    wait_for("the quarantine cleared", || async {
        profile_view(&restarted, &world, &token).await["health"]["quarantine"].is_null()
    })
    .await;
    wait_for("the gauge back to zero", || async {
        survivor.metric("keel_profiles_quarantined").await == 0.0
    })
    .await;
    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    let history = tx.quarantine_history(world.profile).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].cleared_by, Some(world.user));

    drop(running);
    for serve in [restarted, survivor] {
        let (status, log) = serve.stop().await;
        assert!(status.success(), "{log:#?}");
    }
    world.drop_db().await;
}
