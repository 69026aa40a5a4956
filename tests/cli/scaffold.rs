//! `keel plugin new`: the scaffolded crate.

use std::process::Command;

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("keel runs")
}

#[test]
fn plugin_new_writes_a_self_contained_crate() {
    let dir = tempfile::tempdir().unwrap();
    let out = keel(&[
        "plugin",
        "new",
        "my-strat",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join("my-strat");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "keel-guest/Cargo.toml",
        "keel-guest/src/lib.rs",
        "wit/strategy.wit",
    ] {
        assert!(root.join(file).is_file(), "{file} missing");
    }
    let guest = std::fs::read_to_string(root.join("keel-guest/src/lib.rs")).unwrap();
    assert!(
        guest.contains("path: \"../wit\""),
        "the SDK must read the crate's own WIT"
    );
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"my-strat\"") && manifest.contains("cdylib"));
    // Only the crate is left in the directory: no scratch directory behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn plugin_new_refuses_a_bad_name_and_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().to_str().unwrap();
    for bad in ["Bad", "1abc", "a_b", "a-", "keel-guest", ""] {
        let out = keel(&["plugin", "new", bad, "--dir", parent]);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(
        keel(&["plugin", "new", "twice", "--dir", parent])
            .status
            .success()
    );
    let out = keel(&["plugin", "new", "twice", "--dir", parent]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// Builds the scaffold for wasm32-wasip2 (about 40 s of CPU, longer on a busy machine) and runs
/// `keel plugin check` and `keel backtest` on it: the strategy author's first five minutes.
#[test]
fn plugin_new_crate_builds_passes_check_and_backtests() {
    let dir = tempfile::tempdir().unwrap();
    let out = keel(&[
        "plugin",
        "new",
        "fresh",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let root = dir.path().join("fresh");
    let build = Command::new(env!("CARGO"))
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--release",
            "--offline",
        ])
        .current_dir(&root)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = root.join("target/wasm32-wasip2/release/fresh.wasm");
    let check = keel(&["plugin", "check", wasm.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let candles = crate::common::candle_file(dir.path(), 21);
    let run = keel(&[
        "backtest",
        "--plugin",
        wasm.to_str().unwrap(),
        "--candles",
        candles.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("total return"));
}
