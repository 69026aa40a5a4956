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
mod budgets;
pub mod control;
pub mod credentials;
pub mod errors;
pub mod health;
mod history;
pub mod live;
mod operator;
mod plugins;
mod profiles;
pub mod quotas;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware;
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
pub use quotas::Quotas;

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
    /// What one user may store and how fast they may ask.
    pub quotas: Quotas,
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
        .merge(operator::router())
        .merge(budgets::router());
    let (v1, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .split_for_parts();
    describe_refusals(&mut doc);
    describe_map_limits(&mut doc);
    (v1, doc)
}

/// The limits of map fields, which the schema derive cannot state: a binding's `config` has at
/// most [`plugins::CONFIG_ENTRIES_MAX`] entries.
fn describe_map_limits(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};

    let Some(components) = doc.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(bind))) = components.schemas.get_mut("BindPlugin")
        && let Some(RefOr::T(Schema::Object(config))) = bind.properties.get_mut("config")
    {
        config.max_properties = Some(plugins::CONFIG_ENTRIES_MAX);
    }
}

/// Adds to every operation of `doc` the refusals its kind of route answers whatever the route:
/// 429 past the caller's request rate, 400 for a path, query or body that does not parse, 413
/// for a body over its limit, 422 for a body's wrong types or values, 415 for a JSON body
/// without its content type. A route's own description of one of them is kept.
fn describe_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::content::Content;
    use utoipa::openapi::header::Header;
    use utoipa::openapi::schema::{Object, Type};
    use utoipa::openapi::{Ref, RefOr, Response};

    let error = |description: &str| {
        let mut response = Response::new(description);
        response.content.insert(
            "application/json".to_owned(),
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        );
        response
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let body = operation.request_body.as_ref();
            let reads_body = body.is_some();
            let reads_json = body.is_some_and(|b| b.content.contains_key("application/json"));
            let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, response: Response| {
                responses
                    .entry(status.to_owned())
                    .or_insert(RefOr::T(response));
            };
            if has_parameters || reads_body {
                add(
                    "400",
                    error("a path id that is no UUID, a bad query, or malformed JSON"),
                );
            }
            if reads_body {
                add(
                    "413",
                    error(
                        "the body is over the route's limit (`api.body_limit_bytes`, `api.upload_limit_bytes`)",
                    ),
                );
                add(
                    "422",
                    error("wrong types, missing or unknown fields, or values out of range (named)"),
                );
            }
            if reads_json {
                add(
                    "415",
                    error("the body is not sent as `Content-Type: application/json`"),
                );
            }
            let mut too_many = error(
                "the caller's `requests_per_second_max` (bursts of `request_burst_max`) was passed",
            );
            let mut retry_after = Header::new(Object::with_type(Type::Integer));
            retry_after.description = Some("seconds until a request is allowed again".to_owned());
            too_many
                .headers
                .insert("Retry-After".to_owned(), retry_after);
            add("429", too_many);
        }
    }
}

/// The API router: `/api/v1/…` and `/openapi.json`. Any other path under `/api/v1` answers a
/// JSON 404.
///
/// Every request under `/api/v1` with a valid token counts against its user's rate
/// ([`quotas`]); one past it answers 429 before its route reads anything.
pub fn router(state: ApiState) -> Router {
    let (routes, doc) = parts(state.limits);
    let doc = Arc::new(doc);
    let rate = quotas::RateLimit {
        keys: state.auth.clone(),
        limiter: Arc::new(quotas::RateLimiter::new(&state.quotas)),
        quotas: state.quotas,
    };
    routes
        .route("/api/v1/{*rest}", any(no_such_route))
        .layer(DefaultBodyLimit::max(state.limits.json_bytes))
        .layer(middleware::from_fn_with_state(rate, quotas::limit_rate))
        .route(
            "/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .with_state(state)
}

async fn no_such_route() -> ApiError {
    ApiError::NotFound("no such API route".to_owned())
}
