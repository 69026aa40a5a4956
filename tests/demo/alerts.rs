//! The alert rules (deploy/prometheus/alerts.yml) evaluated by `promtool test rules` over series
//! taken from a real `keel demo`: two scrapes of a healthy demo give each series its value and its
//! rate, continued for an hour. Every rule must stay silent (not even pending) on them, and each
//! must fire when its fault is written into the same series: a counter that grows, a gauge at
//! a faulty value, a heartbeat that stops.

use std::collections::BTreeMap;

use super::*;

/// Minutes of one-minute samples promtool is given, and the minute the rules are checked at:
/// past every rule's `for`.
const MINUTES: u32 = 70;
const EVAL_MINUTE: u32 = 60;

/// Wall time between the two scrapes whose difference gives each counter its rate.
const SCRAPE_GAP: Duration = Duration::from_secs(15);

/// What a fault does to one series.
#[derive(Clone, Copy)]
enum Fault {
    /// A gauge held at this value.
    Value(f64),
    /// A counter growing by this much each minute.
    Increase(f64),
    /// A timestamp that stops advancing.
    Frozen,
}

/// An alert, the family its fault is written into, the label that picks the series (a series of
/// the family with that label replaced is added if the host has no such series yet), the fault.
type AlertFault = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    Fault,
);

/// Each alert rule with its fault, in the order of alerts.yml.
const FAULTS: &[AlertFault] = &[
    (
        "KeelCapitalInvariantViolation",
        "keel_capital_invariant_violations_total",
        None,
        Fault::Increase(1.0),
    ),
    (
        "KeelCapitalMarginLow",
        "keel_capital_free_quote_min",
        None,
        Fault::Value(5.0),
    ),
    (
        "KeelLedgerRebuildMismatch",
        "keel_ledger_rebuild_mismatches_total",
        None,
        Fault::Increase(1.0),
    ),
    (
        "KeelBudgetConstraintViolation",
        "keel_budget_constraint_violations_total",
        None,
        Fault::Increase(1.0),
    ),
    (
        "KeelAccountUnderfunded",
        "keel_account_allocation_shortfall_quote",
        None,
        Fault::Value(100.0),
    ),
    (
        "KeelLifecycleTransactionsFailing",
        "keel_lifecycle_transactions_total",
        Some(("result", "failed")),
        Fault::Increase(1.0),
    ),
    (
        "KeelOrdersUnknown",
        "keel_orders_open",
        Some(("status", "UNKNOWN")),
        Fault::Value(1.0),
    ),
    (
        "KeelReconciliationMismatch",
        "keel_reconciliation_mismatches",
        Some(("kind", "position_mismatch")),
        Fault::Value(1.0),
    ),
    (
        "KeelReconciliationNoCleanPass",
        "keel_reconciliation_last_clean_pass_timestamp_seconds",
        None,
        Fault::Frozen,
    ),
    (
        "KeelProfileQuarantined",
        "keel_profiles_quarantined",
        None,
        Fault::Value(1.0),
    ),
    (
        "KeelLockContention",
        "keel_lock_contention_total",
        Some(("lock", "entry")),
        Fault::Increase(120.0),
    ),
    (
        "KeelLockTtlExpiries",
        "keel_lock_ttl_expiries_total",
        Some(("lock", "entry")),
        Fault::Increase(1.0),
    ),
    (
        "KeelStaleFenceRejections",
        "keel_lock_stale_fence_rejections_total",
        None,
        Fault::Increase(1.0),
    ),
    ("KeelNotReady", "keel_ready", None, Fault::Value(0.0)),
    (
        "KeelLoopStalled",
        "keel_loop_heartbeat_timestamp_seconds",
        Some(("loop", "trading")),
        Fault::Frozen,
    ),
    (
        "KeelTenantIsolationDenials",
        "keel_tenant_isolation_denials_total",
        Some(("surface", "api")),
        Fault::Increase(30.0),
    ),
    (
        "KeelPluginFaults",
        "keel_plugin_faults_total",
        Some(("kind", "fuel")),
        Fault::Increase(10.0),
    ),
    (
        "KeelProfileFaults",
        "keel_profile_faults_total",
        Some(("kind", "panic")),
        Fault::Increase(1.0),
    ),
    (
        "KeelExchangeUnknownAnswers",
        "keel_exchange_requests_total",
        Some(("outcome", "unknown")),
        Fault::Increase(1000.0),
    ),
    (
        "KeelExchangeRateLimitLow",
        "keel_exchange_rate_limit_headroom_ratio",
        None,
        Fault::Value(0.05),
    ),
    (
        "KeelExitAwaitingPlacement",
        "keel_orders_awaiting_placement",
        Some(("kind", "exit")),
        Fault::Value(1.0),
    ),
    (
        "KeelExchangeStreamDown",
        "keel_exchange_stream_connected",
        None,
        Fault::Value(0.0),
    ),
];

