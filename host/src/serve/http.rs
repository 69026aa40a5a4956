//! The host's operational endpoints: `/metrics`, `/internal/health`, `/livez`, `/readyz`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_kernel::metrics::Metrics;
use keel_kernel::store::Store;
use serde_json::json;

use super::{LoopConfig, LoopHealth, loop_statuses};

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
    pub auth: crate::auth::JwtKeys,
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

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.encode(),
    )
        .into_response()
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

async fn health(State(state): State<AppState>) -> Response {
    let mut reasons: Vec<String> = Vec::new();
    let mut loops = serde_json::Map::new();
    for (name, status) in loop_statuses(&state.health, &state.loop_config) {
        if status.state != "ok" {
            reasons.push(format!("loop {name} is {}", status.state));
        }
        loops.insert(name.to_owned(), json!(status));
    }
    if !state.health.is_ready() {
        reasons.push("restart recovery has not finished".to_owned());
    }
    let capital = capital_status(&state, &mut reasons).await;
    let mut components = serde_json::Map::new();
    components.insert("loops".into(), loops.into());
    components.insert("capital".into(), capital);
    for probe in &state.probes {
        let value = match probe.check().await {
            Ok(detail) => json!({"status": "ok", "detail": detail}),
            Err(reason) => {
                reasons.push(format!("{}: {reason}", probe.name()));
                json!({"status": "failing", "reason": reason})
            }
        };
        components.insert(probe.name().into(), value);
    }
    let healthy = reasons.is_empty();
    let body = json!({
        "status": if healthy { "ok" } else { "failing" },
        "reasons": reasons,
        "components": components,
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Reads every profile's capital row: a database probe and the capital invariant at once.
async fn capital_status(state: &AppState, reasons: &mut Vec<String>) -> serde_json::Value {
    let mut profiles = Vec::new();
    let mut database = json!({"status": "ok"});
    for (profile, snapshot) in state.health.snapshots() {
        match state.store.tenant(snapshot.user).capital(profile).await {
            Ok(capital) => {
                let free = capital.free();
                let holds = !free.is_sign_negative();
                if !holds {
                    reasons.push(format!("capital invariant broken for profile {profile}"));
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
                reasons.push(format!("database: {error}"));
                database = json!({"status": "failing", "reason": error.to_string()});
            }
        }
    }
    json!({"database": database, "profiles": profiles})
}
