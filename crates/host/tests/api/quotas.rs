//! Per-user quotas: past one, a request answers 422 naming it (or 429 for the request rate)
//! and writes nothing; another user is not counted against it, and freeing a place frees it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keel_api::Quotas;
use keel_api::health::{LoopConfig, LoopHealth};
use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_exchange_sim::sim_symbols;
use keel_host::serve::ProfileLoops;
use keel_host::serve::cluster::{Cluster, ClusterConfig, ProfileStarter, Refreshed};
use keel_host::serve::control::LoopControl;
use keel_kernel::engine::{EngineConfig, HostSwitches, ProfileEngine, ProfileSpec, VirtualClock};
use keel_kernel::exchange::Exchange;
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::{DirectoryEntry, Store};
use keel_kernel::strategy::{AccountView, PluginFault, RawIntent, StrategyRuntime};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::{Api, Db, plugin_bytes};

crate::api_tests!(
    the_profile_quota_holds_per_user_and_a_delete_frees_a_place,
    concurrent_creates_of_one_user_stop_at_the_quota,
    the_plugin_quotas_hold_per_user,
    a_user_past_their_request_rate_gets_429_then_recovers,
    the_openapi_document_names_every_refusal_and_limit,
    an_instance_runs_each_users_oldest_profiles_within_the_running_quota,
);

/// Creates a profile named `name` as `token`; the reply.
async fn create(api: &Api, token: &str, name: &str) -> crate::Reply {
    api.send(
        "POST",
        "/api/v1/profiles",
        Some(token),
        Some(json!({"name": name})),
    )
    .await
}

async fn the_profile_quota_holds_per_user_and_a_delete_frees_a_place(db: &Db) {
    let api = Api::with_quotas(
        db.store(),
        Quotas {
            profiles_per_user_max: 3,
            ..Quotas::default()
        },
    );
    let token = api.token(UserId::new_random(), false);
    let mut last = String::new();
    for i in 0..3 {
        last = api.create_profile(&token, &format!("p{i}")).await;
    }
    let before = db.fingerprint().await;
    let refused = create(&api, &token, "one more").await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    assert!(
        refused
            .error()
            .starts_with("profiles_per_user_max: a user may have at most 3 profiles"),
        "{refused:?}"
    );
    assert_eq!(before, db.fingerprint().await, "the refusal wrote nothing");
    // Another user is not counted against it, and a deleted profile frees its place.
    let other = api.token(UserId::new_random(), false);
    api.create_profile(&other, "mine").await;
    let deleted = api
        .send(
            "DELETE",
            &format!("/api/v1/profiles/{last}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    api.create_profile(&token, "one more").await;
    let again = create(&api, &token, "and another").await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "{again:?}");
}

async fn concurrent_creates_of_one_user_stop_at_the_quota(db: &Db) {
    let api = Api::with_quotas(
        db.store(),
        Quotas {
            profiles_per_user_max: 3,
            ..Quotas::default()
        },
    );
    // Several rounds, each a fresh user: the requests interleave differently in each.
    for _ in 0..5 {
        let token = api.token(UserId::new_random(), false);
        let names: Vec<String> = (0..16).map(|i| format!("racer {i}")).collect();
        let replies =
            futures::future::join_all(names.iter().map(|name| create(&api, &token, name))).await;
        let created = replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count();
        for refused in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_eq!(
                refused.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{refused:?}"
            );
            assert!(
                refused.error().starts_with("profiles_per_user_max"),
                "{refused:?}"
            );
        }
        assert_eq!(
            created, 3,
            "exactly the quota, however the requests interleave"
        );
        let listed = api
            .send("GET", "/api/v1/profiles", Some(&token), None)
            .await;
        assert_eq!(listed.body.as_array().unwrap().len(), 3);
    }
}

