//! `keel plugin check` loads a plugin as the host does and says so by its exit code.

use std::process::Command;

use keel_testkit::example_plugin_path as plugin_path;

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
        stdout.contains("world:    keel:strategy/strategy-with-params@0.1.1"),
        "{stdout}"
    );
    for export in ["init", "on-candle", "on-fill", "on-timer", "params"] {
        let exports = stdout.lines().find(|l| l.starts_with("exports:")).unwrap();
        assert!(exports.contains(export), "{stdout}");
    }
    assert!(stdout.contains("loadable: yes"), "{stdout}");
}

#[test]
fn plugin_check_prints_the_declared_parameters() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(plugin_path("sma-cross"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let params: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "params:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    let expected = [
        "fast           int in [1, 10000]             default 10         \
         Length of the fast moving average, in candles.",
        "slow           int in [2, 10000]             default 30         \
         Length of the slow moving average, in candles; above fast.",
        "mode           text: long-only | long-short  default long-only  \
         Long only, or long and short.",
        "size_fraction  float in [0.001, 1]           default 0.1        \
         Fraction of free capital committed per entry.",
    ];
    assert_eq!(params, expected, "{stdout}");
}

/// A plugin built against the released 0.1.0 contract declares nothing: it loads, shows its
/// world at 0.1.0 and says that it checks its configuration itself.
#[test]
fn plugin_check_accepts_a_0_1_0_plugin_that_declares_no_parameters() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(plugin_path("sma-cross-0-1-0"))
        .args(["--config", "fast=5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("world:    keel:strategy/strategy@0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("params:   none declared"), "{stdout}");
}

#[test]
fn plugin_check_refuses_a_malformed_parameter_declaration_naming_the_parameter() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(plugin_path("bad-params"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "refused: the plugin's declared parameters: parameter `fast`: the default 0 is not \
             int in [1, 10]"
        ),
        "{stderr}"
    );
}

#[test]
fn plugin_check_refuses_an_unknown_key_or_an_out_of_range_value_before_init() {
    let check = |pair: &str| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["plugin", "check"])
            .arg(plugin_path("sma-cross"))
            .args(["--config", pair])
            .output()
            .unwrap()
    };
    for (pair, refusal) in [
        (
            "fats=10",
            "configuration refused: plugin sma_cross has no parameter `fats` (did you mean \
             `fast`?); its parameters are fast, slow, mode, size_fraction",
        ),
        (
            "slow=20000",
            "configuration refused: plugin sma_cross: parameter `slow` takes int in [2, 10000], \
             not \"20000\"",
        ),
        (
            "mode=both",
            "configuration refused: plugin sma_cross: parameter `mode` takes text: long-only | \
             long-short, not \"both\"",
        ),
    ] {
        let output = check(pair);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{pair}: {stdout}");
        assert!(stderr.contains(refusal), "{pair}: {stderr}");
        assert!(stdout.contains("loadable: no"), "{pair}: {stdout}");
    }
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

/// The Python example: `init` runs the interpreter, reads the config and keeps it for the calls
/// that follow; a refusal carries the Python exception's message.
#[test]
fn plugin_check_accepts_the_python_example_and_names_its_language_and_budgets() {
    let check = |config: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .args(["plugin", "check", "--json"])
            .arg(plugin_path("sma-cross-py"));
        for pair in config {
            command.args(["--config", pair]);
        }
        command.output().unwrap()
    };
    let output = check(&["fast=5", "slow=20", "mode=long-short"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["loadable"], true, "{report}");
    assert_eq!(report["init"], "ok", "{report}");
    assert_eq!(report["report"]["language"], "python", "{report}");
    let python = keel_runtime::PluginLimits::python();
    assert_eq!(report["limits"]["fuel_per_call"], python.fuel_per_call);
    assert_eq!(
        report["limits"]["memory_bytes_max"],
        python.memory_bytes_max
    );

    let output = check(&["fast=50", "slow=20"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["init"], "init refused: fast (50) must be less than slow (20)",
        "{report}"
    );
}

/// Runs `keel plugin check` on the hostile plugin with `attack` in its config.
fn check_hostile(attack: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(plugin_path("hostile"))
        .args(["--config", &format!("attack={attack}")])
        .output()
        .unwrap()
}

/// The command runs inside a tokio runtime: a plugin writing to stdout in `init` once made
/// wasmtime-wasi start a runtime within it, a panic with exit code 101.
#[test]
fn plugin_check_accepts_a_plugin_that_prints_in_init() {
    let output = check_hostile("println-in-init");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("loadable: yes"), "{stdout}");
}

#[test]
fn plugin_check_fails_without_a_host_panic_when_init_panics_or_sleeps_forever() {
    for (attack, reason) in [
        ("panic-in-init", "trap"),
        ("sleep-forever-in-init", "deadline exceeded"),
    ] {
        let output = check_hostile(attack);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{attack}: {stderr}");
        assert!(stderr.contains(reason), "{attack}: {stderr}");
        assert!(!stderr.contains("panicked"), "{attack}: {stderr}");
    }
}

/// `keel plugin check` on generated bytes, with a cache of its own; stderr and the status.
fn check_bytes(bytes: &[u8], extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.wasm");
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["plugin", "check"])
        .arg(&path)
        .args(extra)
        .env("KEEL_PLUGIN_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn plugin_check_refuses_a_component_over_a_structural_limit_naming_the_limit() {
    use keel_testkit::compile_bomb;
    let (ok, stderr) = check_bytes(&compile_bomb::many_functions(100_001), &[]);
    assert!(!ok);
    assert!(stderr.contains("functions_max = 100000"), "{stderr}");
    let (ok, stderr) = check_bytes(&compile_bomb::many_live_locals(30_000), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("locals_per_function_max = 5000"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_gives_a_compile_up_at_its_time_budget() {
    // Under every structural limit; compiling it takes seconds, far past the budget.
    let bomb = keel_testkit::compile_bomb::slow_to_compile(5_000);
    let (ok, stderr) = check_bytes(&bomb, &["--compile-ms-max", "300"]);
    assert!(!ok);
    assert!(
        stderr.contains("took longer than 300 ms (compile_ms_max)"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_refuses_a_compile_past_its_memory_budget_naming_the_limit() {
    let bomb = keel_testkit::compile_bomb::slow_to_compile(2_000);
    let (ok, stderr) = check_bytes(&bomb, &["--compile-memory-bytes-max", "67108864"]);
    assert!(!ok);
    assert!(stderr.contains("compile_memory_bytes_max"), "{stderr}");
}
