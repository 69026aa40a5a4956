//! `keel plugin check` loads a plugin as the host does and says so by its exit code.

use std::process::Command;

fn plugin_path(name: &str) -> std::path::PathBuf {
    let _ = crate::common::plugin_bytes(name); // fails clearly when the plugins were not built
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins-example/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

#[test]
fn plugin_check_accepts_an_example_plugin_and_prints_its_world() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(plugin_path("sma-cross"))
        .args(["--config", "fast=5", "--config", "slow=20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("world:    keel:strategy/strategy@0.1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("exports:  init, on-candle, on-fill, on-timer"),
        "{stdout}"
    );
    assert!(stdout.contains("loadable: yes"), "{stdout}");
}

#[test]
fn plugin_check_fails_with_the_reason_when_init_refuses_the_config() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(plugin_path("sma-cross"))
        .args(["--config", "fast=50", "--config", "slow=20"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("init refused: fast (50) must be less than slow (20)"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_refuses_a_file_that_is_not_webassembly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "just some text").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refused: not a WebAssembly file"),
        "{stderr}"
    );
}
