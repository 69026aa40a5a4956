//! Keel's safety kernel.
//!
//! Strategies are untrusted: they only *ask* for entries and exits. This crate is the part of
//! Keel that decides. It owns the domain types (ids, money, market data), the validation of what
//! a strategy asks for, the capital ledger and its invariant, the order lifecycle, lease locks,
//! reconciliation against the exchange, and the [`store`] that persists all of it. It knows
//! nothing of WebAssembly or HTTP: the host crate plugs a Wasm runtime and exchange adapters into
//! the traits defined here.
//!
//! ```
//! use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, Symbol};
//!
//! let profile = ProfileId::new_random();
//! let symbol = Symbol::new("BTCUSDT").unwrap();
//! // A decision re-made after a crash gets the same client order id.
//! assert_eq!(
//!     ClientOrderId::derive(profile, &symbol, 7, IntentKind::Entry),
//!     ClientOrderId::derive(profile, &symbol, 7, IntentKind::Entry),
//! );
//! ```

#[cfg(feature = "lab")]
pub mod crash;
pub mod engine;
pub mod exchange;
pub mod ids;
pub mod ledger;
pub mod lifecycle;
pub mod lock;
pub mod market;
pub mod metrics;
pub mod money;
pub mod order;
pub mod plant;
pub mod risk;
pub mod store;
pub mod strategy;