/// One scraped series: `name{labels}` as exposed, keyed by it, with its two values.
#[derive(Clone)]
struct Series {
    name: String,
    /// `(label, value)` pairs in exposition order.
    labels: Vec<(String, String)>,
    first: f64,
    second: f64,
}

impl Series {
    fn selector(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        if labels.is_empty() {
            return self.name.clone();
        }
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of `text` whose family is in `families`, by selector: `(name, labels, value)`.
fn parse_scrape(text: &str, families: &BTreeSet<String>) -> BTreeMap<String, Series> {
    let mut series = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (selector, value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match selector.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (selector, ""),
        };
        if !families.contains(name) {
            continue;
        }
        // Label values here come from closed sets and profile ids: no comma or quote inside.
        let labels = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("label=\"value\"");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        let s = Series {
            name: name.to_owned(),
            labels,
            first: value,
            second: value,
        };
        series.insert(s.selector(), s);
    }
    series
}

/// `start`, then `step` more each minute, for [`MINUTES`], in promtool's notation.
fn expanding(start: f64, step: f64) -> String {
    let sign = if step < 0.0 { '-' } else { '+' };
    format!("{start}{sign}{}x{MINUTES}", step.abs())
}

/// How a healthy series goes on: a timestamp keeps its age at the scrape (evaluation time 0 is
/// the second scrape), a counter keeps the rate seen between the scrapes, a gauge its value.
fn healthy(series: &Series, scraped_at: f64) -> String {
    if series.name.ends_with("_timestamp_seconds") {
        expanding(series.second - scraped_at, 60.0)
    } else if series.name.ends_with("_total") {
        let per_minute = (series.second - series.first) * 60.0 / SCRAPE_GAP.as_secs_f64();
        expanding(series.second, per_minute)
    } else {
        expanding(series.second, 0.0)
    }
}

fn faulty(series: &Series, fault: Fault, scraped_at: f64) -> String {
    match fault {
        Fault::Value(value) => expanding(value, 0.0),
        Fault::Increase(per_minute) => expanding(series.second, per_minute),
        Fault::Frozen => expanding(series.second - scraped_at, 0.0),
    }
}

/// The names of the rules in alerts.yml, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// A promtool test: `series` as input, `checks` as PromQL expressions with their samples.
fn promtool_test(
    name: &str,
    series: &BTreeMap<String, String>,
    checks: Vec<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "interval": "1m",
        "input_series": series
            .iter()
            .map(|(selector, values)| serde_json::json!({"series": selector, "values": values}))
            .collect::<Vec<_>>(),
        "promql_expr_test": checks,
    })
}

