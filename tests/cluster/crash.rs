//! The crash matrix: an instance dies at each crash point of the decision path
//! (`KEEL_CRASH_POINT`, see `keel_kernel::crash`), a new instance recovers, and the database
//! must equal the exchange with no order placed twice and the capital invariant intact.

use std::os::unix::process::ExitStatusExt as _;

use keel_kernel::crash;

use crate::harness::{Serve, World};
use crate::scenarios::{BUSY_STRATEGY, converge};

/// Crash rounds per point (each with its own pass count); `KEEL_CRASH_ROUNDS` runs more.
const ROUNDS_DEFAULT: u64 = 2;

async fn crash_and_recover(point: &'static str, seed: u64) {
    let rounds = std::env::var("KEEL_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let world = World::create(seed).await;
    for round in 0..rounds {
        // Which hit of the point dies varies with the seed and the round.
        let pass = (seed + round) % 3;
        let armed = format!("{point}@{pass}");
        eprintln!("crash matrix: seed {seed}, round {round}, {armed}");
        let name = format!("victim-{round}");
        let config = world.config_file(&name, "sma_cross.wasm", &BUSY_STRATEGY);
        let victim = Serve::start_with(&name, &config, &[(crash::ENV, &armed)]).await;
        let (status, log) = victim.wait_exit().await;
        assert_eq!(
            status.signal(),
            Some(6),
            "seed {seed} round {round}: {armed} should abort the process, got {status:?}: {log:#?}"
        );
        assert!(
            log.iter()
                .any(|l| l.contains(&format!("crash point {point} reached"))),
            "{log:#?}"
        );
        converge(&world).await;
    }
    world.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_submit_is_recovered() {
    crash_and_recover(crash::BEFORE_SUBMIT, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_submit_before_the_answer_is_recovered() {
    crash_and_recover(crash::AFTER_SUBMIT_BEFORE_ANSWER, 22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_answer_before_the_commit_is_recovered() {
    crash_and_recover(crash::AFTER_ANSWER_BEFORE_COMMIT, 23).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_is_recovered() {
    crash_and_recover(crash::AFTER_COMMIT, 24).await;
}
