//! The API's one error type and the extractors that turn bad input into it.
//!
//! Every refusal is a JSON body `{"error": "<what is wrong>", "code": "<kind>"}` with a 4xx
//! status. A 500 carries no detail (it is logged instead): it means a bug or a failing database.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_kernel::store::{Constraint, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::AuthError;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person to read.
    pub error: String,
    /// The kind of refusal, for a program: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `unprocessable`, `too_many_requests`, `internal`.
    pub code: &'static str,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: JSON syntax, a path or query that does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// No token, or one that does not verify.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// A verified caller without the operator role on an operator route.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing for this caller (also: it is another user's).
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the current state refuses it.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the route accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not of the media type the route accepts.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed input with values the API refuses (wrong types, unknown fields, bad values,
    /// a quota reached).
    #[error("{0}")]
    Unprocessable(String),
    /// The caller's requests came faster than their rate; they may try again after
    /// `retry_after_s` seconds (the `Retry-After` header).
    #[error("{message}")]
    TooManyRequests {
        /// What limit was passed.
        message: String,
        /// Seconds until a request is allowed again.
        retry_after_s: u64,
    },
    /// A bug or a failing dependency; the detail is logged, never returned.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// A 500 for an error the caller cannot fix.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(error) = &self {
            tracing::error!(error = %format!("{error:#}"), "API request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code,
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after_s, .. } = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(*retry_after_s),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::UnknownProfile(profile) => {
                ApiError::NotFound(format!("no profile {profile}"))
            }
            StoreError::InvalidProfileName(..) => ApiError::Unprocessable(error.to_string()),
            StoreError::Ledger(e) => ApiError::Unprocessable(e.to_string()),
            StoreError::Lifecycle(e) => ApiError::Conflict(e.to_string()),
            StoreError::Constraint(
                Constraint::CapitalInvariant | Constraint::CapitalNonNegative(_),
            ) => ApiError::Conflict("the capital ledger refused the change".to_owned()),
            StoreError::Constraint(Constraint::Budget(_)) => {
                ApiError::Conflict("the capital budget refused the change".to_owned())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<keel_kernel::money::MoneyError> for ApiError {
    fn from(error: keel_kernel::money::MoneyError) -> Self {
        ApiError::Unprocessable(error.to_string())
    }
}

/// A JSON body whose rejections are [`ApiError`]s that say what is wrong.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::Unprocessable(format!(
            "invalid request body: {}",
            inner_text(&e.body_text())
        )),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON: {}", inner_text(&e.body_text())))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "expected a JSON body with `Content-Type: application/json`".to_owned(),
        ),
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// The useful part of axum's rejection text ("Failed to …: <this>").
fn inner_text(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(_, inner)| inner)
}

/// Maps a failure to read the body: too large, or cut short.
pub fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("request body is larger than this route accepts".to_owned())
    } else {
        ApiError::BadRequest(format!(
            "reading the request body: {}",
            rejection.body_text()
        ))
    }
}

/// A query string whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!(
        "invalid query string: {}",
        inner_text(&rejection.body_text())
    ))
}

/// Path parameters whose rejections are [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(format!(
        "invalid path: {}",
        inner_text(&rejection.body_text())
    ))
}
