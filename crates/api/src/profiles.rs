//! Profiles: create, list, read, risk limits, delete, capital allocation, and the owner's
//! switches (pause, resume, kill).

use std::collections::BTreeSet;
use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keel_kernel::ids::{ProfileId, Symbol, check_name};
use keel_kernel::ledger::{CAPITAL_MAX, Capital};
use keel_kernel::money::Amount;
use keel_kernel::risk::{RiskLimits, check_decimal};
use keel_kernel::store::{PROFILE_NAME_LEN_MAX, ProfileRow, StoreError, TenantTx};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::errors::{ApiJson, ApiPath};
use super::health::{ProfileHealth, QuarantineView};
use super::plugins::BindingView;
use super::{ApiError, ApiState, Auth, ControlChange, ErrorBody};

pub use keel_kernel::risk::SYMBOLS_ALLOWED_MAX;

pub(super) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_profiles, create_profile))
        .routes(routes!(read_profile, delete_profile))
        .routes(routes!(update_risk))
        .routes(routes!(allocate))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(engage_kill, release_kill))
}

/// A profile's risk rules. Money is a decimal string with at most 8 decimal places. Each value
/// has a range (`keel_kernel::risk`'s constants); one outside it is answered 422 naming the
/// field and the range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Symbols the profile may trade (at most 64), such as `BTCUSDT`.
    #[schema(max_items = 64)]
    pub symbols_allowed: Vec<String>,
    /// Largest notional of one entry, in quote currency: in (0, 1000000000].
    #[schema(example = "1000")]
    pub entry_notional_max: String,
    /// Most positions open at once: 0 to 1000.
    #[schema(minimum = 0, maximum = 1000)]
    pub positions_open_max: u32,
    /// Largest total exposure divided by equity: in (0, 125].
    #[schema(example = "1")]
    pub leverage_max: String,
    /// How far a limit price may be from the last price, in basis points: 0 to 10000.
    #[schema(minimum = 0, maximum = 10000)]
    pub limit_price_band_bps: u32,
    /// Most intents accepted per minute: 1 to 6000.
    #[schema(minimum = 1, maximum = 6000)]
    pub intents_per_minute_max: u32,
    /// Largest realized loss per UTC day before entries stop, in quote currency: in
    /// [0, 1000000000].
    #[schema(example = "500")]
    pub daily_loss_max: String,
}

fn decimal(what: &str, text: &str) -> Result<Decimal, ApiError> {
    Decimal::from_str(text.trim()).map_err(|_| {
        ApiError::Unprocessable(format!(
            "{what} must be a decimal string in range, got {text:?}"
        ))
    })
}

/// Checks a profile name (`name` of a create request).
pub(super) fn check_profile_name(name: &str) -> Result<(), ApiError> {
    check_name(name, PROFILE_NAME_LEN_MAX)
        .map_err(|e| ApiError::Unprocessable(format!("name: the profile name {e}")))
}

impl RiskConfig {
    /// Checks every value and converts to the kernel's rules.
    pub fn to_limits(&self) -> Result<RiskLimits, ApiError> {
        let refuse = |message: String| Err(ApiError::Unprocessable(message));
        if self.symbols_allowed.len() > SYMBOLS_ALLOWED_MAX {
            return refuse(format!(
                "symbols_allowed has more than {SYMBOLS_ALLOWED_MAX} symbols"
            ));
        }
        let mut symbols = BTreeSet::new();
        for text in &self.symbols_allowed {
            let symbol = Symbol::new(text)
                .map_err(|e| ApiError::Unprocessable(format!("symbols_allowed: {e}")))?;
            symbols.insert(symbol);
        }
        let limits = RiskLimits {
            symbols_allowed: symbols,
            entry_notional_max: decimal("entry_notional_max", &self.entry_notional_max)?,
            positions_open_max: self.positions_open_max,
            leverage_max: decimal("leverage_max", &self.leverage_max)?,
            limit_price_band_bps: self.limit_price_band_bps,
            intents_per_minute_max: self.intents_per_minute_max,
            daily_loss_max: decimal("daily_loss_max", &self.daily_loss_max)?,
        };
        limits
            .validate()
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        Ok(limits)
    }

