//! Plugins: upload `.wasm` bytes (checked exactly as `keel plugin check` checks a file), list,
//! read metadata, and bind a plugin version with its configuration to a profile — the hot-load.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use keel_kernel::engine::{Clock, SystemClock};
use keel_kernel::ids::{PluginId, ProfileId};
use keel_kernel::store::{BindingRow, NewPlugin, PluginRow};
use keel_kernel::strategy::PluginFault;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::errors::{ApiJson, ApiPath, ApiQuery, bytes_rejection};
use super::profiles::found;
use super::{ApiError, ApiState, Auth, ErrorBody};
use keel_runtime::check::check_bytes;
use keel_runtime::{CompileCancel, InstanceSetup, PluginVersion};

/// Most configuration entries a binding carries.
pub const CONFIG_ENTRIES_MAX: usize = 64;
/// The longest configuration key or value, in bytes.
pub const CONFIG_TEXT_BYTES_MAX: usize = 256;
/// The longest plugin name.
pub const PLUGIN_NAME_LEN_MAX: usize = 64;

pub(super) fn router(upload_bytes_max: usize) -> OpenApiRouter<ApiState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(list_plugins, upload_plugin))
        .layer(DefaultBodyLimit::max(upload_bytes_max));
    OpenApiRouter::new()
        .merge(uploads)
        .routes(routes!(read_plugin))
        .routes(routes!(read_binding, bind_plugin))
}

/// A stored plugin version.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    /// The plugin version's id.
    #[schema(value_type = String, format = Uuid)]
    pub plugin_id: PluginId,
    /// The name given at upload.
    pub name: String,
    /// The sha256 of its bytes, in hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size_bytes: i64,
    /// Uploaded, ms since the epoch.
    pub created_at_ms: i64,
    /// The world it implements, what it exports and imports, and the parameters it declares
    /// (`params`: name, default with its type, min, max, choices, description; null when it
    /// declares none).
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
}

impl PluginView {
    fn from_row(row: PluginRow) -> Result<Self, ApiError> {
        let report = serde_json::from_str(&row.report)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("stored plugin report: {e}")))?;
        Ok(PluginView {
            plugin_id: row.plugin,
            name: row.name,
            sha256: row.sha256,
            size_bytes: row.size_bytes,
            created_at_ms: row.created_at_ms,
            report,
        })
    }
}

/// The plugin bound to a profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct BindingView {
    /// The plugin version.
    #[schema(value_type = String, format = Uuid)]
    pub plugin_id: PluginId,
    /// Its sha256.
    pub sha256: String,
    /// The configuration given to its `init`.
    pub config: BTreeMap<String, String>,
    /// Bound, ms since the epoch.
    pub bound_at_ms: i64,
}

impl BindingView {
    pub(super) fn from_row(row: BindingRow) -> Result<Self, ApiError> {
        let config = serde_json::from_str(&row.config)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("stored binding config: {e}")))?;
        Ok(BindingView {
            plugin_id: row.plugin,
            sha256: row.sha256,
            config,
            bound_at_ms: row.bound_at_ms,
        })
    }
}

/// The answer to a binding.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoundView {
    /// What is bound now.
    pub binding: BindingView,
    /// `queued`: the running profile swaps at its next call boundary; `stored`: no loop runs
    /// the profile in this host, and the binding waits for one.
    pub swap: &'static str,
}

/// Query of an upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// A name for the plugin (default `plugin`): 1 to 64 characters, not only white space, with
    /// no control character (NUL included), line separator or invisible formatting character.
    #[param(min_length = 1, max_length = 64)]
    pub name: Option<String>,
}

/// Body of `PUT /api/v1/profiles/{profile_id}/plugin`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindPlugin {
    /// The plugin version to run (one of the caller's uploads).
    #[schema(value_type = String, format = Uuid)]
    pub plugin_id: Uuid,
    /// Settings handed to the plugin's `init` (at most 64, each key and value at most 256 bytes),
    /// checked first against the parameters the plugin declares.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Runs CPU-bound plugin work (compiling, `init`) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

/// Uploads a plugin (the request body is the `.wasm` component). It is checked as
/// `keel plugin check` checks a file — validated, compiled, instantiated and `init` run with no
/// configuration — and stored whole or not at all. The same bytes again answer 200 with the
/// stored version.
#[utoipa::path(post, path = "/plugins", tag = "plugins", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginView, description = "stored"),
              (status = 200, body = PluginView, description = "already stored"),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "a bad name, bytes that are no \
               valid plugin (or one over a compile limit, named), an `init` that fails, or the \
               user's `plugins_per_user_max` or `plugin_bytes_per_user_max` reached")))]
