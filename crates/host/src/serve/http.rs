//! The host's operational endpoints: `/metrics`, `/internal/health`, `/livez`, `/readyz`.
//!
//! They share the API's listener, so what names a tenant is for operators only: `/metrics`
//! leaves out the per-profile families (profile ids and their free capital) and
//! `/internal/health` the per-profile detail, unless the request carries an operator's bearer
//! token (or the host opted in with `api.metrics_profile_labels`, for a listener only operators
//! reach).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_kernel::metrics::Metrics;
use keel_kernel::store::Store;
use serde_json::json;

use keel_api::health::{LoopConfig, LoopHealth, ProfileCounts, ProfileHealth, loop_statuses};

/// A dependency the health endpoint checks besides the loops.
#[async_trait::async_trait]
pub trait HealthProbe: Send + Sync {
    /// The component's name in the health document.
    fn name(&self) -> &'static str;
    /// `Ok(detail)` when healthy, `Err(reason)` when not.
    async fn check(&self) -> Result<serde_json::Value, String>;
}

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The registry served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What the loops report.
    pub health: Arc<LoopHealth>,
    /// The loops' thresholds.
    pub loop_config: LoopConfig,
    /// The store, probed by `/internal/health`.
    pub store: Store,
    /// Further components (exchange, plugins).
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// The keys bearer tokens are verified with.
    pub auth: keel_api::auth::JwtKeys,
    /// Serve the per-profile metric families without an operator's token
    /// (`api.metrics_profile_labels`).
    pub profile_labels_public: bool,
}

/// The operational router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/internal/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Whether the request carries an operator's token. No token is not an operator; a token that
/// does not verify is refused (401) rather than silently read as anonymous.
#[allow(clippy::result_large_err)]
fn operator(state: &AppState, headers: &HeaderMap) -> Result<bool, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(false);
    };
    match state.auth.verify_header(value.to_str().ok()) {
        Ok(caller) => Ok(caller.operator),
        Err(error) => Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": error.to_string()})),
        )
            .into_response()),
    }
}

/// `/metrics`: every family for an operator; without the per-profile families for anyone else.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let operator = match operator(&state, &headers) {
        Ok(operator) => operator,
        Err(refused) => return refused,
    };
    // Counted from the profiles this instance runs (their engines' last snapshots), so a
    // profile that moved to another instance is counted there, and only there.
    let quarantined = state.health.profile_counts().quarantined;
    state
        .metrics
        .profiles_quarantined
        .set(i64::try_from(quarantined).unwrap_or(i64::MAX));
    let text = if operator || state.profile_labels_public {
        state.metrics.encode()
    } else {
        state.metrics.encode_without_profiles()
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "restart recovery is running",
        )
            .into_response()
    }
}

/// Why the host is unhealthy or degraded: what anyone may read, and the detail operators get.
#[derive(Default)]
struct Reasons {
    public: Vec<String>,
    detail: Vec<String>,
}

impl Reasons {
    fn push(&mut self, public: impl Into<String>, detail: impl Into<String>) {
        self.public.push(public.into());
        self.detail.push(detail.into());
    }

    fn is_empty(&self) -> bool {
        self.public.is_empty()
    }
}

/// `/internal/health`: per-component status and an overall status for anyone (load balancers,
/// probes); with an operator's bearer token, also the per-profile detail, which names tenants.
/// A token that does not verify is refused (401) rather than silently read as anonymous.
///
/// `ok` and `degraded` answer 200 (the host serves; some profiles need an operator), `failing`
/// answers 503. An instance that runs no profile (a standby) is `ok` with `role: standby`.
async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let operator = match operator(&state, &headers) {
        Ok(operator) => operator,
        Err(refused) => return refused,
    };
    let mut failing = Reasons::default();
    let mut loops = serde_json::Map::new();
    for (name, status) in loop_statuses(&state.health, &state.loop_config) {
        if !matches!(status.state, "ok" | "idle") {
            let reason = format!("loop {name} is {}", status.state);
            failing.push(reason.clone(), reason);
        }
        let mut value = json!(status);
        if !operator {
            // An error text may quote a tenant's data.
            if let Some(fields) = value.as_object_mut() {
                fields.remove("last_error");
            }
        }
        loops.insert(name.to_owned(), value);
    }
    if !state.health.is_ready() {
        let reason = "restart recovery has not finished";
        failing.push(reason, reason);
    }
    let (capital, database) = capital_status(&state, &mut failing).await;
    let mut components = serde_json::Map::new();
    components.insert("loops".into(), loops.into());
    components.insert("database".into(), database);
    components.insert("capital".into(), capital);
    for probe in &state.probes {
        let value = match probe.check().await {
            Ok(detail) => json!({"status": "ok", "detail": detail}),
            Err(reason) => {
                failing.push(
                    format!("{} is failing", probe.name()),
                    format!("{}: {reason}", probe.name()),
                );
                json!({"status": "failing", "reason": reason})
            }
        };
        components.insert(probe.name().into(), value);
    }
    let counts = state.health.profile_counts();
    let degraded = degraded_reasons(&state, counts);
    let status = if !failing.is_empty() {
        "failing"
    } else if !degraded.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    let role = if counts.running == 0 {
        "standby"
    } else {
        "active"
    };
    let mut reasons = failing;
    reasons.public.extend(degraded.public);
    reasons.detail.extend(degraded.detail);
    let body = if operator {
        json!({
            "status": status,
            "role": role,
            "reasons": reasons.detail,
            "profile_counts": counts,
            "components": components,
            "profiles": profile_details(&state),
        })
    } else {
        // Status only: the probes' details and the capital rows name profiles.
        let components: serde_json::Map<String, serde_json::Value> = components
            .into_iter()
            .map(|(name, value)| {
                let value = if name == "loops" {
                    value
                } else {
                    json!({"status": value["status"]})
                };
                (name, value)
            })
            .collect();
        json!({
            "status": status,
            "role": role,
            "reasons": reasons.public,
            "profile_counts": counts,
            "components": components,
        })
    };
    let code = if status == "failing" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// Why the host is degraded: profiles faulted or quarantined, counted for anyone and named for
