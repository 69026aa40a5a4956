//! The kernel's metrics: one registry, every family named `keel_*` with its unit in the name.
//!
//! The host serves [`Metrics::encode`] at `/metrics`. Label values come from closed sets (loop
//! names, rule names, fault kinds, statuses) so cardinality is bounded; the one per-profile family,
//! [`Metrics::capital_free_quote`], labels at most [`PROFILE_LABELS_MAX`] profiles and folds the
//! rest into `profile="_other"`. The lock families and the capital invariant's store counters
//! are the store's own counters, read at each scrape ([`Metrics::observe_store`]). docs/operations.md describes them; runbooks/ say which to
//! alert on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::ids::ProfileId;
use crate::lock::LockKind;
use crate::store::{LOCK_LATENCY_BUCKETS_US, Store, StoreStats, StoreStatsSnapshot};

/// Most profiles that get a label of their own in per-profile families.
pub const PROFILE_LABELS_MAX: usize = 1000;

/// The label value that stands for every profile past [`PROFILE_LABELS_MAX`].
pub const PROFILE_LABEL_OTHER: &str = "_other";

/// A profile's label value (see [`Metrics::profile_label`]): a UUID's text or
/// [`PROFILE_LABEL_OTHER`].
pub type ProfileLabel = arrayvec::ArrayString<{ uuid::fmt::Hyphenated::LENGTH }>;

/// Buckets for latencies from 10 µs to 10 s.
const LATENCY_BUCKETS_SECONDS: [f64; 13] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Every metric family of Keel.
#[allow(missing_docs)] // each field is documented by its help text in `Metrics::new`
pub struct Metrics {
    registry: Registry,
    profiles_labelled: Mutex<HashSet<ProfileId>>,
    store_stats: Arc<OnceLock<Arc<StoreStats>>>,
    /// Each running profile's free capital, whose least is `keel_capital_free_quote_min`.
    capital_free: Mutex<HashMap<ProfileId, f64>>,
    pub capital_invariant_violations_total: IntCounter,
    capital_free_quote: GaugeVec,
    /// No labels: a series only while some profile runs, so an idle instance has no minimum.
    capital_free_quote_min: GaugeVec,
    pub ledger_rebuilds_total: IntCounter,
    pub ledger_rebuild_mismatches_total: IntCounter,
    pub reconciliation_runs_total: IntCounterVec,
    pub reconciliation_mismatches: IntGaugeVec,
    pub reconciliation_mismatches_total: IntCounterVec,
    pub reconciliation_last_clean_pass_timestamp_seconds: Gauge,
    pub profiles_quarantined: IntGauge,
    /// `keel_quarantine_writes_total{action,result}`.
    pub quarantine_writes_total: IntCounterVec,
    pub orders_awaiting_placement: IntGaugeVec,
    pub order_placement_retries_total: IntCounterVec,
    pub loop_heartbeat_timestamp_seconds: GaugeVec,
    pub loop_iteration_duration_seconds: HistogramVec,
    pub exchange_requests_total: IntCounterVec,
    pub exchange_request_duration_seconds: HistogramVec,
    pub exchange_rate_limit_headroom_ratio: GaugeVec,
    pub exchange_stream_connected: IntGaugeVec,
    pub exchange_stream_reconnects_total: IntCounterVec,
    pub orders_total: IntCounterVec,
    pub orders_open: IntGaugeVec,
    pub lifecycle_transactions_total: IntCounterVec,
    pub risk_refusals_total: IntCounterVec,
    pub plugin_calls_total: IntCounterVec,
    pub plugin_call_duration_seconds: HistogramVec,
    pub plugin_fuel_consumed_total: IntCounter,
    pub plugin_faults_total: IntCounterVec,
    pub plugin_hot_swaps_total: IntCounterVec,
    /// `keel_plugin_low_priority_calls_total`
    pub plugin_low_priority_calls_total: IntCounter,
    pub profile_faults_total: IntCounterVec,
    pub warm_up_candles_total: IntCounter,
    pub cluster_instances: IntGauge,
    pub profiles_owned: IntGauge,
    pub tenant_isolation_denials_total: IntCounterVec,
    pub exchange_foreign_events_total: IntCounterVec,
    pub account_allocation_shortfall_quote: Gauge,
    pub ready: IntGauge,
}