    fn from_limits(limits: &RiskLimits) -> Self {
        RiskConfig {
            symbols_allowed: limits
                .symbols_allowed
                .iter()
                .map(|s| s.to_string())
                .collect(),
            entry_notional_max: limits.entry_notional_max.to_string(),
            positions_open_max: limits.positions_open_max,
            leverage_max: limits.leverage_max.to_string(),
            limit_price_band_bps: limits.limit_price_band_bps,
            intents_per_minute_max: limits.intents_per_minute_max,
            daily_loss_max: limits.daily_loss_max.to_string(),
        }
    }
}

/// A profile's capital account. Amounts are decimal strings in quote currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct CapitalView {
    /// Capital given to the profile.
    pub allocated: String,
    /// Held by orders in flight.
    pub reserved_for_orders: String,
    /// Held by open positions.
    pub reserved_for_positions: String,
    /// Realized profit and loss, fees included.
    pub realized_pnl: String,
    /// What new entries may use.
    pub free: String,
}

impl From<Capital> for CapitalView {
    fn from(capital: Capital) -> Self {
        CapitalView {
            allocated: capital.allocated.to_string(),
            reserved_for_orders: capital.reserved_for_orders.to_string(),
            reserved_for_positions: capital.reserved_for_positions.to_string(),
            realized_pnl: capital.realized_pnl.to_string(),
            free: capital.free().to_string(),
        }
    }
}

/// A profile as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileView {
    /// The profile's id.
    #[schema(value_type = String, format = Uuid)]
    pub profile_id: ProfileId,
    /// Its name.
    pub name: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Its risk rules; `null` until set (a profile without rules may trade nothing).
    pub risk_limits: Option<RiskConfig>,
    /// New entries paused by the owner.
    pub paused: bool,
    /// The profile's kill switch is engaged.
    pub killed: bool,
    /// A loop runs this profile in the answering host.
    pub running: bool,
    /// Why no host runs it, when it is past its owner's running quota
    /// (`running_profiles_per_user_max: …`: it starts once one of the owner's older profiles is
    /// deleted); `null` otherwise.
    pub waiting: Option<String>,
    /// Its capital account.
    pub capital: CapitalView,
    /// The exchange account `keel serve` trades it on (`keel demo` trades every profile on
    /// paper).
    pub account: AccountKind,
    /// The plugin bound to it, if any (`null`: the host runs its default plugin).
    pub plugin: Option<BindingView>,
    /// Its plugin's and loops' state in the answering host: faults and quarantine.
    pub health: ProfileHealth,
    /// The plugin its loop runs in the answering host, bound or default (`null` when no loop
    /// runs it here). Right after a binding it still names the old plugin until the loop takes
    /// the new one at its next call boundary.
    pub running_plugin: Option<RunningPluginView>,
}

/// Which exchange account a profile trades on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// Its owner's, through the credentials they stored for it.
    Owner,
    /// The host's own account, which an operator assigned to it.
    Host,
    /// A paper account filled on the host's candles: neither of the above.
    Paper,
}

/// The plugin a profile's loop runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunningPluginView {
    /// Its upload name, or for a host's default plugin its file name.
    pub name: String,
    /// The sha256 of its component, in hex.
    pub sha256: String,
}

/// Body of `POST /api/v1/profiles`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProfile {
    /// 1 to 64 characters, not only white space, with no control character (NUL included),
    /// line separator or invisible formatting character (bidirectional overrides, zero-width).
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// Its risk rules; without them it may trade nothing until they are set.
    pub risk_limits: Option<RiskConfig>,
}

