//! An instance starts a profile the way its owner left it in the store: the plugin bound through
//! the API (not the configured default), and the pause switch.

use futures::StreamExt as _;
use keel_api::CredentialsKey;
use keel_api::auth::JwtKeys;
use keel_api::credentials::ExchangeSecret;
use keel_kernel::store::{NewPlugin, TenantTx};
use keel_runtime::PluginDigest;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{
    CAPITAL, CREDENTIALS_KEY_HEX, Serve, Sim, WAIT_MAX, World, now_secs, plugin, wait_for,
    write_config,
};
use crate::scenarios::BUSY_STRATEGY;

/// The `api.jwt_secret` of the test configurations.
const JWT_SECRET: &[u8] = b"cluster-test-secret-cluster-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_starts_with_the_plugin_and_switches_its_owner_stored() {
    let world = World::create(21).await;
    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    let digest = bind_never_trades(&world, &mut tx).await;
    assert!(tx.set_paused(world.profile, true).await.unwrap());
    tx.commit().await.unwrap();

    // The configuration's default plugin trades on every candle; the profile must not run it.
    let config = world.config_file("one", "sma_cross.wasm", &BUSY_STRATEGY);
    let one = Serve::start("one", &config).await;
    wait_for("the profile's recovery", || async {
        one.get("/readyz").await.0 == 200
    })
    .await;
    let token = JwtKeys::new(JWT_SECRET)
        .unwrap()
        .mint(world.user, false, now_secs(), 600);
    let url = format!(
        "{}/api/v1/ws?access_token={token}",
        one.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let snapshot = loop {
        let message = tokio::time::timeout(WAIT_MAX, ws.next())
            .await
            .expect("a snapshot")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(text) = message {
            break serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    };
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    let profile = snapshot["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["profile"] == world.profile.to_string())
        .unwrap_or_else(|| panic!("the profile is in {snapshot}"));
    assert_eq!(profile["plugin"], "never-trades", "{profile}");
    assert_eq!(profile["plugin_version"], digest.as_str(), "{profile}");
    assert_eq!(profile["controls"]["paused"], true, "{profile}");
    assert!(world.sim.placements().await.is_empty());

    let (status, log) = one.stop().await;
    assert!(status.success(), "{log:#?}");
    world.drop_db().await;
}

/// Uploads the boundary plugin (it never trades) as `never-trades` and binds it to the world's
/// profile, as the API does; returns its digest.
pub(crate) async fn bind_never_trades(world: &World, tx: &mut TenantTx) -> PluginDigest {
    let wasm = std::fs::read(plugin("boundary.wasm")).unwrap();
    let digest = PluginDigest::of(&wasm);
    let (row, _) = tx
        .insert_plugin(NewPlugin {
            name: "never-trades",
            sha256: digest.as_str(),
            report: "{}",
            wasm: &wasm,
        })
        .await
        .unwrap();
    tx.bind_plugin(world.profile, row.plugin, "{}")
        .await
        .unwrap();
    digest
}

/// The profile runs on one instance; its owner's changes are written elsewhere (another
/// instance's API, here the store directly): the running instance hears of them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_changes_reach_the_instance_running_the_profile() {
    let world = World::create(22).await;
    let config = world.config_file("runner", "sma_cross.wasm", &BUSY_STRATEGY);
    let runner = Serve::start("runner", &config).await;
    wait_for("the profile trading", || async {
        world.sim.placements().await.len() >= 2
    })
    .await;

    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    assert!(tx.set_killed(world.profile, true).await.unwrap());
    tx.commit().await.unwrap();
    wait_for("entries refused by the profile's kill switch", || async {
        runner
            .metric("keel_risk_refusals_total{rule=\"entry_blocked\"}")
            .await
            > 0.0
    })
    .await;

    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    bind_never_trades(&world, &mut tx).await;
    tx.commit().await.unwrap();
    wait_for("the bound plugin swapped in", || async {
        runner
            .metric("keel_plugin_hot_swaps_total{result=\"ok\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        runner
            .metric("keel_plugin_hot_swaps_total{result=\"ok\"}")
            .await,
        1.0,
        "one swap for one change"
    );

    // A deleted profile leaves the directory: its loops stop and its lease is released.
    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    assert!(tx.delete_profile(world.profile).await.unwrap());
    tx.commit().await.unwrap();
    wait_for("the deleted profile stopped", || async {
        world.lease().await.is_none()
    })
    .await;

    let (status, log) = runner.stop().await;
    assert!(status.success(), "{log:#?}");
    world.drop_db().await;
}

/// Seals `key`:`secret` as the world's profile's binance-usdm credentials.
async fn put_credentials(world: &World, key: &str, secret: &str) {
    let sealed = CredentialsKey::from_hex(CREDENTIALS_KEY_HEX).unwrap().seal(
        world.profile,
        world.user,
        keel_api::BINANCE_USDM,
        &ExchangeSecret {
            api_key: key.to_owned(),
            api_secret: secret.to_owned(),
        },
    );
    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    tx.put_credentials(world.profile, &sealed).await.unwrap();
    tx.commit().await.unwrap();
}

/// A profile whose owner stored exchange credentials trades on the owner's account (their key
/// signs its orders), never on the host's configured one; new credentials, or none, move the
/// running profile to the account they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_trades_on_the_account_its_owners_credentials_name() {
    let world = World::create_with(
        23,
        &[
            "--key",
            "owner-key:owner-secret",
            "--key",
            "rotated-key:rotated-secret",
        ],
    )
    .await;
    put_credentials(&world, "owner-key", "owner-secret").await;
    let config = world.config_file("owner", "sma_cross.wasm", &BUSY_STRATEGY);
    let one = Serve::start("owner", &config).await;
    let placed_with = |key: &'static str| {
        let world = &world;
        move || async move { world.sim.placed_by().await.values().any(|k| k == key) }
    };
    wait_for("an order on the owner's account", placed_with("owner-key")).await;
    let placed_by = world.sim.placed_by().await;
    assert!(
        placed_by.values().all(|key| key == "owner-key"),
        "every order is the owner's: {placed_by:?}"
    );

    // Rotated while the profile runs: it restarts on the new key.
    put_credentials(&world, "rotated-key", "rotated-secret").await;
    wait_for("an order under the rotated key", placed_with("rotated-key")).await;
    // Removed: the profile trades on the host's account again.
    let mut tx = world.db.store.tenant(world.user).begin().await.unwrap();
    assert!(tx.delete_credentials(world.profile).await.unwrap());
    tx.commit().await.unwrap();
    wait_for(
        "an order on the host's account",
        placed_with("keel-sim-key"),
    )
    .await;

    let (status, log) = one.stop().await;
    assert!(status.success(), "{log:#?}");
    world.drop_db().await;
}

/// On SQLite (one instance, no notifications) a change of account made through the instance's
/// own API moves the running profile to the account it names at once: a profile neither
/// credentialed nor assigned trades on paper (nothing reaches the exchange while its orders are
/// stored), the operator's assignment moves it to the host's account, its owner's credentials
/// to theirs, and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_account_changes_made_through_the_api_move_the_running_profile() {
    use keel_kernel::ids::UserId;
    use keel_kernel::money::Amount;
    use keel_kernel::store::Store;

    let sim = Sim::start(29, &["--key", "owner-key:owner-secret"]).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keel.db");
    let store = Store::open_sqlite(&db_path).await.unwrap();
    let user = UserId::new_random();
    let tenant = store.tenant(user);
    let profile = tenant.create_profile("on-sqlite").await.unwrap();
    let capital = rust_decimal::Decimal::from(CAPITAL);
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(user, capital)
        .await
        .unwrap();
    tenant
        .allocate(profile, Amount::positive(capital).unwrap())
        .await
        .unwrap();
    store.close().await;
    let config = dir.path().join("lite.toml");
    let database = format!("url = \"sqlite:{}\"", db_path.display());
    write_config(
        &config,
        "lite",
        &database,
        &sim,
        "sma_cross.wasm",
        &BUSY_STRATEGY,
    );
    let one = Serve::start("lite", &config).await;

    let keys = JwtKeys::new(JWT_SECRET).unwrap();
    let token = keys.mint(user, false, now_secs(), 600);
    let operator = keys.mint(UserId::new_random(), true, now_secs(), 600);
    let credentials = format!("{}/api/v1/profiles/{profile}/credentials", one.base);
    let client = reqwest::Client::new();
    let orders_by = |key: &'static str| {
        let sim = &sim;
        async move { sim.placed_by().await.values().filter(|k| *k == key).count() }
    };
    let profile_view = || {
        let (client, token) = (&client, &token);
        let url = format!("{}/api/v1/profiles/{profile}", one.base);
        async move {
            let reply = client.get(&url).bearer_auth(token).send().await.unwrap();
            reply.json::<serde_json::Value>().await.unwrap()
        }
    };
    let stored_orders = || {
        let (client, token) = (&client, &token);
        let url = format!("{}/api/v1/profiles/{profile}/orders", one.base);
        async move {
            let reply = client.get(&url).bearer_auth(token).send().await.unwrap();
            let orders: serde_json::Value = reply.json().await.unwrap();
            orders.as_array().map_or(0, Vec::len)
        }
    };

    // Neither credentials nor an assignment: it trades on paper, and the exchange sees nothing.
    assert_eq!(profile_view().await["account"], "paper");
    wait_for("orders on the paper account", || async {
        stored_orders().await >= 2
    })
    .await;
    assert!(
        sim.placed_by().await.is_empty(),
        "a paper profile reached the exchange: {:?}",
        sim.placed_by().await
    );
    // A user's token cannot assign the host's account to their own profile.
    let host_account = format!(
        "{}/api/v1/operator/profiles/{profile}/host-account",
        one.base
    );
    let refused = client
        .put(&host_account)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    // An operator moves it once it is flat: its entries stopped, its exits close what it holds.
    let kill = format!("{}/api/v1/profiles/{profile}/kill", one.base);
    let switch_account = |method: reqwest::Method| {
        let (client, operator, host_account, kill, token) =
            (&client, &operator, &host_account, &kill, &token);
        async move {
            let killed = client.post(kill).bearer_auth(token).send().await.unwrap();
            assert_eq!(killed.status().as_u16(), 200);
            wait_for("the profile to be flat and its account changed", || {
                let method = method.clone();
                async move {
                    let reply = client
                        .request(method, host_account)
                        .bearer_auth(operator)
                        .send()
                        .await
                        .unwrap();
                    let status = reply.status().as_u16();
                    let body = reply.text().await.unwrap();
                    assert!(
                        status == 200 || (status == 409 && body.contains("holds")),
                        "{status} {body}"
                    );
                    status == 200
                }
            })
            .await;
            let released = client.delete(kill).bearer_auth(token).send().await.unwrap();
            assert_eq!(released.status().as_u16(), 200);
        }
    };
    switch_account(reqwest::Method::PUT).await;
    assert_eq!(profile_view().await["account"], "host");
    wait_for("an order on the host's account", || async {
        orders_by("keel-sim-key").await > 0
    })
    .await;

    let body = serde_json::json!({
        "exchange": "binance-usdm", "api_key": "owner-key", "api_secret": "owner-secret",
    });
    let response = client
        .put(&credentials)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    wait_for("an order on the owner's account", || async {
        orders_by("owner-key").await > 0
    })
    .await;

    let response = client
        .delete(&credentials)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let on_host_before = orders_by("keel-sim-key").await;
    wait_for("an order on the host's account again", || async {
        orders_by("keel-sim-key").await > on_host_before
    })
    .await;

    // Taken back: paper again.
    switch_account(reqwest::Method::DELETE).await;
    assert_eq!(profile_view().await["account"], "paper");

    let (status, log) = one.stop().await;
    assert!(status.success(), "{log:#?}");
}