/// The `kind` label values of `keel_profile_faults_total`.
pub const PROFILE_FAULT_KINDS: [&str; 2] = ["panic", "error"];

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_SECONDS.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a metric is registered once");
    metric
}

impl Metrics {
    /// A fresh registry with every family registered (and every closed label set pre-created, so a
    /// scrape shows each series at zero before the first event).
    pub fn new() -> Metrics {
        let r = Registry::new();
        let store_stats = Arc::new(OnceLock::new());
        r.register(Box::new(StoreCollector::new(store_stats.clone())))
            .expect("the store's families are registered once");
        let metrics = Metrics {
            capital_free: Mutex::new(HashMap::new()),
            capital_invariant_violations_total: counter(
                &r,
                "keel_capital_invariant_violations_total",
                "Operations refused, or rows found, that would break allocated - reserved_for_orders - reserved_for_positions + realized_pnl >= 0.",
            ),
            capital_free_quote: gauge_vec(
                &r,
                "keel_capital_free_quote",
                "Free capital (the invariant's left-hand side) per profile, quote currency; profiles past the label cap fold into profile=\"_other\".",
                &[PROFILE_LABEL],
            ),
            capital_free_quote_min: gauge_vec(
                &r,
                "keel_capital_free_quote_min",
                "The smallest free capital of the profiles this instance runs, quote currency; absent while it runs none.",
                &[],
            ),
            ledger_rebuilds_total: counter(
                &r,
                "keel_ledger_rebuilds_total",
                "Capital rows recomputed from the ledger journal.",
            ),
            ledger_rebuild_mismatches_total: counter(
                &r,
                "keel_ledger_rebuild_mismatches_total",
                "Capital rows that differed from the sum of their journal when rebuilt.",
            ),
            reconciliation_runs_total: counter_vec(
                &r,
                "keel_reconciliation_runs_total",
                "Reconciliation passes by result (clean, repaired, quarantined, error).",
                &["result"],
            ),
            reconciliation_mismatches: int_gauge_vec(
                &r,
                "keel_reconciliation_mismatches",
                "Discrepancies found by the last reconciliation pass, by kind; reset by a clean pass.",
                &["kind"],
            ),
            reconciliation_mismatches_total: counter_vec(
                &r,
                "keel_reconciliation_mismatches_total",
                "Discrepancies found by reconciliation since start, by kind.",
                &["kind"],
            ),
            reconciliation_last_clean_pass_timestamp_seconds: gauge(
                &r,
                "keel_reconciliation_last_clean_pass_timestamp_seconds",
                "Unix time of the last reconciliation pass that found nothing to repair.",
            ),
            profiles_quarantined: int_gauge(
                &r,
                "keel_profiles_quarantined",
                "Profiles this instance runs that are in reduce-only quarantine after drift \
                 reconciliation could not repair (counted from their engines at each scrape).",
            ),
            quarantine_writes_total: counter_vec(
                &r,
                "keel_quarantine_writes_total",
                "Writes of profile_quarantines by the engine: action entered, renewed or cleared; \
                 result committed, refused (a kernel check or a database constraint, such as one \
                 open quarantine per profile) or failed.",
                &["action", "result"],
            ),
            orders_awaiting_placement: int_gauge_vec(
                &r,
                "keel_orders_awaiting_placement",
                "Orders the exchange would not take yet (rate limit, unavailable) that the kernel \
                 will send again with the same client order id, by intent kind.",
                &["kind"],
            ),
            order_placement_retries_total: counter_vec(
                &r,
                "keel_order_placement_retries_total",
                "Orders sent again after a rate limit or an unavailable exchange, by intent kind.",
                &["kind"],
            ),
            loop_heartbeat_timestamp_seconds: gauge_vec(
                &r,
                "keel_loop_heartbeat_timestamp_seconds",
                "Unix time of each loop's last completed iteration.",
                &["loop"],
            ),
            loop_iteration_duration_seconds: histogram_vec(
                &r,
                "keel_loop_iteration_duration_seconds",
                "Duration of one loop iteration.",
                &["loop"],
            ),
            exchange_requests_total: counter_vec(
                &r,
                "keel_exchange_requests_total",
                "Exchange requests by endpoint and outcome (ok, rejected, unknown, rate_limited, unavailable).",
                &["endpoint", "outcome"],
            ),
            exchange_request_duration_seconds: histogram_vec(
                &r,
                "keel_exchange_request_duration_seconds",
                "Exchange request latency.",
                &["endpoint"],
            ),
            exchange_rate_limit_headroom_ratio: gauge_vec(
                &r,
                "keel_exchange_rate_limit_headroom_ratio",
                "Share of each exchange rate limit still unused (1 = idle, 0 = exhausted).",
                &["limit"],
            ),
            exchange_stream_connected: int_gauge_vec(
                &r,
                "keel_exchange_stream_connected",
                "1 while the stream is connected and trusted, else 0.",
                &["stream"],
            ),
            exchange_stream_reconnects_total: counter_vec(
                &r,
                "keel_exchange_stream_reconnects_total",
                "Stream reconnections.",
                &["stream"],
            ),
            orders_total: counter_vec(
                &r,
                "keel_orders_total",
                "Orders entering each status.",
                &["status"],
            ),
            orders_open: int_gauge_vec(
                &r,
                "keel_orders_open",
                "Orders currently in each non-terminal status.",
                &["status"],
            ),
            lifecycle_transactions_total: counter_vec(
                &r,
                "keel_lifecycle_transactions_total",
                "ENTRY/EXIT lifecycle transactions by kind and result (committed, replayed, failed).",
                &["kind", "result"],
            ),
            risk_refusals_total: counter_vec(
                &r,
                "keel_risk_refusals_total",
                "Strategy intents refused by the kernel, by rule.",
                &["rule"],
            ),
            plugin_calls_total: counter_vec(
                &r,
                "keel_plugin_calls_total",
                "Calls into strategy plugins, by export.",
                &["export"],
            ),
            plugin_call_duration_seconds: histogram_vec(
                &r,
                "keel_plugin_call_duration_seconds",
                "Duration of calls into strategy plugins.",
                &["export"],
            ),
            plugin_fuel_consumed_total: counter(
                &r,
                "keel_plugin_fuel_consumed_total",
                "Fuel (Wasm instructions, roughly) consumed by plugin calls.",
            ),
            plugin_faults_total: counter_vec(
                &r,
                "keel_plugin_faults_total",
                "Plugin faults by kind (fuel, deadline, memory, trap, invalid_output, init_refused, \
                 config_refused).",
                &["kind"],
            ),
            plugin_hot_swaps_total: counter_vec(
                &r,
                "keel_plugin_hot_swaps_total",
                "Plugin hot-swaps by result (ok, failed).",
                &["result"],
            ),
            plugin_low_priority_calls_total: counter(
                &r,
                "keel_plugin_low_priority_calls_total",
                "Calls into strategy plugins run at low priority: the calls and warm-ups of a \
                 profile whose calls keep a core busy for milliseconds.",
            ),
            profile_faults_total: counter_vec(
                &r,
                "keel_profile_faults_total",
                "Faults of a profile's loops by kind (panic: a bug on the profile's path; error: \
                 its restart recovery failed); each stops the profile's entries.",
                &["kind"],
            ),
            warm_up_candles_total: counter(
                &r,
                "keel_warm_up_candles_total",
                "Recent candles replayed into strategy instances that started fresh (restart, takeover, hot-swap).",
            ),
            cluster_instances: int_gauge(
                &r,
                "keel_cluster_instances",
                "Live keel serve instances sharing the profiles, as this instance last counted them.",
            ),
            profiles_owned: int_gauge(
                &r,
                "keel_profiles_owned",
                "Profiles this instance runs (holds the lease of).",
            ),
            tenant_isolation_denials_total: counter_vec(
                &r,
                "keel_tenant_isolation_denials_total",
                "Requests for another tenant's data that were denied, by surface (api, websocket, store).",
                &["surface"],
            ),
            exchange_foreign_events_total: counter_vec(
                &r,
                "keel_exchange_foreign_events_total",
                "User-data events (order, fill) about orders a profile did not place — another \
                 profile's on a shared exchange account, or one placed by hand — which it ignores, \
                 and such orders found open by reconciliation (open_order, once each).",
                &["kind"],
            ),
            account_allocation_shortfall_quote: gauge(
                &r,
                "keel_account_allocation_shortfall_quote",
                "The largest amount (USDT) by which the capital of the profiles on a real \
                 exchange account (allocated plus realized PnL) exceeds the wallet balance it reported, over the accounts \
                 this instance's profiles trade on, at the last account audit; 0 when every one \
                 is covered (or none is audited).",
            ),
            ready: int_gauge(
                &r,
                "keel_ready",
                "1 once restart recovery has finished and decisions run (the /readyz condition), else 0.",
            ),
            registry: r,
            profiles_labelled: Mutex::new(HashSet::new()),
            store_stats,
        };
        metrics.precreate_label_sets();
        metrics
    }

