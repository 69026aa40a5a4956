//! Keel's host: the edges around the kernel.
//!
//! The kernel (`keel-kernel`) decides; this crate connects it to the world: the wasmtime runtime
//! that runs strategy plugins, exchange adapters, the HTTP API, metrics and the `keel` CLI.

pub mod api;
pub mod auth;
pub mod backtest;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod exchange;
pub mod live;
pub mod logging;
pub mod runtime;
pub mod serve;
pub mod simulate;
