//! The sandboxed WebAssembly strategy runtime: Keel's implementation of the kernel's
//! [`StrategyRuntime`](keel_kernel::strategy::StrategyRuntime) for plugins of the
//! `keel:strategy` world (`wit/strategy.wit`, version 0.1.1, serving 0.1.0 components too).
//!
//! ```no_run
//! use std::sync::Arc;
//! use keel_runtime::{EngineSettings, InstanceSetup, PluginEngine};
//! use keel_kernel::engine::SystemClock;
//! use keel_kernel::ids::ProfileId;
//! use keel_kernel::strategy::StrategyRuntime;
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = PluginEngine::new(EngineSettings::default())?;
//! let version = engine.load(&std::fs::read("sma-cross.wasm")?)?;
//! let setup = InstanceSetup::new(ProfileId::new_random(), Arc::new(SystemClock))
//!     .config([("fast", "10"), ("slow", "30")]);
//! let mut strategy = engine.start(&version, setup)?; // a `StrategyRuntime`
//! # Ok(()) }
//! ```
//!
//! # Core concepts
//!
//! - [`PluginEngine`]: one per process. It owns the wasmtime `Engine` (pooling allocator, fuel,
//!   epoch interruption), the `Linker` that serves the `strategy` world and WASI 0.2 with no
//!   authority, the epoch ticker thread, the compiled-code cache and the fault ledger.
//! - [`PluginVersion`]: one loaded plugin file, validated and compiled once (an `InstancePre`),
//!   identified by its sha256 ([`PluginDigest`]).
//! - [`PreparedInstance`]: an instantiated, initialised instance in its own `Store`, not yet
//!   serving a profile.
//! - [`WasmStrategy`]: the instance serving one profile, implementing `StrategyRuntime`. A fault
//!   drops its instance for good; a hot-swap replaces it at a call boundary through its
//!   [`SwapHandle`].
//! - [`params`]: the parameters a plugin declares (`strategy-with-params`), read once at load
//!   and checked against every configuration before `init`.

mod cache;
pub mod check;
mod clock;
pub mod compile;
mod convert;
mod deadline;
mod engine;
mod executor;
mod faults;
mod guest;
mod instance;
mod limits;
mod log;
pub mod params;
mod state;
mod strategy;

pub use cache::{CACHE_DIR_ENV, CompileSource, user_cache_dir};
pub use compile::{CompileCancel, CompileLimits};
pub use engine::{
    CONTRACT_VERSIONS, InstanceSetup, LoadReport, PARAMS_EXPORT, PLUGIN_NAME_DEFAULT, PluginEngine,
    PluginVersion,
};
pub use executor::panic_message;
pub use faults::FaultCounts;
pub use guest::GuestLanguage;
pub use instance::PreparedInstance;
pub use limits::{
    EngineSettings, KEEP_RESIDENT_BYTES_DEFAULT, PLUGIN_BYTES_MAX_DEFAULT, PluginLimits,
};
pub use log::{LOG_LINES_RETAINED_MAX, LogCounters, LogLevel, LogLine};
pub use strategy::{RunningVersion, SwapHandle, WasmStrategy};

/// The sha256 of a plugin file, in hex: the identity of a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PluginDigest(String);

impl PluginDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        PluginDigest(hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for PluginDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bindings generated from `wit/strategy.wit`.
pub(crate) mod wit {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "keel:strategy/strategy",
    });
}