    fn precreate_label_sets(&self) {
        for name in ["trading", "monitor", "reconciliation"] {
            self.loop_heartbeat_timestamp_seconds
                .with_label_values(&[name]);
            self.loop_iteration_duration_seconds
                .with_label_values(&[name]);
        }
        for result in ["clean", "repaired", "quarantined", "error"] {
            self.reconciliation_runs_total.with_label_values(&[result]);
        }
        for action in ["entered", "renewed", "cleared"] {
            for result in ["committed", "refused", "failed"] {
                self.quarantine_writes_total
                    .with_label_values(&[action, result]);
            }
        }
        for kind in MISMATCH_KINDS {
            self.reconciliation_mismatches.with_label_values(&[kind]);
            self.reconciliation_mismatches_total
                .with_label_values(&[kind]);
        }
        for status in crate::order::OrderStatus::ALL {
            self.orders_total.with_label_values(&[status.as_str()]);
            if status.is_open() {
                self.orders_open.with_label_values(&[status.as_str()]);
            }
        }
        for kind in [
            "fuel",
            "deadline",
            "memory",
            "trap",
            "invalid_output",
            "init_refused",
            "config_refused",
        ] {
            self.plugin_faults_total.with_label_values(&[kind]);
        }
        for result in ["ok", "failed"] {
            self.plugin_hot_swaps_total.with_label_values(&[result]);
        }
        for kind in ["entry", "exit"] {
            self.orders_awaiting_placement.with_label_values(&[kind]);
            self.order_placement_retries_total
                .with_label_values(&[kind]);
        }
        for kind in PROFILE_FAULT_KINDS {
            self.profile_faults_total.with_label_values(&[kind]);
        }
        for rule in crate::risk::RefusalRule::ALL {
            self.risk_refusals_total.with_label_values(&[rule.as_str()]);
        }
        for surface in ["api", "websocket", "store"] {
            self.tenant_isolation_denials_total
                .with_label_values(&[surface]);
        }
        for kind in ["order", "fill", "open_order"] {
            self.exchange_foreign_events_total
                .with_label_values(&[kind]);
        }
    }

