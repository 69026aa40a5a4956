//! Keel's lab: what measures and tries the kernel, never part of a release build.
//!
//! - [`bench`]: `keel bench …`, benchmarks that print their figures. Speed targets are measured
//!   here, never asserted in tests.
//! - [`simulate`]: `keel simulate`, the deterministic simulation of the kernel under faults,
//!   with planted bugs (`keel_kernel::plant`) to show it catches what each protection prevents.
//! - [`native`]: the example strategies' logic run natively, the baseline of `keel bench plugin`.

pub mod bench;
pub mod native;
pub mod simulate;