/// The capital allocated to the profiles on a real exchange account never silently exceeds
/// what the account holds: the running instance's account audit records the balance the
/// simulator reports (100 USDT against the profile's 10 000), exports the shortfall, and the
/// API refuses a further allocation on that account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_balance_is_below_its_profiles_capital_is_reported_and_allocations_refused()
 {
    use keel_kernel::store::HOST_ACCOUNT;
    let world = World::create_with(37, &["--balance", "100"]).await;
    let config = world.config_file("audit", "sma_cross.wasm", &BUSY_STRATEGY);
    let one = Serve::start("audit", &config).await;
    let shortfall = (CAPITAL - 100) as f64;
    wait_for("the account audit to report the shortfall", || async {
        one.metric("keel_account_allocation_shortfall_quote").await == shortfall
    })
    .await;
    let balance = world.db.store.account_balance(HOST_ACCOUNT).await.unwrap();
    assert_eq!(balance, Some(rust_decimal::Decimal::from(100)));

    let token = JwtKeys::new(JWT_SECRET)
        .unwrap()
        .mint(world.user, false, now_secs(), 600);
    let refused = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/profiles/{}/allocations",
            one.base, world.profile
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"amount": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let message = refused.text().await.unwrap();
    assert!(
        message.contains("reports a balance of 100 USDT and its profiles' capital"),
        "{message}"
    );
    let capital = world
        .db
        .store
        .tenant(world.user)
        .capital(world.profile)
        .await
        .unwrap();
    assert_eq!(
        capital.allocated.get(),
        rust_decimal::Decimal::from(CAPITAL)
    );

    let (status, log) = one.stop().await;
    assert!(status.success(), "{log:#?}");
    world.drop_db().await;
}