/// Body of `POST /api/v1/profiles/{profile_id}/allocations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// Capital to add, a decimal string in quote currency: in (0, 10000000000] with at most 8
    /// decimal places (and the profile's allocated capital stays at most 10000000000).
    #[schema(example = "1000")]
    pub amount: String,
}

/// The caller's profiles within their running quota (`tx`'s user's).
pub(super) async fn within_running_quota(
    state: &ApiState,
    tx: &mut TenantTx,
) -> Result<BTreeSet<ProfileId>, ApiError> {
    let quota = state.quotas.running_profiles_per_user_max;
    Ok(tx.oldest_profiles(quota).await?.into_iter().collect())
}

/// Reads everything the view shows of `row` in `tx`.
pub(super) async fn view(
    state: &ApiState,
    tx: &mut TenantTx,
    row: ProfileRow,
) -> Result<ProfileView, ApiError> {
    let runnable = within_running_quota(state, tx).await?;
    view_with(state, tx, row, &runnable).await
}

/// [`view`], given the profiles within the caller's running quota.
async fn view_with(
    state: &ApiState,
    tx: &mut TenantTx,
    row: ProfileRow,
    runnable: &BTreeSet<ProfileId>,
) -> Result<ProfileView, ApiError> {
    let waiting = (!runnable.contains(&row.profile))
        .then(|| crate::quotas::running_quota_reason(state.quotas.running_profiles_per_user_max));
    let capital = tx.capital(row.profile).await?;
    let account = if tx.credentials(row.profile).await?.is_some() {
        AccountKind::Owner
    } else if tx.host_account_assigned(row.profile).await? {
        AccountKind::Host
    } else {
        AccountKind::Paper
    };
    let plugin = tx
        .binding(row.profile)
        .await?
        .map(BindingView::from_row)
        .transpose()?;
    let mut health = ProfileHealth::of(&state.health, row.profile);
    // The stored quarantine, whichever instance runs the profile (or none).
    health.quarantine = tx
        .quarantine(row.profile)
        .await?
        .as_ref()
        .map(QuarantineView::of);
    Ok(ProfileView {
        profile_id: row.profile,
        name: row.name,
        created_at_ms: row.created_at_ms,
        risk_limits: row.risk_limits.as_ref().map(RiskConfig::from_limits),
        paused: row.paused,
        killed: row.killed,
        running: state.control.is_running(row.profile),
        waiting,
        capital: capital.into(),
        account,
        plugin,
        health,
        running_plugin: state.control.running_plugin(row.profile).map(|running| {
            RunningPluginView {
                name: running.name.to_string(),
                sha256: running.digest.to_string(),
            }
        }),
    })
}

/// The profile of this tenant, or 404.
pub(super) async fn found(
    tx: &mut TenantTx,
    profile: ProfileId,
    lock: bool,
) -> Result<ProfileRow, ApiError> {
    tx.profile(profile, lock)
        .await?
        .ok_or_else(|| ApiError::from(StoreError::UnknownProfile(profile)))
}

/// Lists the caller's profiles.
#[utoipa::path(get, path = "/profiles", tag = "profiles",
    responses((status = 200, body = [ProfileView]), (status = 401, body = ErrorBody)))]
async fn list_profiles(
    State(state): State<ApiState>,
    Auth(caller): Auth,
) -> Result<Json<Vec<ProfileView>>, ApiError> {
    let mut tx = state.store.tenant(caller.user).begin().await?;
    let runnable = within_running_quota(&state, &mut tx).await?;
    let mut views = Vec::new();
    for row in tx.profiles().await? {
        views.push(view_with(&state, &mut tx, row, &runnable).await?);
    }
    tx.commit().await?;
    Ok(Json(views))
}

/// Creates a profile with an empty capital account.
#[utoipa::path(post, path = "/profiles", tag = "profiles", request_body = CreateProfile,
    responses((status = 201, body = ProfileView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "a bad name or risk limit (the \
               field and its range named), or the user's `profiles_per_user_max` reached")))]