async fn upload_plugin(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    let bytes = body.map_err(bytes_rejection)?;
    let name = query.name.unwrap_or_else(|| "plugin".to_owned());
    keel_kernel::ids::check_name(&name, PLUGIN_NAME_LEN_MAX)
        .map_err(|e| ApiError::Unprocessable(format!("name: the plugin name {e}")))?;
    if bytes.is_empty() {
        return Err(ApiError::Unprocessable(
            "the request body must be the plugin's .wasm bytes".to_owned(),
        ));
    }
    // Refused before the compile when the quotas are already reached (the same bytes again
    // store nothing, so they are not); checked again where the row is written.
    let mut tx = state.store.tenant(caller.user).begin().await?;
    let stored = tx.plugins().await?;
    tx.commit().await?;
    let hashed = bytes.clone();
    let digest = blocking(move || keel_runtime::PluginDigest::of(&hashed)).await?;
    if !stored.iter().any(|p| p.sha256 == digest.as_str()) {
        check_quotas(&state, &stored, bytes.len())?;
    }
    let engine = state.plugins.clone();
    let wasm = bytes.clone();
    // An uploader that goes away drops this handler, and the guard gives the compile up.
    let cancel = CompileCancel::new();
    let guard = cancel.on_drop();
    let checked_name = name.clone();
    let checked =
        blocking(move || check_bytes(&engine, &wasm, &checked_name, Vec::new(), &cancel)).await?;
    guard.disarm();
    let checked =
        checked.map_err(|reason| ApiError::Unprocessable(format!("invalid plugin: {reason}")))?;
    if let Err(fault) = checked.init {
        return Err(ApiError::Unprocessable(format!(
            "plugin init failed with no configuration: {fault}"
        )));
    }
    let report = checked.version.report();
    let report = serde_json::json!({
        "world": report.world, "exports": report.exports, "imports": report.imports,
        "params": report.params,
    })
    .to_string();
    let mut tx = state.store.tenant(caller.user).begin().await?;
    // Concurrent uploads of one user count in turn: none past the quotas.
    tx.lock_user_quota().await?;
    let (row, inserted) = tx
        .insert_plugin(NewPlugin {
            name: &name,
            sha256: checked.version.digest().as_str(),
            report: &report,
            wasm: &bytes,
        })
        .await?;
    if inserted {
        let others: Vec<PluginRow> = tx
            .plugins()
            .await?
            .into_iter()
            .filter(|p| p.plugin != row.plugin)
            .collect();
        // Dropping the transaction rolls the insert back.
        check_quotas(&state, &others, bytes.len())?;
    }
    tx.commit().await?;
    let status = if inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(PluginView::from_row(row)?)))
}

/// Whether one more plugin of `size` bytes fits the user's quotas beside `stored`.
fn check_quotas(state: &ApiState, stored: &[PluginRow], size: usize) -> Result<(), ApiError> {
    let count_max = state.quotas.plugins_per_user_max;
    if stored.len() >= count_max {
        return Err(ApiError::Unprocessable(format!(
            "plugins_per_user_max: a user may store at most {count_max} plugins"
        )));
    }
    let bytes_max = state.quotas.plugin_bytes_per_user_max;
    let stored_bytes: u64 = stored
        .iter()
        .map(|p| u64::try_from(p.size_bytes).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    let size = u64::try_from(size).unwrap_or(u64::MAX);
    if stored_bytes.saturating_add(size) > bytes_max {
        return Err(ApiError::Unprocessable(format!(
            "plugin_bytes_per_user_max: a user may store at most {bytes_max} bytes of plugins; \
             {stored_bytes} are stored and this one has {size}"
        )));
    }
    Ok(())
}

/// Lists the caller's plugins, newest first.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, body = [PluginView]), (status = 401, body = ErrorBody)))]
async fn list_plugins(
    State(state): State<ApiState>,
    Auth(caller): Auth,
) -> Result<Json<Vec<PluginView>>, ApiError> {
    let mut tx = state.store.tenant(caller.user).begin().await?;
    let rows = tx.plugins().await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter()
            .map(PluginView::from_row)
            .collect::<Result<_, _>>()?,
    ))
}

