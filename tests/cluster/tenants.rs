//! Two tenants on one real `keel serve` with PostgreSQL and `keel exchange-sim`, as hostile
//! tenants would try it: Alice trades on the host's account (an operator assigned it), Bob on
//! his own (his credentials); Bob cannot give himself capital or the host's account, a profile of
//! his that an operator puts on the host's account does not start while Alice's trades its
//! symbols there, and neither sees the other's profiles, orders or live events.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use keel_api::auth::JwtKeys;
use keel_kernel::ids::{ClientOrderId, ProfileId, Symbol, UserId};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Serve, World, now_secs, wait_for};
use crate::scenarios::BUSY_STRATEGY;

/// The `api.jwt_secret` of the test configurations.
const JWT_SECRET: &[u8] = b"cluster-test-secret-cluster-test-secret";
/// How long each tenant's live feed is listened to.
const LISTEN: Duration = Duration::from_secs(4);

fn limits() -> Value {
    json!({
        "symbols_allowed": ["BTCUSDT"],
        "entry_notional_max": "1000",
        "positions_open_max": 1,
        "leverage_max": "1",
        "limit_price_band_bps": 500,
        "intents_per_minute_max": 600,
        "daily_loss_max": "500",
    })
}

/// A JSON request with a bearer token: (status, body).
async fn send(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The profile ids of every snapshot entry and event `token`'s feed sends for [`LISTEN`].
async fn profiles_on_the_feed(base: &str, token: &str) -> BTreeSet<String> {
    let url = format!(
        "{}/api/v1/ws?access_token={token}",
        base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut seen = BTreeSet::new();
    let until = tokio::time::Instant::now() + LISTEN;
    while let Ok(Some(message)) = tokio::time::timeout_at(until, ws.next()).await {
        let Message::Text(text) = message.unwrap() else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        for profile in event["profiles"].as_array().into_iter().flatten() {
            seen.insert(profile["profile"].as_str().unwrap().to_owned());
        }
        if let Some(profile) = event["profile"].as_str() {
            seen.insert(profile.to_owned());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_trade_on_their_own_accounts_and_see_only_their_own() {
    let world = World::create_with(41, &["--account", "bob-key:bob-secret:20000"]).await;
    let (alice, alice_profile) = (world.user, world.profile);
    let config = world.config_file("tenants", "sma_cross.wasm", &BUSY_STRATEGY);
    let host = Serve::start("tenants", &config).await;
    let api = format!("{}/api/v1", host.base);
    let keys = JwtKeys::new(JWT_SECRET).unwrap();
    let bob = UserId::new_random();
    let (alice_token, bob_token) = (
        keys.mint(alice, false, now_secs(), 600),
        keys.mint(bob, false, now_secs(), 600),
    );
    let operator = keys.mint(UserId::new_random(), true, now_secs(), 600);
    use reqwest::Method;

    // Bob makes a profile, but cannot fund it himself.
    let (status, created) = send(
        Method::POST,
        &format!("{api}/profiles"),
        &bob_token,
        Some(json!({"name": "bob-btc", "risk_limits": limits()})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let bob_profile = created["profile_id"].as_str().unwrap().to_owned();
    let allocate = format!("{api}/profiles/{bob_profile}/allocations");
    let (status, refused) = send(
        Method::POST,
        &allocate,
        &bob_token,
        Some(json!({"amount": "6000"})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    let grant = format!("{api}/operator/users/{bob}/budget");
    let (status, _) = send(
        Method::POST,
        &grant,
        &bob_token,
        Some(json!({"amount": "5000"})),
    )
    .await;
    assert_eq!(status, 403, "a user cannot grant himself a budget");
    let host_account = format!("{api}/operator/profiles/{bob_profile}/host-account");
    let (status, _) = send(Method::PUT, &host_account, &bob_token, None).await;
    assert_eq!(status, 403, "a user cannot take the host's account");
    // A leverage that once overflowed the kernel is refused with the field named.
    let mut huge = limits();
    huge["leverage_max"] = json!("79228162514264337593543950335");
    let (status, refused) = send(
        Method::PUT,
        &format!("{api}/profiles/{bob_profile}/risk"),
        &bob_token,
        Some(huge),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("leverage_max"),
        "{refused}"
    );

    // An operator grants Bob a budget; he funds his profile and trades on his own account.
    let (status, _) = send(
        Method::POST,
        &grant,
        &operator,
        Some(json!({"amount": "6000"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, funded) = send(
        Method::POST,
        &allocate,
        &bob_token,
        Some(json!({"amount": "6000"})),
    )
    .await;
    assert_eq!(status, 200, "{funded}");
    let credentials =
        json!({"exchange": "binance-usdm", "api_key": "bob-key", "api_secret": "bob-secret"});
    let (status, _) = send(
        Method::PUT,
        &format!("{api}/profiles/{bob_profile}/credentials"),
        &bob_token,
        Some(credentials),
    )
    .await;
    assert_eq!(status, 200);

    // A second profile of Bob's, put on the host's account by an operator, does not start while
    // Alice's trades BTCUSDT there.
    let (_, shared) = send(
        Method::POST,
        &format!("{api}/profiles"),
        &bob_token,
        Some(json!({"name": "bob-shared", "risk_limits": limits()})),
    )
    .await;
    let shared = shared["profile_id"].as_str().unwrap().to_owned();
    let (status, _) = send(
        Method::PUT,
        &format!("{api}/operator/profiles/{shared}/host-account"),
        &operator,
        None,
    )
    .await;
    assert_eq!(status, 200);

    let placed_by = || async {
        world
            .sim
            .placed_by()
            .await
            .into_values()
            .collect::<BTreeSet<_>>()
    };
    wait_for("orders on the host's account and on Bob's", || async {
        let keys = placed_by().await;
        keys.contains("keel-sim-key") && keys.contains("bob-key")
    })
    .await;
    let (_, view) = send(
        Method::GET,
        &format!("{api}/profiles/{shared}"),
        &bob_token,
        None,
    )
    .await;
    assert_eq!(view["running"], false, "{view}");
    assert_eq!(view["account"], "host");
    let (_, view) = send(
        Method::GET,
        &format!("{api}/profiles/{bob_profile}"),
        &bob_token,
        None,
    )
    .await;
    assert_eq!(
        (view["running"].as_bool(), view["account"].as_str()),
        (Some(true), Some("owner")),
        "{view}"
    );

    // Every order on an account was placed by the profile whose account it is.
    let btc = Symbol::new("BTCUSDT").unwrap();
    let alice_id = alice_profile;
    let bob_id = ProfileId::parse(&bob_profile).unwrap();
    for (client_order_id, key) in world.sim.placed_by().await {
        let id = ClientOrderId::new(&client_order_id).unwrap();
        let owner = match key.as_str() {
            "keel-sim-key" => alice_id,
            "bob-key" => bob_id,
            other => panic!("an order under {other}"),
        };
        assert!(
            id.is_derived_for(owner, &btc),
            "{client_order_id} under {key}"
        );
    }

    // Neither sees the other: lists, another's ids, the live feed.
    let (_, listed) = send(Method::GET, &format!("{api}/profiles"), &bob_token, None).await;
    let listed: BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([bob_profile.as_str(), shared.as_str()])
    );
    let (status, _) = send(
        Method::GET,
        &format!("{api}/profiles/{alice_profile}/orders"),
        &bob_token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        Method::GET,
        &format!("{api}/profiles/{bob_profile}/orders"),
        &alice_token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let bob_sees = profiles_on_the_feed(&host.base, &bob_token).await;
    assert!(bob_sees.contains(&bob_profile), "{bob_sees:?}");
    assert!(
        !bob_sees.contains(&alice_profile.to_string()),
        "{bob_sees:?}"
    );
    let alice_sees = profiles_on_the_feed(&host.base, &alice_token).await;
    assert_eq!(alice_sees, BTreeSet::from([alice_profile.to_string()]));
    // The public scrape names no profile.
    let (_, metrics) = host.get("/metrics").await;
    assert!(!metrics.contains(&alice_profile.to_string()) && !metrics.contains(&bob_profile));

    let (status, log) = host.stop().await;
    assert!(status.success(), "{log:#?}");
    let refused_start = log
        .iter()
        .any(|line| line.contains("cannot trade BTCUSDT on its exchange account"));
    assert!(
        refused_start,
        "the shared profile's start was refused in the log: {log:#?}"
    );
    world.drop_db().await;
}
