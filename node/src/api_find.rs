//! The finding-partners routes of the HTTP API: federation-wide search, matches of an offer or
//! request, saved searches and their notifications, and the federation overview with the
//! co-operation potential between regions. Mounted by [`crate::api::router`].

use axum::extract::State;
use axum::http::StatusCode;
use kim_protocol::RegionId;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, AppState, ErrorBody, JsonBody, PathParams, QueryParams};
use crate::ingest::system_now_ms;
use crate::matches::{MATCH_LIMIT_MAX, MatchError, MatchReport, find_matches};
use crate::overview::{Overview, Potential, PotentialError, overview, potential};
use crate::saved::{self, Notification, SavedError, SavedSearch, SavedSearchInput};
use crate::search::SearchParams;
use crate::service::{Collection, ItemView, ServiceError};

/// Adds this module's routes to the API's route table.
pub fn routes(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    router
        .routes(routes!(search))
        .routes(routes!(offer_matches))
        .routes(routes!(list_saved, add_saved))
        .routes(routes!(delete_saved))
        .routes(routes!(list_notifications))
        .routes(routes!(mark_notifications_read))
        .routes(routes!(federation_overview))
        .routes(routes!(federation_potential))
}

fn bad_parameter(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "request.bad_parameter", message)
}

fn store_error(err: crate::store::StoreError) -> ApiError {
    ApiError::from(ServiceError::Store(err))
}

impl From<MatchError> for ApiError {
    fn from(err: MatchError) -> ApiError {
        let message = err.to_string();
        match err {
            MatchError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "item.not_found", message)
            }
            MatchError::Withdrawn { .. } => {
                ApiError::new(StatusCode::CONFLICT, "item.withdrawn", message)
            }
            MatchError::NotLive { .. } => {
                ApiError::new(StatusCode::CONFLICT, "match.not_live", message)
            }
            MatchError::NoIndex | MatchError::Search(_) => {
                tracing::error!(cause = %message, "search failed in a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "search.unavailable",
                    message,
                )
            }
            MatchError::Store(e) => store_error(e),
            MatchError::Damaged(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store.failure", message)
            }
        }
    }
}

impl From<SavedError> for ApiError {
    fn from(err: SavedError) -> ApiError {
        let message = err.to_string();
        match err {
            SavedError::BadQuery(_) | SavedError::BadName(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request.invalid_body",
                message,
            ),
            SavedError::TooMany => {
                ApiError::new(StatusCode::CONFLICT, "saved_search.too_many", message)
            }
            SavedError::NoSearch(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "saved_search.not_found", message)
            }
            SavedError::NoNotification(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "notification.not_found", message)
            }
            SavedError::Store(e) => store_error(e),
        }
    }
}

/// Runs blocking work (store scans, scoring) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "request.failed",
            format!("the request's worker failed: {e}"),
        )
    })?
}

/// One search hit: its BM25 score (0 without text) and the item.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub score: f32,
    pub item: ItemView,
}

/// A page of search hits.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResults {
    /// Items matching in all (ignores limit and offset).
    pub total: usize,
    pub hits: Vec<SearchHit>,
}

