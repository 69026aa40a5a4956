//! The race for a profile and the stale owner, with real processes.

use crate::harness::{Serve, World, clear_faults, now_secs, signal, wait_for};

/// A moving-average cross that turns on almost every candle: entries and exits all the time.
pub const BUSY_STRATEGY: [(&str, &str); 3] =
    [("fast", "1"), ("slow", "2"), ("size_fraction", "0.02")];

/// Orders the trading instances must have placed before the checks.
const PLACEMENTS_MIN: usize = 6;

async fn wait_for_placements(world: &World, at_least: usize) {
    wait_for(
        &format!("{at_least} placements on the exchange"),
        || async { world.sim.placements().await.len() >= at_least },
    )
    .await;
}

/// Stops every instance with SIGTERM (each must exit cleanly and release its lease), then
/// checks that the database converges to the exchange.
pub async fn settle(world: &World, instances: Vec<Serve>) -> Vec<(String, Vec<String>)> {
    let mut logs = Vec::new();
    for instance in instances {
        let name = instance.name.clone();
        let (status, log) = instance.stop().await;
        assert!(status.success(), "{name} exited with {status:?}: {log:#?}");
        logs.push((name, log));
    }
    assert_eq!(
        world.lease().await,
        None,
        "a clean shutdown releases the lease"
    );
    converge(world).await;
    logs
}

async fn reconciliation_passes(instance: &Serve) -> f64 {
    let mut passes = 0.0;
    for result in ["clean", "repaired", "quarantined"] {
        passes += instance
            .metric(&format!(
                "keel_reconciliation_runs_total{{result=\"{result}\"}}"
            ))
            .await;
    }
    passes
}