/// Reads one plugin's metadata (sha256, size, world, exports, imports).
#[utoipa::path(get, path = "/plugins/{plugin_id}", tag = "plugins",
    params(("plugin_id" = Uuid, Path, description = "the plugin version")),
    responses((status = 200, body = PluginView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn read_plugin(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(plugin): ApiPath<Uuid>,
) -> Result<Json<PluginView>, ApiError> {
    let plugin = PluginId::from_uuid(plugin);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    let row = tx.plugin(plugin).await?;
    tx.commit().await?;
    let row = row.ok_or_else(|| no_plugin(plugin))?;
    Ok(Json(PluginView::from_row(row)?))
}

fn no_plugin(plugin: PluginId) -> ApiError {
    ApiError::NotFound(format!("no plugin {plugin}"))
}

/// Reads the plugin bound to the profile.
#[utoipa::path(get, path = "/profiles/{profile_id}/plugin", tag = "plugins",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = BindingView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn read_binding(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<BindingView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    let binding = tx.binding(profile).await?;
    tx.commit().await?;
    let binding = binding
        .ok_or_else(|| ApiError::NotFound(format!("profile {profile} has no plugin bound")))?;
    Ok(Json(BindingView::from_row(binding)?))
}

fn check_config(config: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if config.len() > CONFIG_ENTRIES_MAX {
        return Err(ApiError::Unprocessable(format!(
            "config has more than {CONFIG_ENTRIES_MAX} entries"
        )));
    }
    for (key, value) in config {
        if key.is_empty()
            || key.len() > CONFIG_TEXT_BYTES_MAX
            || value.len() > CONFIG_TEXT_BYTES_MAX
        {
            return Err(ApiError::Unprocessable(format!(
                "config keys must be 1 to {CONFIG_TEXT_BYTES_MAX} bytes and values at most {CONFIG_TEXT_BYTES_MAX}"
            )));
        }
    }
    Ok(())
}

/// Binds a plugin version and its configuration to the profile. The configuration is checked
/// against the parameters the plugin declares (an unknown key, a value of the wrong type or out
/// of range answers 422 naming the key), then a fresh instance runs `init` with it: if it
/// refuses, nothing changes (422). Then the binding is
/// stored and, if the profile runs in this host, its loop swaps to the new instance at its next
/// call boundary: the call in progress finishes on the old one, no candle is skipped or
/// delivered twice.
#[utoipa::path(put, path = "/profiles/{profile_id}/plugin", tag = "plugins",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    request_body = BindPlugin,
    responses((status = 200, body = BoundView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn bind_plugin(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiJson(body): ApiJson<BindPlugin>,
) -> Result<Json<BoundView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let plugin = PluginId::from_uuid(body.plugin_id);
    check_config(&body.config)?;
    let tenant = state.store.tenant(caller.user);
    let mut tx = tenant.begin().await?;
    found(&mut tx, profile, false).await?;
    let name = tx
        .plugin(plugin)
        .await?
        .ok_or_else(|| no_plugin(plugin))?
        .name;
    let wasm = tx
        .plugin_wasm(plugin)
        .await?
        .ok_or_else(|| no_plugin(plugin))?;
    tx.commit().await?;
    let version = load(&state, wasm).await?;
    let clock: Arc<dyn Clock> = state
        .control
        .clock(profile)
        .unwrap_or_else(|| Arc::new(SystemClock));
    let setup = InstanceSetup::new(profile, clock)
        .config(body.config.clone())
        .name(name);
    let engine = state.plugins.clone();
    let prepared = blocking(move || engine.prepare_replacement(&version, setup)).await?;
    let prepared = prepared.map_err(|fault| match fault {
        // Names the plugin, the key and what it takes.
        PluginFault::ConfigRefused(_) => ApiError::Unprocessable(format!("config: {fault}")),
        _ => ApiError::Unprocessable(format!("plugin init refused the configuration: {fault}")),
    })?;
    let config = serde_json::to_string(&body.config).expect("a map of strings serializes");
    let mut tx = tenant.begin().await?;
    found(&mut tx, profile, true).await?;
    tx.bind_plugin(profile, plugin, &config).await?;
    let binding = tx.binding(profile).await?.expect("just bound");
    tx.commit().await?;
    let swap = if state.control.offer_strategy(profile, prepared) {
        "queued"
    } else {
        "stored"
    };
    Ok(Json(BoundView {
        binding: BindingView::from_row(binding)?,
        swap,
    }))
}

/// Loads stored bytes into the plugin engine (they were checked at upload; the engine checks
/// them again, as it does any bytes).
async fn load(state: &ApiState, wasm: Vec<u8>) -> Result<PluginVersion, ApiError> {
    let engine = state.plugins.clone();
    let cancel = CompileCancel::new();
    let guard = cancel.on_drop();
    let version = blocking(move || engine.load_cancellable(&wasm, &cancel)).await?;
    guard.disarm();
    version.map_err(|e| ApiError::Unprocessable(format!("invalid plugin: {e:#}")))
}
