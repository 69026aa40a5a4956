//! Several real `keel serve` processes on one real PostgreSQL database, trading on a real
//! `keel exchange-sim` process: profile leases, takeover, fencing of a stale owner, and the
//! agreement of the database with the exchange afterwards.

mod chaos;
mod crash;
mod harness;
mod quarantine;
mod readme;
mod scenarios;
mod stored;
mod tenants;

use keel_testkit::store as support;