/// operators.
fn degraded_reasons(state: &AppState, counts: ProfileCounts) -> Reasons {
    let mut reasons = Reasons::default();
    let mut faulted = Vec::new();
    let mut quarantined = Vec::new();
    for (profile, _) in state.health.snapshots() {
        let health = ProfileHealth::of(&state.health, profile);
        if health.state != "ok" {
            faulted.push(format!("{profile} ({})", health.state));
        }
        if health.quarantine.is_some() {
            quarantined.push(profile.to_string());
        }
    }
    if counts.faulted > 0 {
        reasons.push(
            format!("{} profile(s) faulted", counts.faulted),
            format!(
                "{} profile(s) faulted: {}",
                counts.faulted,
                faulted.join(", ")
            ),
        );
    }
    if counts.quarantined > 0 {
        reasons.push(
            format!("{} profile(s) quarantined", counts.quarantined),
            format!(
                "{} profile(s) quarantined: {}",
                counts.quarantined,
                quarantined.join(", ")
            ),
        );
    }
    reasons
}

/// Per profile: its owner, controls, entry block, free capital, the last run of each of its
/// loops, and its plugin's and loops' state (faults, quarantine).
fn profile_details(state: &AppState) -> Vec<serde_json::Value> {
    let runs = state.health.runs();
    state
        .health
        .snapshots()
        .into_iter()
        .map(|(profile, snapshot)| {
            let loops: serde_json::Map<String, serde_json::Value> = runs
                .iter()
                .filter(|(p, _, _)| *p == profile)
                .map(|(_, name, run)| ((*name).to_owned(), json!(run)))
                .collect();
            json!({
                "profile": profile,
                "user": snapshot.user,
                "controls": snapshot.controls,
                "entry_block": snapshot.entry_block,
                "capital_free": snapshot.capital_free,
                "loops": loops,
                "health": ProfileHealth::of(&state.health, profile),
            })
        })
        .collect()
}

/// Reads every profile's capital row: a database probe and the capital invariant at once.
/// Returns the capital component and the database component.
async fn capital_status(
    state: &AppState,
    reasons: &mut Reasons,
) -> (serde_json::Value, serde_json::Value) {
    let mut profiles = Vec::new();
    let mut database = json!({"status": "ok"});
    let mut broken = 0;
    for (profile, snapshot) in state.health.snapshots() {
        match state.store.tenant(snapshot.user).capital(profile).await {
            Ok(capital) => {
                let free = capital.free();
                let holds = !free.is_sign_negative();
                if !holds {
                    broken += 1;
                    reasons
                        .detail
                        .push(format!("capital invariant broken for profile {profile}"));
                }
                profiles.push(json!({
                    "profile": profile.to_string(),
                    "allocated": capital.allocated.to_string(),
                    "free": free.to_string(),
                    "invariant_holds": holds,
                    "controls": snapshot.controls,
                    "entry_block": snapshot.entry_block,
                }));
            }
            Err(error) => {
                if database["status"] == "ok" {
                    reasons.push("database is failing", format!("database: {error}"));
                }
                database = json!({"status": "failing", "reason": error.to_string()});
            }
        }
    }
    if broken > 0 {
        reasons
            .public
            .push(format!("capital invariant broken for {broken} profile(s)"));
    }
    let status = if broken > 0 { "failing" } else { "ok" };
    (json!({"status": status, "profiles": profiles}), database)
}