async fn create_profile(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<CreateProfile>,
) -> Result<(StatusCode, Json<ProfileView>), ApiError> {
    check_profile_name(&body.name)?;
    let limits = body
        .risk_limits
        .as_ref()
        .map(RiskConfig::to_limits)
        .transpose()?;
    let mut tx = state.store.tenant(caller.user).begin().await?;
    // Concurrent creates of one user count in turn: none past the quota.
    tx.lock_user_quota().await?;
    let quota = state.quotas.profiles_per_user_max;
    if tx.profiles().await?.len() >= quota {
        return Err(ApiError::Unprocessable(format!(
            "profiles_per_user_max: a user may have at most {quota} profiles; delete one first"
        )));
    }
    let profile = match &limits {
        Some(limits) => tx.create_profile_with_limits(&body.name, limits).await?,
        None => tx.create_profile(&body.name).await?,
    };
    let row = found(&mut tx, profile, false).await?;
    let view = view(&state, &mut tx, row).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Reads one profile.
#[utoipa::path(get, path = "/profiles/{profile_id}", tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn read_profile(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<ProfileView>, ApiError> {
    let mut tx = state.store.tenant(caller.user).begin().await?;
    let row = found(&mut tx, ProfileId::from_uuid(profile), false).await?;
    let view = view(&state, &mut tx, row).await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// Deletes a profile that holds nothing: no open order, no open position, no running loop.
/// Its history stays in the store (the ledger is append-only); the profile answers 404 after.
#[utoipa::path(delete, path = "/profiles/{profile_id}", tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_profile(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, true).await?;
    if state.control.is_running(profile) {
        return Err(ApiError::Conflict(format!(
            "profile {profile} is running in this host; it can be deleted once no loop runs it"
        )));
    }
    let orders = tx.open_orders(profile).await?.len();
    let positions = tx.positions(profile).await?.len();
    if orders > 0 || positions > 0 {
        return Err(ApiError::Conflict(format!(
            "profile {profile} has {orders} open orders and {positions} open positions; close them first"
        )));
    }
    let deleted = tx.delete_profile(profile).await?;
    assert!(
        deleted,
        "the profile was found and locked in this transaction"
    );
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the profile's risk rules; a running profile checks its next intent against them.
#[utoipa::path(put, path = "/profiles/{profile_id}/risk", tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    request_body = RiskConfig,
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_risk(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RiskConfig>,
) -> Result<Json<ProfileView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let limits = body.to_limits()?;
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, true).await?;
    tx.set_risk_limits(profile, &limits).await?;
    let row = found(&mut tx, profile, false).await?;
    let view = view(&state, &mut tx, row).await?;
    tx.commit().await?;
    state.control.apply(profile, ControlChange::Limits(limits));
    Ok(Json(view))
}

/// Adds capital to the profile through the capital ledger (one journal entry).
#[utoipa::path(post, path = "/profiles/{profile_id}/allocations", tag = "profiles",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    request_body = Allocation,
    responses((status = 200, body = CapitalView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn allocate(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Allocation>,
) -> Result<Json<CapitalView>, ApiError> {
    let profile = ProfileId::from_uuid(profile);
    let amount = decimal("amount", &body.amount)?;
    check_decimal("amount", amount, false, CAPITAL_MAX)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let amount = Amount::positive(amount)?;
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, false).await?;
    tx.commit().await?;
    within_account_balances(&state, profile, amount.get()).await?;
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, true).await?;
    let capital = tx.allocate(profile, amount).await?;
    tx.commit().await?;
    Ok(Json(capital.into()))
}

