//! The lab's own tests: the deterministic simulation, and the native sma-cross against the
//! plugin.

mod equivalence;
mod simulate;
