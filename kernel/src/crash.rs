//! Crash points: named places on the decision path where a test can make the process die at
//! once, as `kill -9` would — no destructor, no flush, no graceful anything — to prove that
//! restart recovery and reconciliation repair whatever was left.
//!
//! Set `KEEL_CRASH_POINT=NAME` to die the first time the process reaches `NAME`, or
//! `KEEL_CRASH_POINT=NAME@N` to die the (N+1)-th time (the first N pass). Unset, a point costs
//! one load of an initialised `OnceLock` and a branch. The process dies by
//! [`std::process::abort`] (SIGABRT), which, like SIGKILL, runs nothing of the program.
//!
//! `KEEL_CRASH_POINT=panic:NAME` (or `panic:NAME@N`) panics there instead, every time from the
//! (N+1)-th on: a bug on a profile's path, which must fault that profile and leave the process
//! and the other profiles running.
//!
//! | name | where |
//! | --- | --- |
//! | `before_submit` | the write-ahead order row is committed; the request is not sent |
//! | `after_submit_before_answer` | the exchange executed the request; its answer is dropped |
//! | `after_answer_before_commit` | a fill's transaction is written, not committed |
//! | `after_commit` | a fill's transaction is committed; nothing after it ran |
//! | `recovery` | a profile's restart recovery begins |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const ENV: &str = "KEEL_CRASH_POINT";
/// The write-ahead row is committed, the order not sent.
pub const BEFORE_SUBMIT: &str = "before_submit";
/// The exchange executed the order; the answer is lost.
pub const AFTER_SUBMIT_BEFORE_ANSWER: &str = "after_submit_before_answer";
/// A fill's transaction is written but not committed.
pub const AFTER_ANSWER_BEFORE_COMMIT: &str = "after_answer_before_commit";
/// A fill's transaction is committed; nothing after it ran.
pub const AFTER_COMMIT: &str = "after_commit";
/// A profile's restart recovery begins.
pub const RECOVERY: &str = "recovery";
/// Every crash point.
pub const ALL: [&str; 5] = [
    BEFORE_SUBMIT,
    AFTER_SUBMIT_BEFORE_ANSWER,
    AFTER_ANSWER_BEFORE_COMMIT,
    AFTER_COMMIT,
    RECOVERY,
];

/// The prefix that makes an armed point panic instead of aborting.
const PANIC_PREFIX: &str = "panic:";

struct Armed {
    name: String,
    pass: u64,
    panics: bool,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().and_then(|text| parse(&text)))
        .as_ref()
}

fn parse(text: &str) -> Option<Armed> {
    let (text, panics) = match text.strip_prefix(PANIC_PREFIX) {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (name, pass) = match text.split_once('@') {
        Some((name, pass)) => (name, pass.parse().ok()?),
        None => (text, 0),
    };
    ALL.contains(&name).then(|| Armed {
        name: name.to_owned(),
        pass,
        panics,
    })
}

/// Dies (or panics) here if this point is armed and its passes are used up.
pub fn point(name: &'static str) {
    debug_assert!(ALL.contains(&name), "unknown crash point {name}");
    let Some(armed) = armed() else {
        return;
    };
    if armed.name == name && HITS.fetch_add(1, Ordering::Relaxed) >= armed.pass {
        if armed.panics {
            panic!("crash point {name} reached: panicking");
        }
        eprintln!("keel: crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Whether `text` is a valid value of [`ENV`] (for the host to refuse a misspelt one at start).
pub fn is_valid(text: &str) -> bool {
    parse(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_only_for_known_points() {
        assert!(is_valid("before_submit"));
        assert!(is_valid("after_commit@3"));
        assert!(!is_valid("after_comit"));
        assert!(!is_valid("after_commit@x"));
        assert!(is_valid("panic:recovery"));
        assert!(is_valid("panic:before_submit@2"));
        assert!(!is_valid("panic:"));
        assert!(!is_valid("abort:recovery"));
    }
}