/// Refuses an allocation that would take the capital of the profiles on a real exchange
/// account the profile trades on (allocated plus realized PnL) beyond the wallet balance it last
/// reported (`account_balances`, written by the account audit of the instances running them).
/// An account that never reported a balance is not checked here; the audit reports it later.
async fn within_account_balances(
    state: &ApiState,
    profile: ProfileId,
    amount: Decimal,
) -> Result<(), ApiError> {
    for account in state.store.profile_accounts(profile).await? {
        let Some(balance) = state.store.account_balance(&account).await? else {
            continue;
        };
        let capital = state.store.account_capital(&account).await?;
        if capital + amount > balance {
            return Err(ApiError::Unprocessable(format!(
                "the exchange account this profile trades on reports a balance of {balance} USDT \
                 and its profiles' capital (allocated plus realized PnL) is {capital}: {amount} \
                 more would exceed it"
            )));
        }
    }
    Ok(())
}

/// One of the owner's switches.
#[derive(Debug, Clone, Copy)]
enum Switch {
    Paused(bool),
    Killed(bool),
    /// Unpaused, and a request to end the quarantine recorded if the profile is quarantined.
    Resumed,
}

/// Stores a switch, then tells the running loop.
async fn switch(
    state: &ApiState,
    caller: crate::auth::Caller,
    profile: ProfileId,
    switch: Switch,
) -> Result<Json<ProfileView>, ApiError> {
    let mut tx = state.store.tenant(caller.user).begin().await?;
    found(&mut tx, profile, true).await?;
    let changes = match switch {
        Switch::Paused(paused) => {
            tx.set_paused(profile, paused).await?;
            vec![ControlChange::Paused(paused)]
        }
        Switch::Killed(killed) => {
            tx.set_killed(profile, killed).await?;
            vec![ControlChange::Killed(killed)]
        }
        Switch::Resumed => {
            tx.set_paused(profile, false).await?;
            if tx
                .request_quarantine_clear(profile, caller.user)
                .await?
                .is_some()
            {
                tracing::warn!(user_id = %caller.user, profile_id = %profile, "the owner asked to clear the profile's quarantine");
            }
            vec![ControlChange::Paused(false), ControlChange::ClearQuarantine]
        }
    };
    let row = found(&mut tx, profile, false).await?;
    let view = view(state, &mut tx, row).await?;
    tx.commit().await?;
    for change in changes {
        state.control.apply(profile, change);
    }
    Ok(Json(view))
}

/// Pauses new entries (exits keep running).
#[utoipa::path(post, path = "/profiles/{profile_id}/pause", tag = "controls",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn pause(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<ProfileView>, ApiError> {
    switch(
        &state,
        caller,
        ProfileId::from_uuid(profile),
        Switch::Paused(true),
    )
    .await
}

/// Resumes new entries after a pause (the kill switch stays as it is). For a quarantined profile
/// it records the owner's request to end the quarantine (`health.quarantine.clear_requested_by`),
/// whichever instance answers: the instance running the profile runs a reconciliation pass, and
/// the quarantine ends at the first pass that finds the store and the exchange in agreement; one
/// that still differs stays quarantined and forgets the request.
#[utoipa::path(post, path = "/profiles/{profile_id}/resume", tag = "controls",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn resume(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<ProfileView>, ApiError> {
    switch(
        &state,
        caller,
        ProfileId::from_uuid(profile),
        Switch::Resumed,
    )
    .await
}

/// Engages the profile's kill switch: no new entries until it is released.
#[utoipa::path(post, path = "/profiles/{profile_id}/kill", tag = "controls",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn engage_kill(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<ProfileView>, ApiError> {
    switch(
        &state,
        caller,
        ProfileId::from_uuid(profile),
        Switch::Killed(true),
    )
    .await
}

/// Releases the profile's kill switch.
#[utoipa::path(delete, path = "/profiles/{profile_id}/kill", tag = "controls",
    params(("profile_id" = Uuid, Path, description = "the profile")),
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn release_kill(
    State(state): State<ApiState>,
    Auth(caller): Auth,
    ApiPath(profile): ApiPath<Uuid>,
) -> Result<Json<ProfileView>, ApiError> {
    switch(
        &state,
        caller,
        ProfileId::from_uuid(profile),
        Switch::Killed(false),
    )
    .await
}