/// Full-text search over every offer, request, knowledge item, organisation and project this
/// node holds (its own and the federation's), with filters; relevance-ranked.
/// What this node published or imported before the call is always found; records from other
/// regions become searchable within seconds of arriving (at most 5 s).
#[utoipa::path(get, path = "/api/v1/search", tag = "find", params(SearchParams),
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)))]
async fn search(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<SearchParams>,
) -> Result<axum::Json<SearchResults>, ApiError> {
    let query = params.to_query(system_now_ms()).map_err(bad_parameter)?;
    state.service.ingest().search_fresh().await;
    blocking(move || {
        let index = state
            .service
            .ingest()
            .search()
            .ok_or(MatchError::NoIndex)?
            .clone();
        let total = index.count(&query).map_err(MatchError::from)?;
        let mut hits = Vec::new();
        for hit in index.search(&query).map_err(MatchError::from)? {
            let Some(collection) = Collection::ALL.into_iter().find(|c| c.kind() == hit.kind)
            else {
                continue;
            };
            match state.service.get(collection, &hit.region, &hit.key) {
                Ok(item) => hits.push(SearchHit {
                    score: hit.score,
                    item,
                }),
                // Withdrawn or replaced since the index commit: skip it.
                Err(ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(axum::Json(SearchResults { total, hits }))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MatchQuery {
    /// The owning region (hex); this node's region when absent.
    pub region: Option<String>,
    /// At most this many matches, 1–100 (default 20).
    pub limit: Option<usize>,
    /// Only matches scoring at least this, 0–100 (default 0).
    pub min_score: Option<u8>,
}

/// The matches of an offer or request: complementary, live items that pass both sides' partner
/// profiles, best first, each with its score out of 100, breakdown and why.
#[utoipa::path(get, path = "/api/v1/offers/{key}/matches", tag = "find",
    params(("key" = String, Path, description = "the offer's or request's item key"), MatchQuery),
    responses((status = 200, body = MatchReport), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn offer_matches(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(q): QueryParams<MatchQuery>,
) -> Result<axum::Json<MatchReport>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=MATCH_LIMIT_MAX).contains(&limit) {
        return Err(bad_parameter(format!(
            "limit must be between 1 and {MATCH_LIMIT_MAX}"
        )));
    }
    let min_score = q.min_score.unwrap_or(0);
    if min_score > 100 {
        return Err(bad_parameter("min_score must be between 0 and 100"));
    }
    let region = match &q.region {
        Some(r) => RegionId::from_hex(r)
            .ok_or_else(|| bad_parameter(format!("region {r:?} is not 64 hex digits")))?,
        None => state.service.region(),
    };
    state.service.ingest().search_fresh().await;
    blocking(move || {
        Ok(axum::Json(find_matches(
            state.service.ingest(),
            region,
            &key,
            limit,
            min_score,
            system_now_ms(),
        )?))
    })
    .await
}

/// Saved searches, oldest first (local to this node).
#[utoipa::path(get, path = "/api/v1/saved-searches", tag = "find",
    responses((status = 200, body = Vec<SavedSearch>)))]
async fn list_saved(
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<SavedSearch>>, ApiError> {
    Ok(axum::Json(saved::list(state.service.ingest().store())?))
}

/// Save a search: from now on, every new item that matches it, however it arrives, raises one
/// notification.
#[utoipa::path(post, path = "/api/v1/saved-searches", tag = "find",
    request_body = SavedSearchInput,
    responses((status = 201, body = SavedSearch), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_saved(
    State(state): State<AppState>,
    body: Result<JsonBody<SavedSearchInput>, ApiError>,
) -> Result<(StatusCode, axum::Json<SavedSearch>), ApiError> {
    let outcome = body.and_then(|JsonBody(input)| {
        saved::add(state.service.ingest().store(), input, system_now_ms()).map_err(ApiError::from)
    });
    let saved = state
        .audited("saved_search.add", "saved-searches", outcome, |s| {
            format!("ok {}", s.id)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(saved)))
}

/// Delete a saved search.
#[utoipa::path(delete, path = "/api/v1/saved-searches/{id}", tag = "find",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_saved(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let outcome = saved::remove(state.service.ingest().store(), &id).map_err(ApiError::from);
    state
        .audited(
            "saved_search.delete",
            &format!("saved-searches/{id}"),
            outcome,
            |()| "ok".into(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// Only notifications not yet marked read.
    pub unread: Option<bool>,
    /// At most this many, 1–1000 (default 100).
    pub limit: Option<usize>,
}

/// Notifications raised by saved searches, newest first.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "find", params(NotificationQuery),
    responses((status = 200, body = Vec<Notification>), (status = 400, body = ErrorBody)))]
async fn list_notifications(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<NotificationQuery>,
) -> Result<axum::Json<Vec<Notification>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad_parameter("limit must be between 1 and 1000"));
    }
    // Notifications are raised at the index commit: this node's own publishes raise theirs now.
    state.service.ingest().search_fresh().await;
    Ok(axum::Json(saved::notifications(
        state.service.ingest().store(),
        q.unread.unwrap_or(false),
        limit,
    )?))
}

/// Which notifications to mark read: `ids`, or every one with `all: true`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Marked {
    /// Notifications that were unread and are now read.
    pub marked: usize,
}

/// Mark notifications read. Unknown ids fail the whole call (nothing is marked).
#[utoipa::path(post, path = "/api/v1/notifications/read", tag = "find", request_body = MarkRead,
    responses((status = 200, body = Marked), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn mark_notifications_read(
    State(state): State<AppState>,
    body: Result<JsonBody<MarkRead>, ApiError>,
) -> Result<axum::Json<Marked>, ApiError> {
    // "All" means every notification this node's own publishes raised, too.
    state.service.ingest().search_fresh().await;
    let outcome = body.and_then(|JsonBody(input)| {
        let store = state.service.ingest().store();
        match (input.all, input.ids.is_empty()) {
            (true, true) => Ok(saved::mark_read(store, None)?),
            (false, false) if input.ids.len() <= saved::NOTIFICATIONS_MAX => {
                Ok(saved::mark_read(store, Some(&input.ids))?)
            }
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request.invalid_body",
                "name the notifications to mark in ids, or send {\"all\": true} alone",
            )),
        }
    });
    let marked = state
        .audited("notifications.read", "notifications", outcome, |n| {
            format!("ok {n}")
        })
        .await?;
    Ok(axum::Json(Marked { marked }))
}

/// Per region: live items by kind, co-operation kind and NACE section, and every item by
/// status. Outcomes join when expressions of interest record them.
#[utoipa::path(get, path = "/api/v1/federation/overview", tag = "find",
    responses((status = 200, body = Overview)))]
async fn federation_overview(
    State(state): State<AppState>,
) -> Result<axum::Json<Overview>, ApiError> {
    state.service.ingest().search_fresh().await;
    blocking(move || {
        Ok(axum::Json(overview(
            state.service.ingest(),
            system_now_ms(),
        )?))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PotentialQuery {
    /// Count pairs scoring at least this, 0–100 (default 50).
    pub threshold: Option<u8>,
}

/// The co-operation potential: a region × region matrix of complementary offer/request pairs
/// that pass the hard filters and score at least `threshold`.
#[utoipa::path(get, path = "/api/v1/federation/potential", tag = "find", params(PotentialQuery),
    responses((status = 200, body = Potential), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn federation_potential(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<PotentialQuery>,
) -> Result<axum::Json<Potential>, ApiError> {
    let threshold = q.threshold.unwrap_or(50);
    if threshold > 100 {
        return Err(bad_parameter("threshold must be between 0 and 100"));
    }
    state.service.ingest().search_fresh().await;
    blocking(move || {
        potential(state.service.ingest(), threshold, system_now_ms())
            .map(axum::Json)
            .map_err(|e| match e {
                PotentialError::Match(e) => e.into(),
                e @ PotentialError::TooMany(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "potential.too_large",
                    e.to_string(),
                ),
            })
    })
    .await
}