/// Runs one instance whose strategy never trades until restart recovery and a later clean
/// reconciliation pass are done and no order waits for the exchange's word; stops it, then
/// the database must equal the exchange.
pub async fn converge(world: &World) {
    let config = world.config_file("settle", "boundary.wasm", &[]);
    let settle = Serve::start("settle", &config).await;
    wait_for("the settling instance's recovery", || async {
        settle.get("/readyz").await.0 == 200
    })
    .await;
    // Recovery's pass and the next: by then the database equals the exchange on everything
    // the exchange knows.
    wait_for("two reconciliation passes", || async {
        reconciliation_passes(&settle).await >= 2.0
    })
    .await;
    world.assert_agreement_on_what_the_exchange_knows().await;
    wait_for("a clean reconciliation pass after recovery", || async {
        settle
            .metric("keel_reconciliation_last_clean_pass_timestamp_seconds")
            .await
            > 0.0
    })
    .await;
    // An order the exchange never received is declared never placed once
    // engine.unknown_resolve_after_ms has passed.
    wait_for("every order resolved", || async {
        world.unresolved_orders().await == 0
    })
    .await;
    let (status, log) = settle.stop().await;
    assert!(status.success(), "settle exited with {status:?}: {log:#?}");
    world.assert_agreement().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_racing_for_one_profile_place_each_decision_once() {
    let world = World::create(11).await;
    let names = ["a", "b", "c"];
    let configs: Vec<_> = names
        .iter()
        .map(|n| world.config_file(n, "sma_cross.wasm", &BUSY_STRATEGY))
        .collect();
    let instances = futures::future::join_all(
        names
            .iter()
            .zip(&configs)
            .map(|(name, config)| Serve::start(name, config)),
    )
    .await;
    wait_for("one instance to hold the profile", || async {
        world.lease().await.is_some()
    })
    .await;
    let (holder, fence) = world.lease().await.unwrap();
    let holders: Vec<&Serve> = instances.iter().filter(|s| s.owner == holder).collect();
    assert_eq!(
        holders.len(),
        1,
        "the lease belongs to exactly one instance"
    );
    wait_for_placements(&world, PLACEMENTS_MIN).await;
    assert_eq!(
        world.lease().await,
        Some((holder, fence)),
        "live instances never take a held profile"
    );
    for idle in instances.iter().filter(|s| s.owner != holder) {
        let sent = idle
            .metric("keel_orders_total{status=\"PENDING_SUBMIT\"}")
            .await;
        assert_eq!(
            sent, 0.0,
            "{} wrote orders for a profile it does not hold",
            idle.name
        );
    }
    settle(&world, instances).await;
    world.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_stopped_past_its_lease_is_fenced_out_after_the_takeover() {
    let world = World::create(12).await;
    let first = Serve::start(
        "first",
        &world.config_file("first", "sma_cross.wasm", &BUSY_STRATEGY),
    )
    .await;
    wait_for("the first instance to hold the profile", || async {
        world
            .lease()
            .await
            .is_some_and(|(owner, _)| owner == first.owner)
    })
    .await;
    let (_, first_fence) = world.lease().await.unwrap();
    let second = Serve::start(
        "second",
        &world.config_file("second", "sma_cross.wasm", &BUSY_STRATEGY),
    )
    .await;
    wait_for_placements(&world, 3).await;

    signal(first.pid(), "STOP");
    wait_for("the second instance to take the profile over", || async {
        world
            .lease()
            .await
            .is_some_and(|(owner, _)| owner == second.owner)
    })
    .await;
    let (_, second_fence) = world.lease().await.unwrap();
    assert!(second_fence > first_fence, "a takeover gets a larger fence");
    let at_takeover = world.sim.placements().await.len();
    wait_for_placements(&world, at_takeover + 2).await;
    assert!(
        second.metric("keel_warm_up_candles_total").await > 0.0,
        "the new owner's strategy caught up on the exchange's recent candles before deciding"
    );

    // The stale owner wakes up with candles queued and a lease it believes it holds.
    signal(first.pid(), "CONT");
    wait_for("the stale owner to stop the profile", || async {
        let (_, body) = first.get("/internal/health").await;
        body.contains("\"role\":\"standby\"")
    })
    .await;
    let resumed_at = world.sim.placements().await.len();
    wait_for_placements(&world, resumed_at + 2).await;
    assert_eq!(
        world.lease().await.map(|(owner, _)| owner),
        Some(second.owner),
        "the stale owner never takes the profile back while the new owner renews"
    );
    let logs = settle(&world, vec![first, second]).await;
    let stale_log = &logs[0].1;
    assert!(
        stale_log.iter().any(|l| l.contains("stopping the profile")),
        "the stale owner noticed it lost the lease: {stale_log:#?}"
    );
    world.drop_db().await;
}

/// Instances share the profiles out evenly: one that joins gets its share, handed over by the
/// instance that ran them all; when it leaves, the other takes them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_instance_takes_its_share_of_the_profiles_and_a_leaving_one_gives_them_back() {
    let world = World::create(31).await;
    let tenant = world.db.store.tenant(world.user);
    for name in ["second", "third", "fourth"] {
        let profile = tenant.create_profile(name).await.unwrap();
        tenant
            .allocate(
                profile,
                keel_kernel::money::Amount::positive(rust_decimal::Decimal::from(1_000)).unwrap(),
            )
            .await
            .unwrap();
    }
    let config = |name| world.config_file(name, "boundary.wasm", &[]);
    let first = Serve::start("first", &config("first")).await;
    wait_for("the first instance running all four", || async {
        first.metric("keel_profiles_owned").await == 4.0
    })
    .await;

    let second = Serve::start("second", &config("second")).await;
    wait_for("two profiles each", || async {
        first.metric("keel_profiles_owned").await == 2.0
            && second.metric("keel_profiles_owned").await == 2.0
    })
    .await;
    assert_eq!(second.metric("keel_cluster_instances").await, 2.0);

    let (status, log) = second.stop().await;
    assert!(status.success(), "{log:#?}");
    wait_for("the first instance running all four again", || async {
        first.metric("keel_profiles_owned").await == 4.0
    })
    .await;
    let (status, log) = first.stop().await;
    assert!(status.success(), "{log:#?}");
    world.drop_db().await;
}

/// An instance killed with `kill -9` leaves its presence row behind; the survivors remove it once
/// it has expired, and count one instance fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_presence_is_removed_by_the_survivors() {
    let world = World::create(33).await;
    let config = |name| world.config_file(name, "boundary.wasm", &[]);
    let first = Serve::start("first", &config("first")).await;
    let second = Serve::start("second", &config("second")).await;
    wait_for("both instances present", || async {
        first.metric("keel_cluster_instances").await == 2.0
    })
    .await;
    let presence = |owner: uuid::Uuid| {
        let pool = world.db.store.pg_pool().unwrap().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM profile_leases WHERE lock_key = $1")
                .bind(format!("instance:{owner}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(presence(second.owner).await, 1);
    signal(second.pid(), "KILL");
    wait_for(
        "the killed instance's presence row to be removed",
        || async { presence(second.owner).await == 0 },
    )
    .await;
    assert_eq!(first.metric("keel_cluster_instances").await, 1.0);
    assert_eq!(
        presence(first.owner).await,
        1,
        "the live instance keeps its own"
    );
    let (status, log) = first.stop().await;
    assert!(status.success(), "{log:#?}");
    world.drop_db().await;
}

/// An exchange that answers every request with a 503 at start delays `keel serve`, which keeps
/// trying; it does not end it. Once the exchange answers, the instance becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_out_an_exchange_that_is_down_at_start() {
    let world = World::create_with(34, &["--faults", "unavailable_rate=1"]).await;
    let config = world.config_file("first", "boundary.wasm", &[]);
    let sim = world.sim.addr.clone();
    let heal = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        clear_faults(&sim).await;
    });
    // It prints its address once connected.
    let first = Serve::start("first", &config).await;
    heal.await.unwrap();
    wait_for("the instance to be ready", || async {
        first.get("/readyz").await.0 == 200
    })
    .await;
    let (status, log) = first.stop().await;
    assert!(status.success(), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("the exchange is not reachable yet")),
        "each failed attempt is logged: {log:#?}"
    );
    world.drop_db().await;
}

