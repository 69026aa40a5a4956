//! Keel's HTTP surface: the REST API under `/api/v1` (this module), authentication ([`auth`]),
//! the health the loops report ([`health`]) and the live side — the `/api/v1/ws` feed and the
//! dashboard ([`live`]).
//!
//! The REST API is described by the OpenAPI document at `/openapi.json`.
//!
//! Every route but `/openapi.json` needs `Authorization: Bearer <JWT>` ([`crate::auth`]). A
//! tenant route runs in the caller's tenant scope of the store (row-level security on
//! PostgreSQL), so another user's ids answer 404 exactly like ids that do not exist. Operator
//! routes (`/api/v1/operator/…`) need the operator role and answer 403 without it. Errors are
//! [`errors::ApiError`]s: a JSON body that says what is wrong. See `docs/api.md`.
//!
//! Routes are registered together with their OpenAPI description (`utoipa_axum::routes!`), so
//! the document describes every route that exists.

pub mod auth;
pub mod control;
pub mod credentials;
pub mod errors;
pub mod health;
mod history;
pub mod live;
mod operator;
mod plugins;
mod profiles;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{any, get};
use keel_kernel::store::Store;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{AuthError, Caller, JwtKeys};
use keel_runtime::PluginEngine;

pub use control::{ControlChange, ProfileControl, ReconcileOutcome};
pub use credentials::{BINANCE_USDM, CredentialsKey};
pub use errors::{ApiError, ErrorBody};
pub use plugins::PLUGINS_PER_USER_MAX;
pub use profiles::PROFILES_PER_USER_MAX;

/// The largest JSON request body unless configured otherwise (`api.body_limit_bytes`), in bytes.
pub const JSON_BODY_BYTES_DEFAULT: usize = 64 * 1024;
/// The largest plugin upload unless configured otherwise (`api.upload_limit_bytes`), in bytes:
/// the plugin engine's own limit, which a Python component (about 18 MB) fits under.
pub const PLUGIN_UPLOAD_BYTES_DEFAULT: usize = keel_runtime::PLUGIN_BYTES_MAX_DEFAULT;

/// The largest request bodies the API reads; larger ones answer 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A JSON request body, in bytes.
    pub json_bytes: usize,
    /// A plugin upload, in bytes.
    pub upload_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            json_bytes: JSON_BODY_BYTES_DEFAULT,
            upload_bytes: PLUGIN_UPLOAD_BYTES_DEFAULT,
        }
    }
}

/// What the API's handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// The store; tenant data is reached only through its tenant scope.
    pub store: Store,
    /// The keys bearer tokens are verified with.
    pub auth: JwtKeys,
    /// The plugin engine uploads are checked with and bound plugins are loaded into.
    pub plugins: PluginEngine,
    /// The profiles running in this process.
    pub control: Arc<dyn ProfileControl>,
    /// The key exchange credentials are sealed with.
    pub credentials: CredentialsKey,
    /// The largest bodies read.
    pub limits: BodyLimits,
    /// What the loops of this process report (a profile's plugin state and faults).
    pub health: Arc<health::LoopHealth>,
}

/// A caller with a verified token.
pub struct Auth(pub Caller);

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => Some(value.to_str().map_err(|_| {
                AuthError::Malformed("the Authorization header is not ASCII".to_owned())
            })?),
            None => None,
        };
        Ok(Auth(state.auth.verify_header(header)?))
    }
}

/// A caller whose token carries the operator role.
pub struct OperatorAuth(pub Caller);

impl FromRequestParts<ApiState> for OperatorAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Auth(caller) = Auth::from_request_parts(parts, state).await?;
        if !caller.operator {
            return Err(ApiError::Forbidden(
                "this route needs the operator role (app_metadata.keel_role = \"operator\")"
                    .to_owned(),
            ));
        }
        Ok(OperatorAuth(caller))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel API",
        description = "Profiles, capital, credentials, plugins and controls of a Keel host. \
                       Errors are `{\"error\": …, \"code\": …}`; see docs/api.md."
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The API's routes and their OpenAPI document, before the document is served.
fn parts(limits: BodyLimits) -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .merge(profiles::router())
        .merge(credentials::router())
        .merge(plugins::router(limits.upload_bytes))
        .merge(history::router())
        .merge(operator::router());
    let (v1, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .split_for_parts();
    (v1, doc)
}

/// The API router: `/api/v1/…` and `/openapi.json`. Any other path under `/api/v1` answers a
/// JSON 404.
pub fn router(state: ApiState) -> Router {
    let (routes, doc) = parts(state.limits);
    let doc = Arc::new(doc);
    routes
        .route("/api/v1/{*rest}", any(no_such_route))
        .layer(DefaultBodyLimit::max(state.limits.json_bytes))
        .route(
            "/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .with_state(state)
}

async fn no_such_route() -> ApiError {
    ApiError::NotFound("no such API route".to_owned())
}
