//! Operator routes: every profile of every user, the host-wide kill switch, a forced
//! reconciliation pass, the host's exchange account, and the end of a profile's quarantine. A
//! token without the operator role gets 403.

use axum::Json;
use axum::extract::State;
use keel_kernel::ids::{ProfileId, UserId};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use uuid::Uuid;

use super::errors::ApiPath;
use super::health::QuarantineView;
use super::{ApiError, ApiState, ControlChange, ErrorBody, OperatorAuth, ReconcileOutcome};

pub(super) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(all_profiles))
        .routes(routes!(
            host_kill_state,
            engage_host_kill,
            release_host_kill
        ))
        .routes(routes!(reconcile))
        .routes(routes!(assign_host_account, withdraw_host_account))
        .routes(routes!(clear_quarantine))
}

/// Asks to end a profile's quarantine, after reading its reason and evidence and putting right
/// what they show: the request is stored with the operator's id (whichever instance answers),
/// the instance running the profile runs a reconciliation pass, and the first pass that finds
/// the store and the exchange in agreement ends the quarantine (kept as history). A pass that
/// still finds drift keeps it and forgets the request. Answers the quarantine with the request.
#[utoipa::path(post, path = "/operator/profiles/{profile_id}/quarantine/clear", tag = "operator",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = QuarantineView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn clear_quarantine(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<QuarantineView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let operator = caller.user;
    let owner = state
        .store
        .operator(operator)
        .profile_owner(profile)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile {profile}")))?;
    // The request is written in the owner's scope, naming the operator who made it.
    let mut tx = state.store.tenant(owner).begin().await?;
    let requested = tx.request_quarantine_clear(profile, operator).await?;
    tx.commit().await?;
    let Some(quarantine) = requested else {
        return Err(ApiError::Conflict(format!(
            "profile {profile} is not quarantined"
        )));
    };
    tracing::warn!(%operator, profile_id = %profile, reason = %quarantine.reason, "an operator asked to clear the profile's quarantine");
    state
        .control
        .apply(profile, ControlChange::QuarantineClearRequested);
    Ok(Json(QuarantineView::of(&quarantine)))
}

/// Whether a profile may trade on the host's own exchange account.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostAccountView {
    /// The profile.
    #[schema(value_type = String, format = Uuid)]
    pub profile_id: ProfileId,
    /// True while an operator's assignment lets it trade on the host's account (when its owner
    /// stored credentials, it trades on theirs all the same).
    pub assigned: bool,
    /// False when the profile already was as asked.
    pub changed: bool,
}

/// Assigns the host's exchange account to a profile: without its owner's credentials it then
/// trades there instead of on paper. The instance running it restarts it on that account.
#[utoipa::path(put, path = "/operator/profiles/{profile_id}/host-account", tag = "operator",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = HostAccountView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn assign_host_account(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<HostAccountView>, ApiError> {
    set_host_account(&state, caller.user, ProfileId::from_uuid(profile), true).await
}

/// Takes the host's exchange account back from a profile: it trades on paper again (unless its
/// owner stored credentials).
#[utoipa::path(delete, path = "/operator/profiles/{profile_id}/host-account", tag = "operator",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = HostAccountView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn withdraw_host_account(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<HostAccountView>, ApiError> {
    set_host_account(&state, caller.user, ProfileId::from_uuid(profile), false).await
}