/// The host-wide kill switch is the database's: engaged by an operator through one instance, it
/// stops new entries on the instance that runs the profile; released, they resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_kill_switch_engaged_through_one_instance_stops_entries_on_another() {
    let world = World::create(32).await;
    let config = |name| world.config_file(name, "sma_cross.wasm", &BUSY_STRATEGY);
    let runner = Serve::start("runner", &config("runner")).await;
    wait_for_placements(&world, 2).await;
    let other = Serve::start("other", &config("other")).await;
    wait_for("the other instance up", || async {
        other.metric("keel_cluster_instances").await == 2.0
    })
    .await;
    assert_eq!(other.metric("keel_profiles_owned").await, 0.0);

    let token = keel_api::auth::JwtKeys::new(b"cluster-test-secret-cluster-test-secret")
        .unwrap()
        .mint(
            keel_kernel::ids::UserId::new_random(),
            true,
            now_secs(),
            600,
        );
    let kill = |method: reqwest::Method| {
        let url = format!("{}/api/v1/operator/kill", other.base);
        let token = token.clone();
        async move {
            let response = reqwest::Client::new()
                .request(method, url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    kill(reqwest::Method::POST).await;
    let refused = "keel_risk_refusals_total{rule=\"entry_blocked\"}";
    wait_for("entries refused on the running instance", || async {
        runner.metric(refused).await > 0.0
    })
    .await;

    kill(reqwest::Method::DELETE).await;
    let refusals = runner.metric(refused).await;
    let placed = world.sim.placements().await.len();
    wait_for("entries placed again after the release", || async {
        world.sim.placements().await.len() > placed + 1
    })
    .await;
    // Nothing refused by the switch once the release was applied (a step in flight may have).
    assert!(runner.metric(refused).await <= refusals + 1.0);

    settle(&world, vec![runner, other]).await;
    world.drop_db().await;
}
