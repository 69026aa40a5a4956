//! `keel bench engine` runs its three measurements and reports them whole.

use std::process::Command;

#[test]
fn bench_engine_reports_every_measurement_with_ordered_percentiles() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "engine", "--json", "--decisions", "20"])
        .args([
            "--profiles",
            "50",
            "--fan-out-candles",
            "3",
            "--orders",
            "30",
        ])
        .env_remove("KEEL_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["store"], "sqlite");
    assert_eq!(report["decisions"], 20);
    assert_eq!(report["fan_out_profiles"], 50);
    assert_eq!(report["reconcile_orders"], 30);
    for key in [
        "decision_to_wire",
        "commit",
        "overhead_beyond_one_commit",
        "process_cpu_per_decision",
        "fan_out",
        "reconcile_excluding_exchange",
        "reconcile_exchange",
    ] {
        let p = |q: &str| {
            report[key][q]
                .as_f64()
                .unwrap_or_else(|| panic!("{key}.{q}"))
        };
        let (p50, p99, max) = (p("p50_us"), p("p99_us"), p("max_us"));
        assert!(
            0.0 <= p50 && p50 <= p99 && p99 <= max,
            "{key}: {p50} {p99} {max}"
        );
    }
    // A decision costs the process some CPU, and never more than two cores' worth of its
    // wall time.
    let cpu = report["process_cpu_per_decision"]["p50_us"]
        .as_f64()
        .unwrap();
    let wire = report["decision_to_wire"]["max_us"].as_f64().unwrap();
    assert!(cpu > 0.0, "no CPU measured: {stdout}");
    assert!(
        cpu <= 2.0 * wire,
        "CPU {cpu} µs against at most {wire} µs of wall time"
    );
}