    /// The label value for `profile`: its id while fewer than [`PROFILE_LABELS_MAX`] profiles
    /// have one, [`PROFILE_LABEL_OTHER`] after. Written on the stack: a trade sets a labelled
    /// series several times.
    pub fn profile_label(&self, profile: ProfileId) -> ProfileLabel {
        let mut labelled = self
            .profiles_labelled
            .lock()
            .expect("the label set is never poisoned");
        // Both fit: a UUID's text is 36 bytes.
        if labelled.contains(&profile) || labelled.len() < PROFILE_LABELS_MAX {
            labelled.insert(profile);
            let mut text = uuid::Uuid::encode_buffer();
            ProfileLabel::from(profile.as_uuid().hyphenated().encode_lower(&mut text))
                .unwrap_or_default()
        } else {
            ProfileLabel::from(PROFILE_LABEL_OTHER).unwrap_or_default()
        }
    }

    /// Records `profile`'s free capital: its `keel_capital_free_quote` series and, over every
    /// profile this instance runs, `keel_capital_free_quote_min`.
    pub fn set_capital_free(&self, profile: ProfileId, free: f64) {
        self.capital_free_quote
            .with_label_values(&[self.profile_label(profile).as_str()])
            .set(free);
        let mut free_by_profile = self.capital_free.lock().expect("never poisoned");
        free_by_profile.insert(profile, free);
        self.publish_capital_min(&free_by_profile);
    }

