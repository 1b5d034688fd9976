//! The expression-of-interest routes of the HTTP API: send one to another region's offer, list
//! and read them, accept or decline an incoming one, record an outcome. Mounted by
//! [`crate::api::router`]; the logic lives in `interest`.

use axum::extract::State;
use axum::http::StatusCode;
use kim_protocol::RegionId;
use kim_protocol::direct::ContactDetails;
use kim_protocol::types::PartnershipType;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, AppState, ErrorBody, JsonBody, PathParams};
use crate::interest::{AnswerInput, InterestInput, InterestView, OutcomeInput};

/// Adds this module's routes to the API's route table.
pub fn routes(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    router
        .routes(routes!(list_interests, send_interest))
        .routes(routes!(get_interest))
        .routes(routes!(accept_interest))
        .routes(routes!(decline_interest))
        .routes(routes!(record_outcome))
}

/// An expression of interest to send.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendInterest {
    /// The offering region (hex id).
    pub region: String,
    /// The offer's (or request's) key.
    pub offer: String,
    #[serde(default)]
    pub cooperation_sought: Vec<PartnershipType>,
    pub message: String,
    #[serde(default)]
    pub questions: String,
    #[serde(default)]
    pub presentation: String,
    /// Released to the offering region only if it accepts.
    #[serde(default)]
    pub contact: ContactDetails,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "request.bad_parameter", message)
}

/// Expressions of interest this region sent and received, newest first.
#[utoipa::path(get, path = "/api/v1/interests", tag = "interest",
    responses((status = 200, body = [InterestView]), (status = 401, body = ErrorBody)))]
async fn list_interests(
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<InterestView>>, ApiError> {
    Ok(axum::Json(state.service.interests()?))
}

/// Respond to another region's offer: the expression is signed and delivered to that region's
/// node only (queued until its node takes it).
#[utoipa::path(post, path = "/api/v1/interests", tag = "interest", request_body = SendInterest,
    responses((status = 202, body = InterestView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn send_interest(
    State(state): State<AppState>,
    body: Result<JsonBody<SendInterest>, ApiError>,
) -> Result<(StatusCode, axum::Json<InterestView>), ApiError> {
    let outcome = match body {
        Ok(JsonBody(input)) => match RegionId::from_hex(&input.region) {
            None => Err(bad(format!(
                "{:?} is not a region id (64 hex characters)",
                input.region
            ))),
            Some(region) => state
                .service
                .express_interest(
                    region,
                    &input.offer,
                    InterestInput {
                        cooperation_sought: input.cooperation_sought,
                        message: input.message,
                        questions: input.questions,
                        presentation: input.presentation,
                        contact: input.contact,
                    },
                )
                .await
                .map_err(ApiError::from),
        },
        Err(e) => Err(e),
    };
    let view = state
        .audited("interest.send", "interests", outcome, |v| {
            format!("ok {}", v.id)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)))
}

/// One expression of interest, either direction.
#[utoipa::path(get, path = "/api/v1/interests/{id}", tag = "interest",
    params(("id" = String, Path)),
    responses((status = 200, body = InterestView), (status = 404, body = ErrorBody)))]
async fn get_interest(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<InterestView>, ApiError> {
    Ok(axum::Json(state.service.interest(&id)?))
}

async fn answer(
    state: &AppState,
    id: &str,
    accepted: bool,
    body: Result<JsonBody<AnswerInput>, ApiError>,
) -> Result<axum::Json<InterestView>, ApiError> {
    let outcome = match body {
        Ok(JsonBody(input)) => state
            .service
            .answer_interest(id, accepted, input)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let action = if accepted {
        "interest.accept"
    } else {
        "interest.decline"
    };
    let view = state
        .audited(action, &format!("interests/{id}"), outcome, |v| {
            format!("ok {}", v.status)
        })
        .await?;
    Ok(axum::Json(view))
}

/// Accept an incoming expression of interest: this side's contact goes to the interested
/// region, and its contact comes back.
#[utoipa::path(post, path = "/api/v1/interests/{id}/accept", tag = "interest",
    params(("id" = String, Path)), request_body = AnswerInput,
    responses((status = 200, body = InterestView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn accept_interest(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    body: Result<JsonBody<AnswerInput>, ApiError>,
) -> Result<axum::Json<InterestView>, ApiError> {
    answer(&state, &id, true, body).await
}

/// Decline an incoming expression of interest (no contact is released).
#[utoipa::path(post, path = "/api/v1/interests/{id}/decline", tag = "interest",
    params(("id" = String, Path)), request_body = AnswerInput,
    responses((status = 200, body = InterestView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn decline_interest(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    body: Result<JsonBody<AnswerInput>, ApiError>,
) -> Result<axum::Json<InterestView>, ApiError> {
    answer(&state, &id, false, body).await
}

/// Record the outcome of an accepted incoming expression of interest (a replicated record,
/// counted in the federation overview).
#[utoipa::path(post, path = "/api/v1/interests/{id}/outcome", tag = "interest",
    params(("id" = String, Path)), request_body = OutcomeInput,
    responses((status = 201, body = InterestView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn record_outcome(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    body: Result<JsonBody<OutcomeInput>, ApiError>,
) -> Result<(StatusCode, axum::Json<InterestView>), ApiError> {
    let outcome = match body {
        Ok(JsonBody(input)) => state
            .service
            .record_outcome(&id, input)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let view = state
        .audited(
            "interest.outcome",
            &format!("interests/{id}"),
            outcome,
            |v| format!("ok {}", v.outcome.clone().unwrap_or_default()),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}
