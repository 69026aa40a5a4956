//! Chaos: three `keel serve` instances trading one busy profile on a `keel exchange-sim` whose
//! faults run at the whole time (unknown answers, lost responses, 503s, 429s, a dropping and
//! reordering stream), while a seeded schedule kills instances with `kill -9` (restarting them)
//! and stops them with SIGSTOP past their lease TTL. Afterwards the database must equal the
//! exchange order by order: nothing placed twice, fills against trades, positions, the capital
//! invariant and the journal.
//!
//! `KEEL_CHAOS_ROUNDS` sets the number of rounds (default 4, which fits the test suite; a longer
//! run is the same test with a larger number) and `KEEL_CHAOS_SEED` the schedule's seed.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::harness::{LEASE_TTL_MS, Serve, World, clear_faults, signal, wait_for};
use crate::scenarios::{BUSY_STRATEGY, settle};

/// The faults the simulator injects for the whole run, at rates a bad day on an exchange has.
const FAULTS: &str = "unknown_rate=0.05,lost_response_rate=0.03,lost_response_hold_ms=1500,\
                      unavailable_rate=0.05,rate_limit_rate=0.03,retry_after_s=1,\
                      stream_drop_rate=0.05,stream_duplicate_rate=0.05,stream_reorder_rate=0.05,\
                      latency_ms=5";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rounds_leave_the_database_equal_to_the_exchange() {
    let rounds = env_number("KEEL_CHAOS_ROUNDS", 4);
    let seed = env_number("KEEL_CHAOS_SEED", 41);
    eprintln!("chaos: {rounds} rounds, seed {seed} (KEEL_CHAOS_ROUNDS, KEEL_CHAOS_SEED)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let world = World::create_with(seed, &["--faults", FAULTS]).await;
    let names = ["a", "b", "c"];
    let config = |name: &str| world.config_file(name, "sma_cross.wasm", &BUSY_STRATEGY);
    let mut instances = Vec::new();
    for name in names {
        instances.push(Serve::start(name, &config(name)).await);
    }
    for round in 0..rounds {
        let placed = world.sim.placements().await.len();
        wait_for(&format!("round {round}: trading goes on"), || async {
            world.sim.placements().await.len() > placed
        })
        .await;
        let victim = rng.gen_range(0..instances.len());
        if rng.gen_bool(0.5) {
            let name = instances[victim].name.clone();
            eprintln!("chaos round {round}: kill -9 {name}");
            signal(instances[victim].pid(), "KILL");
            // A brief absence or one past the lease TTL, then the instance comes back.
            let down_ms = rng.gen_range(0..2 * LEASE_TTL_MS as u64);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            instances[victim] = Serve::start(&name, &config(&name)).await;
        } else {
            let stopped_ms = rng.gen_range(LEASE_TTL_MS as u64..3 * LEASE_TTL_MS as u64);
            eprintln!(
                "chaos round {round}: SIGSTOP {} for {stopped_ms} ms",
                instances[victim].name
            );
            signal(instances[victim].pid(), "STOP");
            tokio::time::sleep(Duration::from_millis(stopped_ms)).await;
            signal(instances[victim].pid(), "CONT");
        }
    }
    // A killed holder's lease lapses and a live instance takes the profile over, so that the
    // clean shutdown below releases it.
    let owners: Vec<uuid::Uuid> = instances.iter().map(|i| i.owner).collect();
    wait_for("a live instance to hold the profile", || async {
        world
            .lease()
            .await
            .is_some_and(|(owner, _)| owners.contains(&owner))
    })
    .await;
    // The exchange heals; the instances stop; a settling instance converges; then the check.
    clear_faults(&world.sim.addr).await;
    settle(&world, instances).await;
    world.assert_agreement().await;
    let fills_without_trades = world.fills_without_exchange_trades().await;
    assert!(
        fills_without_trades.is_empty(),
        "fills the exchange has no trade for: {fills_without_trades:?}"
    );
    world.drop_db().await;
}