    /// Forgets a profile this instance no longer runs (stopped, or taken by another instance):
    /// its free capital no longer counts in `keel_capital_free_quote_min`, and its own series of
    /// `keel_capital_free_quote` goes.
    pub fn forget_profile_capital(&self, profile: ProfileId) {
        let mut free_by_profile = self.capital_free.lock().expect("never poisoned");
        if free_by_profile.remove(&profile).is_some() {
            // A profile folded into `_other` shares its series with others: that one stays.
            let _ = self
                .capital_free_quote
                .remove_label_values(&[&profile.to_string()]);
        }
        self.publish_capital_min(&free_by_profile);
    }

    fn publish_capital_min(&self, free_by_profile: &HashMap<ProfileId, f64>) {
        match free_by_profile.values().copied().reduce(f64::min) {
            Some(least) => self
                .capital_free_quote_min
                .with_label_values::<&str>(&[])
                .set(least),
            None => self.capital_free_quote_min.reset(),
        }
    }

    /// Exposes `store`'s lock, fence and capital counters (read at each scrape) as
    /// `keel_lock_contention_total`, `keel_lock_acquire_duration_seconds`,
    /// `keel_lock_ttl_expiries_total`, `keel_lock_stale_fence_rejections_total`,
    /// `keel_capital_check_refusals_total`, `keel_capital_constraint_violations_total`,
    /// `keel_budget_check_refusals_total` and `keel_budget_constraint_violations_total`. Until
    /// a store is attached those families read zero. One store per process: a second is a programming
    /// error.
    pub fn observe_store(&self, store: &Store) {
        let attached = self.store_stats.set(store.stats_arc());
        assert!(
            attached.is_ok(),
            "a metrics registry observes one store per process"
        );
    }

    /// The registry, for families the host adds (HTTP, process).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every family in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        encode_families(&self.registry.gather())
    }

    /// Every family but the per-profile ones (those with a [`PROFILE_LABEL`] label), which
    /// name tenants' profiles and their capital: what a scrape without the operator's token
    /// gets.
    pub fn encode_without_profiles(&self) -> String {
        let families: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|family| {
                !family.get_metric().iter().any(|metric| {
                    metric
                        .get_label()
                        .iter()
                        .any(|label| label.name() == PROFILE_LABEL)
                })
            })
            .collect();
        encode_families(&families)
    }
}

/// The label of per-profile families: its values are profile ids, tenant data.
pub const PROFILE_LABEL: &str = "profile";

fn encode_families(families: &[prometheus::proto::MetricFamily]) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(families, &mut buffer)
        .expect("encoding metrics into memory cannot fail");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The `lock` label of each lock kind.
pub fn lock_label(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Entry => "entry",
        LockKind::Reconciliation => "reconciliation",
        LockKind::ProfileLease => "lease",
    }
}

/// The store's lock and capital families, built from a [`StoreStatsSnapshot`] at each scrape:
/// the store counts with plain atomics on its hot path and the registry reads them only when
/// asked.
struct StoreCollector {
    stats: Arc<OnceLock<Arc<StoreStats>>>,
    contention: Desc,
    acquire_duration: Desc,
    ttl_expiries: Desc,
    stale_fences: Desc,
    capital_check_refusals: Desc,
    capital_constraint_violations: Desc,
    budget_check_refusals: Desc,
    budget_constraint_violations: Desc,
}

const LOCK_CONTENTION: (&str, &str) = (
    "keel_lock_contention_total",
    "Lock acquisitions refused because another owner held the lock.",
);
const LOCK_ACQUIRE_DURATION: (&str, &str) = (
    "keel_lock_acquire_duration_seconds",
    "Time to acquire a lock (successful or not).",
);
const LOCK_TTL_EXPIRIES: (&str, &str) = (
    "keel_lock_ttl_expiries_total",
    "Locks taken over after their holder let the TTL expire.",
);
const LOCK_STALE_FENCES: (&str, &str) = (
    "keel_lock_stale_fence_rejections_total",
    "Writes refused because they carried a fencing token older than the lock's (kernel check or database trigger).",
);

const CAPITAL_CHECK_REFUSALS: (&str, &str) = (
    "keel_capital_check_refusals_total",
    "Store operations the kernel's capital check refused because they would break the capital invariant (invariant 1, first line).",
);
const CAPITAL_CONSTRAINT_VIOLATIONS: (&str, &str) = (
    "keel_capital_constraint_violations_total",
    "Store writes the database refused by a capital CHECK (capital_invariant, capital_*_nonnegative): the kernel's check missed them. Alert on any.",
);