/// Stores the assignment (or its withdrawal), refused while the profile holds a position or an
/// open order: those are on the account it trades on now, and the profile restarts on the other
/// one, whose reconciliation would find them missing and quarantine it. Its owner (or an
/// operator, with the host-wide kill switch) stops its entries and lets its exits close them.
async fn set_host_account(
    state: &ApiState,
    operator: UserId,
    profile: ProfileId,
    assigned: bool,
) -> Result<Json<HostAccountView>, ApiError> {
    let owner = state
        .store
        .operator(operator)
        .profile_owner(profile)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile {profile}")))?;
    let mut tx = state.store.tenant(owner).begin().await?;
    let held: Vec<String> = tx
        .positions(profile)
        .await?
        .into_iter()
        .map(|position| format!("a position of {} {}", position.qty_open, position.symbol))
        .chain(
            tx.open_orders(profile)
                .await?
                .into_iter()
                .map(|order| format!("open order {}", order.client_order_id)),
        )
        .collect();
    tx.commit().await?;
    if !held.is_empty() {
        return Err(ApiError::Conflict(format!(
            "profile {profile} holds {} on the account it trades on now: stop its entries (its \
             kill switch) and let its exits close them, then change its account",
            held.join(", ")
        )));
    }
    let changed = state
        .store
        .operator(operator)
        .assign_host_account(profile, assigned)
        .await?;
    if changed {
        state.control.account_changed(profile);
        tracing::warn!(%operator, profile_id = %profile, assigned, "host exchange account assignment changed");
    }
    Ok(Json(HostAccountView {
        profile_id: profile,
        assigned,
        changed,
    }))
}

/// A profile as an operator sees it: whose it is and how it is switched, not its money.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorProfileView {
    /// The profile.
    #[schema(value_type = String, format = Uuid)]
    pub profile_id: ProfileId,
    /// Its owner.
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// Its name.
    pub name: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Paused by its owner.
    pub paused: bool,
    /// Its kill switch is engaged.
    pub killed: bool,
    /// A loop runs it in the answering host.
    pub running: bool,
}

/// The host-wide kill switch.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostKillView {
    /// True while no profile may open a position.
    pub engaged: bool,
}

/// Lists every profile of every user.
#[utoipa::path(get, path = "/operator/profiles", tag = "operator",
    responses((status = 200, body = [OperatorProfileView]), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn all_profiles(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
) -> Result<Json<Vec<OperatorProfileView>>, ApiError> {
    let rows = state.store.operator(caller.user).all_profiles().await?;
    let views = rows
        .into_iter()
        .map(|row| OperatorProfileView {
            running: state.control.is_running(row.profile),
            profile_id: row.profile,
            user_id: row.user,
            name: row.name,
            created_at_ms: row.created_at_ms,
            paused: row.paused,
            killed: row.killed,
        })
        .collect();
    Ok(Json(views))
}

/// Reads the host-wide kill switch.
#[utoipa::path(get, path = "/operator/kill", tag = "operator",
    responses((status = 200, body = HostKillView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn host_kill_state(
    State(state): State<ApiState>,
    OperatorAuth(_): OperatorAuth,
) -> Json<HostKillView> {
    Json(HostKillView {
        engaged: state.control.host_kill(),
    })
}

/// Engages the host-wide kill switch: no new entries on any profile of any instance on this
/// database (exits go on); it stays engaged across restarts until released.
#[utoipa::path(post, path = "/operator/kill", tag = "operator",
    responses((status = 200, body = HostKillView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn engage_host_kill(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
) -> Result<Json<HostKillView>, ApiError> {
    set_host_kill(&state, caller.user, true).await?;
    Ok(Json(HostKillView { engaged: true }))
}

/// Releases the host-wide kill switch, on every instance on this database.
#[utoipa::path(delete, path = "/operator/kill", tag = "operator",
    responses((status = 200, body = HostKillView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn release_host_kill(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
) -> Result<Json<HostKillView>, ApiError> {
    set_host_kill(&state, caller.user, false).await?;
    Ok(Json(HostKillView { engaged: false }))
}

/// Stores the switch first (every instance on the database applies it, and a restart keeps
/// it), then applies it here at once.
async fn set_host_kill(state: &ApiState, operator: UserId, engaged: bool) -> Result<(), ApiError> {
    state
        .store
        .operator(operator)
        .set_host_kill(engaged)
        .await?;
    state.control.set_host_kill(engaged);
    tracing::warn!(%operator, engaged, "host-wide kill switch set");
    Ok(())
}

/// Runs a reconciliation pass of every profile running in this host now, and reports each.
#[utoipa::path(post, path = "/operator/reconcile", tag = "operator",
    responses((status = 200, body = [ReconcileOutcome]), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn reconcile(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
) -> Json<Vec<ReconcileOutcome>> {
    tracing::info!(operator = %caller.user, "forced reconciliation pass");
    Json(state.control.reconcile_all().await)
}
