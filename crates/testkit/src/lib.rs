//! Keel's test kit: what the test suites of every crate share.
//!
//! - [`store`]: a fresh PostgreSQL database per test with the production role layout (owner,
//!   host role without table ownership), a fresh SQLite file, and a [`store::Harness`] with raw
//!   access for tampering; [`contract_tests!`] declares a test once per backend.
//! - [`example_plugin_path`] / [`example_plugin_bytes`]: the example strategies built by
//!   `scripts/build-plugins`.
//! - [`wait_for`]: polls a condition with a deadline, so no test waits without end.
//! - [`readme`]: the shell commands of README.md's sections, for tests that run them as written.
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! keel_testkit::wait_for("the answer", Duration::from_secs(5), || async { true }).await;
//! # }
//! ```

pub mod readme;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A port nothing listens on now, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("the loopback interface gives a free port")
        .port()
}

/// The root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The file of an example plugin by crate name (e.g. `sma-cross`), as `scripts/build-plugins`
/// leaves it. Fails the test with the command to run when the plugins were not built.
pub fn example_plugin_path(name: &str) -> PathBuf {
    let path = repo_root()
        .join("plugins-example/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "example plugin {} is missing: build the plugins first with scripts/build-plugins \
         (scripts/test does)",
        path.display()
    );
    path
}

/// The bytes of an example plugin by crate name (see [`example_plugin_path`]).
pub fn example_plugin_bytes(name: &str) -> Vec<u8> {
    let path = example_plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Polls `condition` every 100 ms until it holds; fails the test after `max`.
pub async fn wait_for<F, Fut>(what: &str, max: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < max,
            "timed out after {max:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Components built to make a compiler work hard: what the plugin engine's compile limits are
/// tried with. Each is a component of one core module and exports nothing a strategy needs, so
/// only the limits (or the compiler) stop it.
pub mod compile_bomb {
    /// `functions` empty functions.
    pub fn many_functions(functions: usize) -> Vec<u8> {
        let mut text = String::from("(component (core module");
        text.push_str(&" (func)".repeat(functions));
        text.push_str("))");
        wat::parse_str(&text).expect("a valid component")
    }

    /// One function with `locals` locals, every one of them live at once: each is set from the
    /// one before it and all are summed at the end.
    pub fn many_live_locals(locals: usize) -> Vec<u8> {
        let mut text = String::from("(component (core module (func (result i64)");
        text.push_str(&format!(" (local {})", "i64 ".repeat(locals.max(1))));
        text.push_str(" i64.const 1 local.set 0");
        for i in 1..locals {
            text.push_str(&format!(
                " local.get {} i64.const {i} i64.mul local.set {i}",
                i - 1
            ));
        }
        text.push_str(" i64.const 0");
        for i in 0..locals {
            text.push_str(&format!(" local.get {i} i64.add"));
        }
        text.push_str(")))");
        wat::parse_str(&text).expect("a valid component")
    }

    /// `functions` functions of a few hundred instructions each, under every structural limit:
    /// slow to compile only in bulk.
    pub fn slow_to_compile(functions: usize) -> Vec<u8> {
        let mut body = String::from(" (func (param i64) (result i64) local.get 0");
        for i in 0..100 {
            body.push_str(&format!(" i64.const {i} i64.mul local.get 0 i64.add"));
        }
        body.push(')');
        let mut text = String::from("(component (core module");
        text.push_str(&body.repeat(functions));
        text.push_str("))");
        wat::parse_str(&text).expect("a valid component")
    }
}