const BUDGET_CHECK_REFUSALS: (&str, &str) = (
    "keel_budget_check_refusals_total",
    "Allocations and grants the kernel refused because they would break a user's capital budget (allocated within granted).",
);
const BUDGET_CONSTRAINT_VIOLATIONS: (&str, &str) = (
    "keel_budget_constraint_violations_total",
    "Store writes the database refused by a capital_budgets CHECK or its trigger: the kernel's budget check missed them. Alert on any.",
);

fn desc((name, help): (&str, &str), labels: &[&str]) -> Desc {
    let labels = labels.iter().map(|l| (*l).to_owned()).collect();
    Desc::new(name.to_owned(), help.to_owned(), labels, Default::default())
        .expect("a valid metric description")
}

fn family(
    (name, help): (&str, &str),
    kind: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn lock_labelled(kind: LockKind) -> proto::Metric {
    let mut label = proto::LabelPair::default();
    label.set_name("lock".to_owned());
    label.set_value(lock_label(kind).to_owned());
    proto::Metric::from_label(vec![label])
}

fn counter_sample(mut metric: proto::Metric, value: u64) -> proto::Metric {
    let mut counter = proto::Counter::default();
    // Counts stay far below 2^53, where f64 is exact.
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

fn latency_histogram(snapshot: &StoreStatsSnapshot, k: usize) -> proto::Histogram {
    let mut histogram = proto::Histogram::default();
    let mut cumulative = 0;
    let buckets = LOCK_LATENCY_BUCKETS_US
        .iter()
        .zip(&snapshot.lock_latency_buckets[k])
        .map(|(&bound_us, &count)| {
            cumulative += count;
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(Duration::from_micros(bound_us).as_secs_f64());
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(snapshot.lock_latency_count[k]);
    histogram.set_sample_sum(Duration::from_micros(snapshot.lock_latency_sum_us[k]).as_secs_f64());
    histogram
}

impl StoreCollector {
    fn new(stats: Arc<OnceLock<Arc<StoreStats>>>) -> Self {
        StoreCollector {
            stats,
            contention: desc(LOCK_CONTENTION, &["lock"]),
            acquire_duration: desc(LOCK_ACQUIRE_DURATION, &["lock"]),
            ttl_expiries: desc(LOCK_TTL_EXPIRIES, &["lock"]),
            stale_fences: desc(LOCK_STALE_FENCES, &[]),
            capital_check_refusals: desc(CAPITAL_CHECK_REFUSALS, &[]),
            capital_constraint_violations: desc(CAPITAL_CONSTRAINT_VIOLATIONS, &[]),
            budget_check_refusals: desc(BUDGET_CHECK_REFUSALS, &[]),
            budget_constraint_violations: desc(BUDGET_CONSTRAINT_VIOLATIONS, &[]),
        }
    }
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![
            &self.contention,
            &self.acquire_duration,
            &self.ttl_expiries,
            &self.stale_fences,
            &self.capital_check_refusals,
            &self.capital_constraint_violations,
            &self.budget_check_refusals,
            &self.budget_constraint_violations,
        ]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self
            .stats
            .get()
            .map(|stats| stats.snapshot())
            .unwrap_or_default();
        let per_lock = |values: &[u64; 3]| -> Vec<proto::Metric> {
            LockKind::ALL
                .iter()
                .map(|&kind| counter_sample(lock_labelled(kind), values[kind.index()]))
                .collect()
        };
        let durations = LockKind::ALL
            .iter()
            .map(|&kind| {
                let mut metric = lock_labelled(kind);
                metric.set_histogram(latency_histogram(&snapshot, kind.index()));
                metric
            })
            .collect();
        let single = |value: u64| vec![counter_sample(proto::Metric::default(), value)];
        vec![
            family(
                LOCK_CONTENTION,
                MetricType::COUNTER,
                per_lock(&snapshot.lock_contended),
            ),
            family(LOCK_ACQUIRE_DURATION, MetricType::HISTOGRAM, durations),
            family(
                LOCK_TTL_EXPIRIES,
                MetricType::COUNTER,
                per_lock(&snapshot.lock_ttl_expiries),
            ),
            family(
                LOCK_STALE_FENCES,
                MetricType::COUNTER,
                single(snapshot.stale_fence_rejections),
            ),
            family(
                CAPITAL_CHECK_REFUSALS,
                MetricType::COUNTER,
                single(snapshot.capital_check_refusals),
            ),
            family(
                CAPITAL_CONSTRAINT_VIOLATIONS,
                MetricType::COUNTER,
                single(snapshot.capital_constraint_violations),
            ),
            family(
                BUDGET_CHECK_REFUSALS,
                MetricType::COUNTER,
                single(snapshot.budget_check_refusals),
            ),
            family(
                BUDGET_CONSTRAINT_VIOLATIONS,
                MetricType::COUNTER,
                single(snapshot.budget_constraint_violations),
            ),
        ]
    }
}

/// The kinds of discrepancy reconciliation distinguishes.
pub const MISMATCH_KINDS: [&str; 5] = [
    "missing_in_db",
    "missing_on_exchange",
    "qty_mismatch",
    "status_mismatch",
    "position_mismatch",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_with_the_keel_prefix() {
        let text = Metrics::new().encode();
        for family in [
            "keel_capital_invariant_violations_total",
            "keel_loop_heartbeat_timestamp_seconds{loop=\"reconciliation\"}",
            "keel_orders_total{status=\"UNKNOWN\"}",
            "keel_plugin_faults_total{kind=\"fuel\"}",
            "keel_lock_contention_total{lock=\"lease\"} 0",
            "keel_lock_acquire_duration_seconds_bucket{lock=\"entry\",le=\"+Inf\"} 0",
            "keel_lock_stale_fence_rejections_total 0",
            "keel_capital_check_refusals_total 0",
            "keel_capital_constraint_violations_total 0",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("keel_"), "{line}");
        }
    }

    #[test]
    fn every_refusal_rule_is_counted_from_the_start() {
        let text = Metrics::new().encode();
        for rule in crate::risk::RefusalRule::ALL {
            let line = format!("keel_risk_refusals_total{{rule=\"{rule}\"}} 0\n");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("keel_risk_refusals_total{"))
            .count();
        assert_eq!(labelled, crate::risk::RefusalRule::ALL.len(), "{text}");
    }

    #[test]
    fn the_public_encoding_has_no_per_profile_family() {
        let metrics = Metrics::new();
        let profile = ProfileId::new_random();
        metrics.set_capital_free(profile, 12.5);
        assert!(metrics.encode().contains(&profile.to_string()));
        let public = metrics.encode_without_profiles();
        assert!(!public.contains(&profile.to_string()), "{public}");
        assert!(!public.contains("keel_capital_free_quote{"), "{public}");
        assert!(
            public.contains("keel_capital_free_quote_min 12.5"),
            "{public}"
        );
    }

    #[test]
    fn the_least_free_capital_is_of_the_profiles_running_and_absent_without_one() {
        let metrics = Metrics::new();
        assert!(
            !metrics.encode().contains("keel_capital_free_quote_min "),
            "no profile, no minimum: {}",
            metrics.encode()
        );
        let (a, b) = (ProfileId::new_random(), ProfileId::new_random());
        metrics.set_capital_free(a, 9_000.0);
        metrics.set_capital_free(b, 4.0);
        assert!(metrics.encode().contains("keel_capital_free_quote_min 4\n"));
        metrics.set_capital_free(b, 9_500.0);
        assert!(
            metrics
                .encode()
                .contains("keel_capital_free_quote_min 9000\n")
        );
        metrics.forget_profile_capital(a);
        let text = metrics.encode();
        assert!(
            text.contains("keel_capital_free_quote_min 9500\n"),
            "{text}"
        );
        assert!(!text.contains(&a.to_string()), "{text}");
        metrics.forget_profile_capital(b);
        assert!(!metrics.encode().contains("keel_capital_free_quote_min "));
    }

    #[test]
    fn profile_labels_are_capped() {
        let metrics = Metrics::new();
        let first = ProfileId::new_random();
        assert_eq!(metrics.profile_label(first).as_str(), first.to_string());
        for _ in 1..PROFILE_LABELS_MAX {
            metrics.profile_label(ProfileId::new_random());
        }
        assert_eq!(
            metrics.profile_label(ProfileId::new_random()).as_str(),
            PROFILE_LABEL_OTHER
        );
        assert_eq!(metrics.profile_label(first).as_str(), first.to_string());
    }
}
