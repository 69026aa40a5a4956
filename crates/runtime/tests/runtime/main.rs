//! Integration tests of the Wasm strategy runtime, against the real example plugins.
//!
//! The plugins are built by `scripts/build-plugins` (which `scripts/test` runs first); a missing
//! plugin fails the test with the command to run, it never skips.

mod blocking;
mod common;
mod fuel;
mod hostile;
mod hot_swap;
mod load;
mod sandbox;
