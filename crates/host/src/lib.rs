//! Keel's host assembled: the one place where the kernel, the Wasm runtime, an exchange adapter
//! and the API are put together into a running host.
//!
//! - [`assemble`]: the host assembled, the same for both commands: the metrics, the plugin
//!   engine, the API and its loop control, the live feed, the operational endpoints, shutdown;
//!   and how each profile's loops are built.
//! - [`serve`]: the per-profile loops (trading, monitor, reconciliation), the cluster of
//!   instances sharing profiles by lease, the operational HTTP server, and `keel serve`.
//! - [`config`]: `keel serve`'s configuration file and its `KEEL_*` overrides.
//! - [`demo`]: `keel demo`, the embedded default: SQLite, the paper exchange over a random walk,
//!   the example plugins.
//! - `paper`: the paper accounts of profiles that trade on no real exchange account, restored
//!   from the store.

pub mod assemble;
pub mod config;
pub mod demo;
mod paper;
pub mod serve;