async fn the_plugin_quotas_hold_per_user(db: &Db) {
    let sma = plugin_bytes("sma-cross");
    let rsi = plugin_bytes("rsi-reversion");
    // One plugin per user.
    let api = Api::with_quotas(
        db.store(),
        Quotas {
            plugins_per_user_max: 1,
            ..Quotas::default()
        },
    );
    let token = api.token(UserId::new_random(), false);
    let stored = api.upload(&token, "sma", sma.clone()).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{stored:?}");
    let before = db.fingerprint().await;
    let refused = api.upload(&token, "rsi", rsi.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    assert!(
        refused
            .error()
            .starts_with("plugins_per_user_max: a user may store at most 1 plugins"),
        "{refused:?}"
    );
    // Refused before it is compiled: bytes that are no plugin at all are refused for the quota.
    let garbage = api.upload(&token, "junk", vec![7u8; 1000]).await;
    assert!(
        garbage.error().starts_with("plugins_per_user_max"),
        "{garbage:?}"
    );
    assert_eq!(before, db.fingerprint().await, "the refusals wrote nothing");
    let same = api.upload(&token, "sma", sma.clone()).await;
    assert_eq!(
        same.status,
        StatusCode::OK,
        "the same bytes again store nothing new: {same:?}"
    );
    let other = api.token(UserId::new_random(), false);
    assert_eq!(
        api.upload(&other, "rsi", rsi.clone()).await.status,
        StatusCode::CREATED
    );

    // Two uploads at once, each checked before it is compiled while nothing is stored yet: the
    // check where the row is written keeps the second out.
    let token = api.token(UserId::new_random(), false);
    let (first, second) = tokio::join!(
        api.upload(&token, "sma", sma.clone()),
        api.upload(&token, "rsi", rsi.clone())
    );
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::UNPROCESSABLE_ENTITY],
        "{first:?} {second:?}"
    );
    let listed = api.send("GET", "/api/v1/plugins", Some(&token), None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);

    // Room for the bytes of one of the two, not both.
    let size = sma.len().max(rsi.len()) as u64;
    let api = Api::with_quotas(
        db.store(),
        Quotas {
            plugin_bytes_per_user_max: size + sma.len().min(rsi.len()) as u64 - 1,
            ..Quotas::default()
        },
    );
    let token = api.token(UserId::new_random(), false);
    let first = api.upload(&token, "sma", sma.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let before = db.fingerprint().await;
    let refused = api.upload(&token, "rsi", rsi.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    let says = format!(
        "plugin_bytes_per_user_max: a user may store at most {} bytes of plugins; {} are stored and this one has {}",
        size + sma.len().min(rsi.len()) as u64 - 1,
        sma.len(),
        rsi.len()
    );
    assert_eq!(refused.error(), says);
    assert_eq!(before, db.fingerprint().await, "the refusal wrote nothing");
    let other = api.token(UserId::new_random(), false);
    assert_eq!(
        api.upload(&other, "rsi", rsi).await.status,
        StatusCode::CREATED,
        "another user's bytes are theirs"
    );
}

async fn a_user_past_their_request_rate_gets_429_then_recovers(db: &Db) {
    let api = Api::with_quotas(
        db.store(),
        Quotas {
            requests_per_second_max: 1,
            request_burst_max: 3,
            ..Quotas::default()
        },
    );
    let user = api.token(UserId::new_random(), false);
    let other = api.token(UserId::new_random(), false);
    // The store's first request may be slow; the burst below must be well within a second.
    let warm = api.token(UserId::new_random(), false);
    api.send("GET", "/api/v1/profiles", Some(&warm), None).await;
    for _ in 0..3 {
        let listed = api.send("GET", "/api/v1/profiles", Some(&user), None).await;
        assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    }
    let before = db.fingerprint().await;
    let request = Request::post("/api/v1/profiles")
        .header(header::AUTHORIZATION, format!("Bearer {user}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"name": "too fast"}).to_string()))
        .unwrap();
    let (refused, headers) = api.raw_with_headers(request).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
    assert_eq!(refused.body["code"], "too_many_requests");
    assert!(
        refused.error().starts_with(
            "requests_per_second_max: a user may make 1 requests a second (bursts of 3)"
        ),
        "{refused:?}"
    );
    let retry_after: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    assert_eq!(before, db.fingerprint().await, "the refusal wrote nothing");
    // Another user has a rate of their own; a request without a token is still a 401.
    assert_eq!(
        api.send("GET", "/api/v1/profiles", Some(&other), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.send("GET", "/api/v1/profiles", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // After the wait it names, the user may ask again, at the rate.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let created = create(&api, &user, "in time").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(
        create(&api, &user, "again too fast").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn the_openapi_document_names_every_refusal_and_limit(db: &Db) {
    let api = Api::new(db.store());
    let doc = api.send("GET", "/openapi.json", None, None).await.body;
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let route = format!("{} {path}", method.to_uppercase());
            let responses = operation["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            assert!(has("401") && has("429"), "{route}: {responses:?}");
            let has_parameters = operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty());
            let body = &operation["requestBody"]["content"];
            if has_parameters || body.is_object() {
                assert!(has("400"), "{route} reads input, and may get it wrong");
            }
            if body.is_object() {
                assert!(has("413") && has("422"), "{route}: {responses:?}");
            }
            if body["application/json"].is_object() {
                assert!(has("415"), "{route} reads JSON");
            }
            if path.starts_with("/api/v1/operator/") {
                assert!(has("403"), "{route}");
            }
        }
    }
    assert!(operations >= 27, "{operations} operations described");
    let create = &doc["paths"]["/api/v1/profiles"]["post"]["responses"];
    let says = create["422"]["description"].as_str().unwrap();
    assert!(says.contains("profiles_per_user_max"), "{says}");
    let upload = &doc["paths"]["/api/v1/plugins"]["post"]["responses"];
    let says = upload["422"]["description"].as_str().unwrap();
    assert!(
        says.contains("plugins_per_user_max") && says.contains("plugin_bytes_per_user_max"),
        "{says}"
    );
    let says = create["429"]["description"].as_str().unwrap();
    assert!(says.contains("requests_per_second_max"), "{says}");
    assert!(create["429"]["headers"]["Retry-After"].is_object());
    // Field limits.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CreateProfile"]["properties"]["name"]["maxLength"],
        64
    );
    assert_eq!(
        schemas["CreateProfile"]["properties"]["name"]["minLength"],
        1
    );
    assert_eq!(
        schemas["RiskConfig"]["properties"]["symbols_allowed"]["maxItems"],
        64
    );
    assert_eq!(
        schemas["BindPlugin"]["properties"]["config"]["maxProperties"],
        64
    );
}

/// A strategy that asks for nothing.
struct Idle;

impl StrategyRuntime for Idle {
    fn init(&mut self, _: &[(String, String)]) -> Result<(), PluginFault> {
        Ok(())
    }

    fn on_candle(&mut self, _: &Candle, _: &AccountView) -> Result<Vec<RawIntent>, PluginFault> {
        Ok(Vec::new())
    }
}

/// Starts each profile the cluster takes on a paper account, and records which run.
struct RecordingStarter {
    paper: Arc<PaperExchange>,
    control: LoopControl,
    switches: Arc<HostSwitches>,
    running: Mutex<BTreeSet<ProfileId>>,
    started: Mutex<Vec<ProfileId>>,
    /// Kept so the cluster's settings channel stays open.
    credentials: Mutex<Vec<mpsc::UnboundedSender<ProfileId>>>,
}

#[async_trait::async_trait]
impl ProfileStarter for RecordingStarter {
    async fn start(&self, entry: DirectoryEntry, store: Store) -> anyhow::Result<ProfileLoops> {
        let clock = Arc::new(VirtualClock::new(1_700_000_000_000));
        let exchange: Arc<dyn Exchange> = self.paper.clone();
        let engine = ProfileEngine::new(
            ProfileSpec {
                profile: entry.profile,
                user: entry.user,
                limits: RiskLimits::conservative([Symbol::new("BTCUSDT").unwrap()]),
            },
            EngineConfig::default(),
            store,
            exchange,
            Box::new(Idle),
            clock.clone(),
            Arc::new(Metrics::new()),
            self.switches.clone(),
            OwnerToken::new_random(),
        );
        let (_candle_tx, candles) = mpsc::channel(1);
        let commands = self.control.register(entry.profile, None, clock);
        self.running.lock().unwrap().insert(entry.profile);
        self.started.lock().unwrap().push(entry.profile);
        Ok(ProfileLoops {
            engine,
            candles,
            events: self.paper.user_events().await?,
            commands,
            plugin: None,
        })
    }

    async fn refresh(&self, _: DirectoryEntry, _: &Store) -> anyhow::Result<Refreshed> {
        Ok(Refreshed::Applied)
    }

    fn switches(&self) -> &HostSwitches {
        &self.switches
    }

    fn account_changes(&self) -> mpsc::UnboundedReceiver<ProfileId> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.credentials.lock().unwrap().push(tx);
        rx
    }

    fn stopped(&self, profile: ProfileId) {
        self.running.lock().unwrap().remove(&profile);
        self.control.forget(profile);
    }
}

async fn an_instance_runs_each_users_oldest_profiles_within_the_running_quota(db: &Db) {
    let store = db.store();
    let (a, b) = (UserId::new_random(), UserId::new_random());
    let mut created = Vec::new();
    for (user, name) in [(a, "a1"), (a, "a2"), (b, "b1"), (a, "a3")] {
        let mut tx = store.tenant(user).begin().await.unwrap();
        created.push(tx.create_profile(name).await.unwrap());
        tx.commit().await.unwrap();
        // Distinct creation times: the directory lists them in this order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let [a1, a2, b1, a3] = created[..] else {
        unreachable!()
    };
    let switches = Arc::new(HostSwitches::default());
    let starter = Arc::new(RecordingStarter {
        paper: Arc::new(PaperExchange::new(
            PaperConfig::default(),
            sim_symbols().into_iter().map(|(rules, _)| rules),
        )),
        control: LoopControl::new(switches.clone()),
        switches,
        running: Mutex::default(),
        started: Mutex::default(),
        credentials: Mutex::default(),
    });
    let config = LoopConfig {
        reconcile_interval_ms: 3_600_000,
        trading_stall_ms: 60_000,
        monitor_stall_ms: 60_000,
        reconciliation_stall_ms: 60_000,
    };
    let metrics = Arc::new(Metrics::new());
    let cluster = Cluster::new(
        store.clone(),
        OwnerToken::new_random(),
        ClusterConfig {
            lease_ttl_ms: 10_000,
            lease_renew_ms: 100,
            profiles_max: 100,
            running_per_user_max: 2,
        },
        config,
        starter.clone(),
        metrics.clone(),
        Arc::new(LoopHealth::new(usize::MAX)),
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(cluster.run(stop_rx));
    let running = || starter.running.lock().unwrap().clone();
    let wait_for = |expected: BTreeSet<ProfileId>| {
        let starter = starter.clone();
        keel_testkit::wait_for(
            "the profiles within the quota to run",
            Duration::from_secs(60),
            move || {
                let now = starter.running.lock().unwrap().clone();
                let matches = now == expected;
                async move { matches }
            },
        )
    };
    wait_for(BTreeSet::from([a1, a2, b1])).await;
    // Many more rounds of the directory: the third of user a's still waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running(), BTreeSet::from([a1, a2, b1]));
    assert!(!starter.started.lock().unwrap().contains(&a3));
    // The API says why, in the profile's view and in the list.
    let api = Api::with_quotas(
        store.clone(),
        Quotas {
            running_profiles_per_user_max: 2,
            ..Quotas::default()
        },
    );
    let token = api.token(a, false);
    let waiting = |view: &serde_json::Value| view["waiting"].as_str().map(str::to_owned);
    let read = |profile: ProfileId| {
        let (api, token) = (&api, &token);
        async move {
            api.send(
                "GET",
                &format!("/api/v1/profiles/{profile}"),
                Some(token),
                None,
            )
            .await
            .body
        }
    };
    let says = waiting(&read(a3).await).expect("a3 waits");
    assert!(
        says.starts_with("running_profiles_per_user_max: a user runs at most 2 profiles"),
        "{says}"
    );
    assert_eq!(waiting(&read(a1).await), None);
    let listed = api
        .send("GET", "/api/v1/profiles", Some(&token), None)
        .await;
    let waits: Vec<bool> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| waiting(v).is_some())
        .collect();
    assert_eq!(waits, [false, false, true], "a1, a2 run; a3 waits");
    // Deleting one of the running ones lets it start.
    let mut tx = store.tenant(a).begin().await.unwrap();
    assert!(tx.delete_profile(a1).await.unwrap());
    tx.commit().await.unwrap();
    wait_for(BTreeSet::from([a2, b1, a3])).await;
    assert_eq!(waiting(&read(a3).await), None);
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the instance stops")
        .unwrap()
        .unwrap();
}
