//! Several real `keel serve` processes on one real PostgreSQL database, trading on a real
//! `keel exchange-sim` process: profile leases, takeover, fencing of a stale owner, and the
//! agreement of the database with the exchange afterwards.

mod config_check;
mod crash;
mod harness;
mod scenarios;
mod stored;

#[allow(dead_code)] // the store tests' harness, shared: this target uses part of it
#[path = "../../../kernel/tests/store/support.rs"]
mod support;