#[tokio::test]
async fn alert_rules_are_silent_on_a_healthy_demo_and_fire_on_each_fault() {
    let rules_path = repo_root().join("deploy/prometheus/alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let alerts = alert_names(&rules);
    let faulted: Vec<String> = FAULTS.iter().map(|f| f.0.to_owned()).collect();
    assert_eq!(
        alerts, faulted,
        "every alert rule, in order, has a fault here that must make it fire"
    );
    let families = metric_names_in(&rules);

    // The demo at its own pace, trading, as an operator would leave it running.
    let dir = tempfile::tempdir().unwrap();
    let mut command = Demo::command_at(dir.path(), 500);
    command.env("RUST_LOG", "warn").stderr(Stdio::inherit());
    let demo = Demo::spawn(command, dir.path()).await;
    demo.wait_ready().await;
    wait_for("a filled order", || async {
        demo.metric("keel_orders_total{status=\"FILLED\"}").await > 0.0
    })
    .await;
    let (_, first) = demo.get("/metrics").await;
    tokio::time::sleep(SCRAPE_GAP).await;
    let (_, second) = demo.get("/metrics").await;
    let scraped_at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let (status, stdout) = demo.stop("TERM").await;
    assert!(status.success(), "exit {status:?}, stdout {stdout:?}");

    let mut scraped = parse_scrape(&first, &families);
    for (selector, later) in parse_scrape(&second, &families) {
        scraped
            .entry(selector)
            .and_modify(|s| s.second = later.second)
            .or_insert(later);
    }
    let exported: BTreeSet<&str> = scraped.values().map(|s| s.name.as_str()).collect();
    let unexported: Vec<&String> = families
        .iter()
        .filter(|f| !exported.contains(f.as_str()))
        .collect();
    assert!(
        unexported.is_empty(),
        "alerts name series the healthy demo does not export: {unexported:?}\n{second}"
    );
    let healthy_series: BTreeMap<String, String> = scraped
        .iter()
        .map(|(selector, s)| (selector.clone(), healthy(s, scraped_at)))
        .collect();

    let at = format!("{EVAL_MINUTE}m");
    let mut tests = vec![promtool_test(
        "a healthy demo",
        &healthy_series,
        vec![serde_json::json!({"expr": "ALERTS", "eval_time": at, "exp_samples": []})],
    )];
    for (alert, family, label, fault) in FAULTS {
        let of_family: Vec<&Series> = scraped.values().filter(|s| s.name == *family).collect();
        let base = *of_family
            .first()
            .unwrap_or_else(|| panic!("{alert}: no {family} in the scrape"));
        let target = match label {
            None => base.clone(),
            Some((key, value)) => match of_family.iter().find(|s| s.label(key) == Some(value)) {
                Some(found) => (*found).clone(),
                None => {
                    let mut added = base.clone();
                    let slot = added
                        .labels
                        .iter_mut()
                        .find(|(k, _)| k == key)
                        .unwrap_or_else(|| panic!("{alert}: {family} has no label {key}"));
                    slot.1 = (*value).to_owned();
                    added.first = 0.0;
                    added.second = 0.0;
                    added
                }
            },
        };
        let mut series = healthy_series.clone();
        series.insert(target.selector(), faulty(&target, *fault, scraped_at));
        tests.push(promtool_test(
            &format!("{alert}: {}", target.selector()),
            &series,
            vec![serde_json::json!({
                "expr": format!("max(ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}})"),
                "eval_time": at,
                "exp_samples": [{"labels": "{}", "value": 1}],
            })],
        ));
    }

    // JSON is YAML: promtool reads the file as written.
    let test_file = dir.path().join("alerts.test.yml");
    let document = serde_json::json!({
        "rule_files": [rules_path.canonicalize().unwrap()],
        "evaluation_interval": "1m",
        "tests": tests,
    });
    std::fs::write(&test_file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let output = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test_file)
        .output()
        .expect("running promtool (Debian: apt-get install prometheus; scripts/test installs it)");
    assert!(
        output.status.success(),
        "promtool test rules {}:\n{}\n{}",
        test_file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
