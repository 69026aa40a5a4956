//! Keel's store against real databases: the contract on PostgreSQL and SQLite, a property test
//! of the ledger against a model, concurrency, and tenant isolation on PostgreSQL.

mod concurrency;
mod contract;
mod fixtures;
mod metrics;
mod property;
use keel_testkit::store as support;
mod tenancy;
