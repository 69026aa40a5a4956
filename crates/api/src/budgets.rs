//! Capital budgets: an operator grants each user capital to allocate; a user allocates to their
//! own profiles within it (`POST /profiles/{id}/allocations` draws on it) and reads what is left.

use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use keel_kernel::ids::UserId;
use keel_kernel::ledger::{Budget, CAPITAL_MAX, check_amount};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::errors::{ApiJson, ApiPath};
use super::{ApiError, ApiState, Auth, ErrorBody, OperatorAuth};

pub(super) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(own_budget))
        .routes(routes!(user_budget, grant_budget))
}

/// A user's capital budget. Amounts are decimal strings in quote currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    /// The user.
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// The sum of every operator's grants.
    pub granted: String,
    /// The sum of every allocation to the user's profiles.
    pub allocated: String,
    /// What the user may still allocate: `granted - allocated`.
    pub available: String,
}

impl BudgetView {
    fn of(user_id: UserId, budget: Budget) -> BudgetView {
        BudgetView {
            user_id,
            granted: budget.granted.get().normalize().to_string(),
            allocated: budget.allocated.get().normalize().to_string(),
            available: budget.available().normalize().to_string(),
        }
    }
}

/// Body of `POST /api/v1/operator/users/{user_id}/budget`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Capital to grant, a decimal string in quote currency with at most 8 decimal places, not
    /// zero: negative takes back what the user has not allocated. The budget stays within
    /// [allocated, 10000000000].
    #[schema(example = "10000")]
    pub amount: String,
}

/// Reads the caller's own capital budget.
#[utoipa::path(get, path = "/budget", tag = "profiles",
    responses((status = 200, body = BudgetView), (status = 401, body = ErrorBody)))]
async fn own_budget(
    State(state): State<ApiState>,
    Auth(caller): Auth,
) -> Result<Json<BudgetView>, ApiError> {
    let mut tx = state.store.tenant(caller.user).begin().await?;
    let budget = tx.budget().await?;
    tx.commit().await?;
    Ok(Json(BudgetView::of(caller.user, budget)))
}

/// Reads a user's capital budget.
#[utoipa::path(get, path = "/operator/users/{user_id}/budget", tag = "operator",
    params(("user_id" = Uuid, Path, description = "the user")),
    responses((status = 200, body = BudgetView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn user_budget(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
    ApiPath(user): ApiPath<Uuid>,
) -> Result<Json<BudgetView>, ApiError> {
    let user = UserId::from_uuid(user);
    let budget = state.store.operator(caller.user).budget(user).await?;
    Ok(Json(BudgetView::of(user, budget)))
}

/// Grants a user capital to allocate to their profiles (negative: takes back what they have
/// not allocated). Each grant is journalled with the operator who made it.
#[utoipa::path(post, path = "/operator/users/{user_id}/budget", tag = "operator",
    params(("user_id" = Uuid, Path, description = "the user")),
    request_body = Grant,
    responses((status = 200, body = BudgetView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn grant_budget(
    State(state): State<ApiState>,
    OperatorAuth(caller): OperatorAuth,
    ApiPath(user): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Grant>,
) -> Result<Json<BudgetView>, ApiError> {
    let user = UserId::from_uuid(user);
    let amount = Decimal::from_str(body.amount.trim())
        .ok()
        .filter(|amount| !amount.is_zero() && check_amount("amount", *amount).is_ok())
        .ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "amount must be a non-zero decimal string in [-{CAPITAL_MAX}, {CAPITAL_MAX}] \
                 with at most 8 decimal places, got {:?}",
                body.amount
            ))
        })?;
    let budget = state
        .store
        .operator(caller.user)
        .grant_budget(user, amount)
        .await?;
    tracing::warn!(operator = %caller.user, %user, %amount, granted = %budget.granted, "capital budget granted");
    Ok(Json(BudgetView::of(user, budget)))
}
