//! The HTTP API under `/api/v1`: JSON in and out, bearer token on every route but health,
//! errors as `{"error":{"code","message"}}`. The OpenAPI document is generated from the
//! handlers' annotations and the protocol types (utoipa), and served at `/api/v1/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use kim_protocol::envelope::Record;
use kim_protocol::membership::evaluate;
use kim_protocol::{RecordId, RegionId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::ingest::{Accepted, Rejected, Source, system_now_ms};
use crate::service::{Collection, ItemInput, ItemView, ListFilter, Service, ServiceError};
use crate::store::AuditEntry;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Service,
    pub token: Arc<String>,
    pub region_name: Arc<String>,
    pub nuts: Arc<String>,
    pub started_at_ms: u64,
    /// The network, when the node runs one (absent in tools that only serve the store).
    pub net: Option<crate::net::NetClient>,
    /// Which peers may connect (member nodes).
    pub access: Option<crate::node::PeerAccess>,
    /// Knowledge attachments held here.
    pub blobs: Arc<crate::blobs::BlobStore>,
}

impl AppState {
    /// Appends an audit entry and flushes the store, so the entry and whatever the call wrote
    /// to the local tree (drafts, private data) are durable before the answer goes out.
    async fn audit(&self, action: &str, target: &str, result: &str) -> Result<(), ApiError> {
        let entry = AuditEntry {
            seq: 0,
            at_ms: system_now_ms(),
            actor: token_fingerprint(&self.token),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
        };
        let store = self.service.ingest().store();
        if let Err(err) = store.audit_append(entry) {
            tracing::error!(cause = %err, action, target, "audit log write failed");
        }
        store
            .flush()
            .await
            .map_err(|e| ApiError::from(ServiceError::Store(e)))
    }

    /// Logs a mutating call with its outcome (`ok …` or the error code), makes it durable and
    /// passes the outcome on; a success that could not be flushed becomes a store failure.
    pub(crate) async fn audited<T>(
        &self,
        action: &str,
        target: &str,
        outcome: Result<T, ApiError>,
        ok: impl FnOnce(&T) -> String,
    ) -> Result<T, ApiError> {
        let result = match &outcome {
            Ok(value) => ok(value),
            Err(err) => err.code.to_string(),
        };
        let durable = self.audit(action, target, &result).await;
        let value = outcome?;
        durable.map(|()| value)
    }
}

/// Names a token in the audit log without revealing it.
pub fn token_fingerprint(token: &str) -> String {
    format!("token:{}", &blake3::hash(token.as_bytes()).to_hex()[..12])
}

/// An API error: status, stable code and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The error body every failing route returns.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `code.unknown_nuts`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> ApiError {
        let message = err.to_string();
        match err {
            ServiceError::BadBody(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request.invalid_body",
                message,
            ),
            ServiceError::Rejected(Rejected::Store(_)) | ServiceError::Store(_) => {
                tracing::error!(cause = %message, "store failure in a request");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store.failure", message)
            }
            ServiceError::Rejected(r) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code(), message)
            }
            ServiceError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "item.not_found", message)
            }
            ServiceError::NoDraft(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "draft.not_found", message)
            }
            ServiceError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "item.exists", message),
            ServiceError::Withdrawn { .. } => {
                ApiError::new(StatusCode::CONFLICT, "item.withdrawn", message)
            }
            ServiceError::BadRequest(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "request.bad_parameter", message)
            }
            ServiceError::Conflict(code, _) => ApiError::new(StatusCode::CONFLICT, code, message),
            ServiceError::Missing(code, _) => ApiError::new(StatusCode::NOT_FOUND, code, message),
            ServiceError::Search(_) => {
                tracing::error!(cause = %message, "search index failure in a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "search.unavailable",
                    message,
                )
            }
            ServiceError::KeyFiles(_) => {
                tracing::error!(cause = %message, "key file failure in a request");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "keys.files", message)
            }
            ServiceError::AttachmentMissing(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "knowledge.attachment_missing",
                message,
            ),
        }
    }
}

/// JSON body extractor whose failures use the API's error format.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request.content_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::new(
                        rejection.status(),
                        "request.unreadable",
                        rejection.body_text(),
                    )
                }
            })?;
        // Every request body is a JSON object; serde would also take a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Ok(_) => ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "request.invalid_body",
                        "the request body must be a JSON object",
                    ),
                    Err(e) => ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "request.malformed_json",
                        format!("the request body is not JSON: {e}"),
                    ),
                },
            );
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `application/json` or `application/*+json`, parameters allowed.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request.too_large",
        "request body is larger than request_body_bytes_max (256 MiB for POST /api/v1/import)",
    )
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "request.invalid_body",
            text,
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "request.malformed_json", text)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request.content_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            too_large()
        }
        _ => ApiError::new(rejection.status(), "request.unreadable", text),
    }
}

/// Query-string extractor whose failures use the API's error format.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "request.bad_parameter",
                    r.body_text(),
                )
            })
    }
}

/// Path-parameter extractor whose failures (e.g. invalid UTF-8) use the API's error format.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|r: PathRejection| {
                let status = r.status();
                if status.is_client_error() {
                    ApiError::new(status, "request.bad_parameter", r.body_text())
                } else {
                    ApiError::new(status, "request.unreadable", r.body_text())
                }
            })
    }
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/api/v1/health" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth.missing_token",
            "send Authorization: Bearer <token>; the token is in the data directory's api-token file",
        )
        .into_response(),
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth.bad_token",
            "the bearer token is wrong; read it from the data directory's api-token file",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(OpenApi)]
#[openapi(
    info(title = "KIM node API", description = "A regional node of the KIM federation."),
    modifiers(&BearerAuth),
    components(schemas(
        kim_protocol::types::Organisation,
        kim_protocol::types::Project,
        kim_protocol::types::Cooperation,
        kim_protocol::types::Knowledge,
        kim_protocol::types::RegionProfile,
        kim_protocol::types::Tombstone,
    )),
    security(("bearer" = [])),
    tags((name = "node"), (name = "items"), (name = "drafts"), (name = "backup"), (name = "find"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the router and the OpenAPI document from the same route table.
pub fn router(state: AppState, body_limit: usize) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, openapi) = crate::api_blobs::routes(
        crate::api_interest::routes(crate::api_members::routes(crate::api_find::routes(
            OpenApiRouter::with_openapi(ApiDoc::openapi()),
        ))),
        state.blobs.bytes_max(),
    )
    .routes(routes!(health))
    .routes(routes!(status))
    .routes(routes!(peers))
    .routes(routes!(openapi_json))
    .routes(routes!(list_items, publish_item))
    .routes(routes!(get_item, revise_item))
    .routes(routes!(withdraw_item))
    .routes(routes!(list_drafts))
    .routes(routes!(save_draft, delete_draft))
    .routes(routes!(publish_draft))
    .routes(routes!(get_record))
    .routes(routes!(audit_log))
    .routes(routes!(rotate_key))
    .routes(routes!(export_bundle))
    // A backup holds every record: import has its own, larger body limit.
    .routes(
        routes!(import_bundle).layer(DefaultBodyLimit::max(IMPORT_BODY_BYTES_MAX.max(body_limit))),
    )
    .split_for_parts();
    let openapi_doc = Arc::new(openapi.clone());
    let router = router
        // Before the layers: it applies to the routes' method routers.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "request.method_not_allowed",
                "this route does not take that method; see /api/v1/openapi.json",
            )
        })
        .layer(axum::Extension(openapi_doc))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(body_limit))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "request.no_route",
                "no such route; see /api/v1/openapi.json",
            )
        })
        .with_state(state);
    (router, openapi)
}

fn collection(name: &str) -> Result<Collection, ApiError> {
    Collection::parse(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "request.no_collection",
            format!("no collection {name:?}; use organisations, projects, offers or knowledge"),
        )
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/api/v1/health", tag = "node", security(()), responses((status = 200, body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The node's view of itself and the federation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub region: RegionId,
    pub region_name: String,
    pub nuts: String,
    pub federation: String,
    pub members: Vec<MemberView>,
    pub pending: usize,
    /// This region's standing: member, or pending with k of n endorsements.
    pub membership: crate::membership_ops::OwnStanding,
    /// Connected peers' ids.
    pub peers: Vec<String>,
    /// This node's network: identity, listen addresses, gossip and sync counters.
    pub network: Option<NetworkView>,
    /// Live items per kind.
    pub records: BTreeMap<String, u64>,
    /// Records held for sync (winners, tombstones, evidence, membership).
    pub sync_set: u64,
    pub state_digest: String,
    pub rejections: BTreeMap<String, u64>,
    pub store_bytes: u64,
    /// The search index: documents waiting for the indexer and commits since start.
    pub search: SearchView,
    pub uptime_ms: u64,
}

/// The search index part of the status.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchView {
    /// New winners handed to the indexer and not yet indexed (at most
    /// `kim_node::indexer::QUEUE_DOCS_MAX`; beyond it, ingest waits for the indexer).
    pub backlog: u64,
    /// Index commits made since the node started.
    pub commits: u64,
}

/// The network part of the status.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkView {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    /// Gossip and sync counters since start.
    #[serde(flatten)]
    pub stats: crate::net::NetStats,
}

/// A connected peer, for operators.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerView {
    pub peer_id: String,
    /// The member region whose profile lists this node.
    pub region: Option<RegionId>,
    pub region_name: Option<String>,
    pub addrs: Vec<String>,
    /// Last ping round trip, milliseconds.
    pub rtt_ms: Option<f64>,
    /// When our last sync session with the peer completed (ms since the Unix epoch).
    pub last_sync_ms: Option<u64>,
    /// The peer's gossip score (negative after invalid records).
    pub gossip_score: Option<f64>,
    /// Whether records we accept are forwarded to the peer at once.
    pub gossip_mesh: bool,
    /// A guest: a node that is not a member's (a candidate), limited to the join protocol.
    pub guest: bool,
}

/// Connected peers: region, addresses, round-trip time, last sync.
#[utoipa::path(get, path = "/api/v1/peers", tag = "node", responses((status = 200, body = [PeerView]), (status = 401, body = ErrorBody)))]
async fn peers(State(state): State<AppState>) -> Result<axum::Json<Vec<PeerView>>, ApiError> {
    Ok(axum::Json(peer_views(&state).await))
}

async fn peer_views(state: &AppState) -> Vec<PeerView> {
    let Some(net) = &state.net else {
        return Vec::new();
    };
    let membership = state.service.ingest().membership();
    let mut views: Vec<PeerView> = net
        .peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let region = state.access.as_ref().and_then(|a| a.region_of(&p.peer_id));
            PeerView {
                peer_id: p.peer_id.to_string(),
                region,
                region_name: region
                    .and_then(|r| membership.members.get(&r))
                    .map(|m| m.name.clone()),
                addrs: p.addrs.iter().map(ToString::to_string).collect(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                last_sync_ms: p.last_sync.and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_millis() as u64)
                }),
                gossip_score: p.gossip_score,
                gossip_mesh: p.gossip_mesh,
                guest: p.guest,
            }
        })
        .collect();
    views.sort_by(|a, b| {
        a.region_name
            .cmp(&b.region_name)
            .then(a.peer_id.cmp(&b.peer_id))
    });
    views
}

async fn network_view(state: &AppState) -> Option<NetworkView> {
    let net = state.net.as_ref()?;
    let stats = net.stats().await.ok()?;
    let listen_addrs =
        tokio::time::timeout(std::time::Duration::from_millis(200), net.listen_addrs())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
    Some(NetworkView {
        peer_id: net.local_peer_id().to_string(),
        listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
        stats,
    })
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub region: RegionId,
    pub name: String,
}

/// Node status: region, federation, members, peers, counts, rejections, store size.
#[utoipa::path(get, path = "/api/v1/status", tag = "node", responses((status = 200, body = Status), (status = 401, body = ErrorBody)))]
async fn status(State(state): State<AppState>) -> Result<axum::Json<Status>, ApiError> {
    let ingest = state.service.ingest();
    let membership = ingest.membership();
    let mut records = BTreeMap::new();
    for c in Collection::ALL {
        records.insert(
            c.kind().as_str().to_string(),
            state.service.count_live(c).await?,
        );
    }
    let digest = ingest.digest();
    Ok(axum::Json(Status {
        region: state.service.region(),
        region_name: state.region_name.to_string(),
        nuts: state.nuts.to_string(),
        federation: ingest.federation().to_hex(),
        members: membership
            .members
            .values()
            .map(|m| MemberView {
                region: m.region,
                name: m.name.clone(),
            })
            .collect(),
        pending: membership
            .pending
            .iter()
            .filter(|p| !p.is_expired(system_now_ms()))
            .count(),
        membership: crate::membership_ops::own_standing(
            &membership,
            &state.service.region(),
            system_now_ms(),
        ),
        peers: peer_views(&state)
            .await
            .into_iter()
            .map(|p| p.peer_id)
            .collect(),
        network: network_view(&state).await,
        records,
        sync_set: digest.count(),
        state_digest: digest.hash().to_hex(),
        rejections: ingest
            .rejections()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        store_bytes: ingest.store().size_on_disk(),
        search: SearchView {
            backlog: ingest.index_backlog() as u64,
            commits: ingest.index_commits(),
        },
        uptime_ms: system_now_ms().saturating_sub(state.started_at_ms),
    }))
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "node", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(doc.as_ref()).unwrap_or(Value::Null))
}

/// Query of a list call.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only items of this region (hex region id).
    pub region: Option<String>,
    /// NUTS code prefix, e.g. `AT2`.
    pub nuts: Option<String>,
    /// NACE code prefix, e.g. `26`.
    pub nace: Option<String>,
    /// `live` (default), `expired`, `withdrawn` or `all`.
    pub status: Option<String>,
    /// Case-insensitive text the title, summary or name contains.
    pub text: Option<String>,
    /// Cursor from a previous page's `next`.
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<usize>,
}

/// A page of items.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemPage {
    pub items: Vec<ItemView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

fn parse_region(text: &str) -> Result<RegionId, ApiError> {
    RegionId::from_hex(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            format!("region {text:?} is not 64 hex digits"),
        )
    })
}

/// List items of a collection, newest first.
/// What this node published or imported before the call is always listed; records from other
/// regions within seconds of arriving (at most 5 s), as in search.
#[utoipa::path(get, path = "/api/v1/{collection}", tag = "items",
    params(("collection" = String, Path, description = "organisations, projects, offers or knowledge"), ListQuery),
    responses((status = 200, body = ItemPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_items(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<axum::Json<ItemPage>, ApiError> {
    let c = collection(&name)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            "limit must be between 1 and 500",
        ));
    }
    let cursor = match &q.cursor {
        Some(c) => Some(kim_protocol::bytes::from_hex(c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "request.bad_parameter",
                "cursor is not hex",
            )
        })?),
        None => None,
    };
    let filter = ListFilter {
        region: q.region.as_deref().map(parse_region).transpose()?,
        nuts_prefix: q.nuts,
        nace_prefix: q.nace,
        status: q.status,
        text: q.text,
    };
    let (items, next) = state
        .service
        .list(c, &filter, cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(ItemPage {
        items,
        next: next.map(|n| kim_protocol::bytes::to_hex(&n)),
    }))
}

/// Publish a new item (signed and replicated; `private` stays on this node).
#[utoipa::path(post, path = "/api/v1/{collection}", tag = "items",
    params(("collection" = String, Path)), request_body = ItemInput,
    responses((status = 201, body = ItemView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn publish_item(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Result<JsonBody<ItemInput>, ApiError>,
) -> Result<(StatusCode, axum::Json<ItemView>), ApiError> {
    let target = match &body {
        Ok(JsonBody(input)) => format!("{name}/{}", input.key.as_deref().unwrap_or("(new)")),
        Err(_) => name.clone(),
    };
    let outcome = async {
        let c = collection(&name)?;
        let JsonBody(input) = body?;
        Ok(state.service.publish(c, input).await?)
    }
    .await;
    let target = match &outcome {
        Ok(view) => format!("{name}/{}", view.key),
        Err(_) => target,
    };
    let view = state
        .audited("publish", &target, outcome, |v| format!("ok {}", v.id))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Refuses a body whose `key` names another item than the path.
fn same_key(input: &ItemInput, key: &str) -> Result<(), ApiError> {
    match &input.key {
        Some(named) if named != key => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "request.invalid_body",
            format!(
                "the body names key {named:?} but the path {key:?}; omit key or make them equal"
            ),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// The owning region (hex); this node's region when absent.
    pub region: Option<String>,
}

/// One item.
#[utoipa::path(get, path = "/api/v1/{collection}/{key}", tag = "items",
    params(("collection" = String, Path), ("key" = String, Path), GetQuery),
    responses((status = 200, body = ItemView), (status = 404, body = ErrorBody)))]
async fn get_item(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<GetQuery>,
) -> Result<axum::Json<ItemView>, ApiError> {
    let c = collection(&name)?;
    let region = match q.region {
        Some(r) => parse_region(&r)?,
        None => state.service.region(),
    };
    Ok(axum::Json(state.service.get(c, &region, &key)?))
}

/// Publish a new revision of an own item.
#[utoipa::path(put, path = "/api/v1/{collection}/{key}", tag = "items",
    params(("collection" = String, Path), ("key" = String, Path)), request_body = ItemInput,
    responses((status = 200, body = ItemView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn revise_item(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
    body: Result<JsonBody<ItemInput>, ApiError>,
) -> Result<axum::Json<ItemView>, ApiError> {
    let outcome = async {
        let c = collection(&name)?;
        let JsonBody(input) = body?;
        same_key(&input, &key)?;
        Ok(state.service.revise(c, &key, input).await?)
    }
    .await;
    let target = format!("{name}/{key}");
    let view = state
        .audited("revise", &target, outcome, |v| format!("ok {}", v.id))
        .await?;
    Ok(axum::Json(view))
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawInput {
    #[serde(default)]
    pub reason: String,
}

/// Withdraw an own item: its body is erased on every node.
#[utoipa::path(post, path = "/api/v1/{collection}/{key}/withdraw", tag = "items",
    params(("collection" = String, Path), ("key" = String, Path)), request_body = WithdrawInput,
    responses((status = 200, body = ItemView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn withdraw_item(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
    body: Result<JsonBody<WithdrawInput>, ApiError>,
) -> Result<axum::Json<ItemView>, ApiError> {
    let outcome = async {
        let c = collection(&name)?;
        let JsonBody(input) = body?;
        Ok(state.service.withdraw(c, &key, input.reason).await?)
    }
    .await;
    let target = format!("{name}/{key}");
    let view = state
        .audited("withdraw", &target, outcome, |v| format!("ok {}", v.id))
        .await?;
    Ok(axum::Json(view))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DraftView {
    pub key: String,
    #[schema(value_type = Object)]
    pub draft: Value,
}

/// Drafts of a collection (local only).
#[utoipa::path(get, path = "/api/v1/drafts/{collection}", tag = "drafts",
    params(("collection" = String, Path)), responses((status = 200, body = Vec<DraftView>)))]
async fn list_drafts(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<axum::Json<Vec<DraftView>>, ApiError> {
    let c = collection(&name)?;
    Ok(axum::Json(
        state
            .service
            .drafts(c)?
            .into_iter()
            .map(|(key, draft)| DraftView { key, draft })
            .collect(),
    ))
}

/// Save a draft (checked against the schema, never published).
#[utoipa::path(put, path = "/api/v1/drafts/{collection}/{key}", tag = "drafts",
    params(("collection" = String, Path), ("key" = String, Path)), request_body = ItemInput,
    responses((status = 204), (status = 422, body = ErrorBody)))]
async fn save_draft(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
    body: Result<JsonBody<ItemInput>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let outcome = (|| {
        let c = collection(&name)?;
        let JsonBody(input) = body?;
        same_key(&input, &key)?;
        Ok(state.service.save_draft(c, &key, &input)?)
    })();
    let target = format!("drafts/{name}/{key}");
    state
        .audited("draft.save", &target, outcome, |()| "ok".into())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a draft.
#[utoipa::path(delete, path = "/api/v1/drafts/{collection}/{key}", tag = "drafts",
    params(("collection" = String, Path), ("key" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_draft(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let outcome =
        collection(&name).and_then(|c| state.service.delete_draft(c, &key).map_err(ApiError::from));
    let target = format!("drafts/{name}/{key}");
    state
        .audited("draft.delete", &target, outcome, |()| "ok".into())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish a draft and delete it.
#[utoipa::path(post, path = "/api/v1/drafts/{collection}/{key}/publish", tag = "drafts",
    params(("collection" = String, Path), ("key" = String, Path)),
    responses((status = 201, body = ItemView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn publish_draft(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
) -> Result<(StatusCode, axum::Json<ItemView>), ApiError> {
    let outcome = async {
        let c = collection(&name)?;
        Ok(state.service.publish_draft(c, &key).await?)
    }
    .await;
    let target = format!("drafts/{name}/{key}");
    let view = state
        .audited("draft.publish", &target, outcome, |v| {
            format!("ok {}", v.id)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordView {
    pub id: RecordId,
    /// The exact signed bytes, hex.
    pub record_hex: String,
    #[schema(value_type = Object)]
    pub content: Value,
}

/// One record by id, as exact signed bytes and decoded content.
#[utoipa::path(get, path = "/api/v1/records/{id}", tag = "items",
    params(("id" = String, Path, description = "record id, 64 hex digits")),
    responses((status = 200, body = RecordView), (status = 404, body = ErrorBody)))]
async fn get_record(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<RecordView>, ApiError> {
    let id = RecordId::from_hex(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            "id is not 64 hex digits",
        )
    })?;
    let bytes = state
        .service
        .ingest()
        .store()
        .record(&id)
        .map_err(|e| ApiError::from(ServiceError::Store(e)))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "record.not_found",
                format!("no record {id}"),
            )
        })?;
    let record = kim_protocol::Record::decode(bytes.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store.failure",
            e.to_string(),
        )
    })?;
    Ok(axum::Json(RecordView {
        id,
        record_hex: kim_protocol::bytes::to_hex(&bytes),
        content: serde_json::to_value(&record.content).unwrap_or(Value::Null),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number.
    pub after: Option<u64>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<usize>,
}

/// The audit log of every mutating call, oldest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "node", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>)))]
async fn audit_log(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<axum::Json<Vec<AuditEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            "limit must be between 1 and 1000",
        ));
    }
    Ok(axum::Json(
        state
            .service
            .ingest()
            .store()
            .audit_list(q.after, limit)
            .map_err(|e| ApiError::from(ServiceError::Store(e)))?,
    ))
}

/// A backup bundle: every signed record, and on request the local-only data.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always `kim-bundle/1`.
    pub format: String,
    pub federation: String,
    pub exported_at_ms: u64,
    /// Exact record bytes, hex, in id order.
    pub records: Vec<String>,
    /// Local-only data (drafts, private fields) as key → JSON, when requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub local: Option<BTreeMap<String, Value>>,
}

pub const BUNDLE_FORMAT: &str = "kim-bundle/1";

/// Largest bundle `POST /api/v1/import` takes: a node's whole export (hex doubles the record
/// bytes), well above `request_body_bytes_max`, which guards every other route.
pub const IMPORT_BODY_BYTES_MAX: usize = 256 * 1024 * 1024;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Include local-only data (drafts, contact persons, notes). Default false.
    pub local: Option<bool>,
}

/// Export every signed record (and optionally local data) as a bundle.
#[utoipa::path(get, path = "/api/v1/export", tag = "backup", params(ExportQuery),
    responses((status = 200, body = Bundle)))]
async fn export_bundle(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ExportQuery>,
) -> Result<axum::Json<Bundle>, ApiError> {
    let store = state.service.ingest().store();
    let mut records = Vec::new();
    for entry in store.records() {
        let (_, bytes) = entry.map_err(|e| ApiError::from(ServiceError::Store(e)))?;
        records.push(kim_protocol::bytes::to_hex(&bytes));
    }
    let local = if q.local.unwrap_or(false) {
        Some(
            store
                .local_scan("")
                .map_err(|e| ApiError::from(ServiceError::Store(e)))?
                .into_iter()
                .collect(),
        )
    } else {
        None
    };
    state
        .audit("export", &format!("{} records", records.len()), "ok")
        .await?;
    Ok(axum::Json(Bundle {
        format: BUNDLE_FORMAT.to_string(),
        federation: state.service.ingest().federation().to_hex(),
        exported_at_ms: system_now_ms(),
        records,
        local,
    }))
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub stored: usize,
    pub duplicates: usize,
    pub older: usize,
    pub local_values: usize,
}

/// Import a bundle: every record is verified before any is accepted; a tampered bundle is
/// refused whole with the position and reason of the first bad record.
#[utoipa::path(post, path = "/api/v1/import", tag = "backup", request_body = Bundle,
    responses((status = 200, body = ImportReport), (status = 422, body = ErrorBody)))]
async fn import_bundle(
    State(state): State<AppState>,
    body: Result<JsonBody<Bundle>, ApiError>,
) -> Result<axum::Json<ImportReport>, ApiError> {
    let result = match body {
        Ok(JsonBody(bundle)) => import(&state, bundle).await,
        Err(err) => Err(err),
    };
    let target = match &result {
        Ok(r) => format!("{} records", r.stored + r.duplicates + r.older),
        Err(_) => "bundle".to_string(),
    };
    state
        .audited("import", &target, result, |_| "ok".into())
        .await
        .map(axum::Json)
}

async fn import(state: &AppState, bundle: Bundle) -> Result<ImportReport, ApiError> {
    let ingest = state.service.ingest();
    let invalid = |position: usize, code: &'static str, why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!("record {position} of the bundle: {why}; nothing was imported"),
        )
    };
    if bundle.format != BUNDLE_FORMAT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "import.bad_format",
            format!("bundle format {:?} is not {BUNDLE_FORMAT}", bundle.format),
        ));
    }
    if bundle.federation != ingest.federation().to_hex() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "import.wrong_federation",
            "the bundle belongs to another federation; nothing was imported",
        ));
    }
    // Verify everything first: decode, signature (batched) and validation.
    let mut all = Vec::with_capacity(bundle.records.len());
    for (i, hex) in bundle.records.iter().enumerate() {
        let bytes = kim_protocol::bytes::from_hex(hex)
            .ok_or_else(|| invalid(i, "import.bad_hex", "not hex".into()))?;
        let record =
            kim_protocol::Record::decode(bytes).map_err(|e| invalid(i, e.code(), e.to_string()))?;
        all.push(record);
    }
    let ctx = kim_protocol::validate::Context {
        federation: ingest.federation(),
        now_ms: system_now_ms(),
    };
    for (chunk_index, chunk) in all.chunks(256).enumerate() {
        let refs: Vec<&kim_protocol::Record> = chunk.iter().collect();
        for (j, verdict) in kim_protocol::envelope::verify_batch(&refs)
            .into_iter()
            .enumerate()
        {
            let position = chunk_index * 256 + j;
            verdict
                .and_then(|()| kim_protocol::validate::validate(&chunk[j].content, &ctx))
                .map_err(|e| invalid(position, e.code(), e.to_string()))?;
        }
    }
    authorise_bundle(state, &all)
        .map_err(|(position, e)| invalid(position, e.code(), e.to_string()))?;
    // Membership records first, so authors admitted by them are members when their items come.
    let (membership, items): (Vec<_>, Vec<_>) = all
        .into_iter()
        .enumerate()
        .partition(|(_, r)| r.content.kind.is_membership());
    let mut report = ImportReport {
        stored: 0,
        duplicates: 0,
        older: 0,
        local_values: 0,
    };
    for group in [membership, items] {
        for chunk in group.chunks(1000) {
            // Signatures were verified above; the pipeline does the rest without repeating them.
            let records: Vec<kim_protocol::Record> = chunk.iter().map(|(_, r)| r.clone()).collect();
            for ((position, _), result) in chunk
                .iter()
                .zip(ingest.ingest_verified(records, Source::Import).await)
            {
                match result {
                    Ok(Accepted::Stored { .. }) | Ok(Accepted::Equivocation { .. }) => {
                        report.stored += 1
                    }
                    Ok(Accepted::Duplicate { .. }) => report.duplicates += 1,
                    Ok(Accepted::Older { .. }) => report.older += 1,
                    Err(e) => {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            e.code(),
                            format!(
                                "record {position} of the bundle was refused: {e}; records before it were imported, import again after fixing"
                            ),
                        ));
                    }
                }
            }
        }
    }
    if let Some(local) = bundle.local {
        for (key, value) in local {
            ingest
                .store()
                .local_put(&key, &value)
                .map_err(|e| ApiError::from(ServiceError::Store(e)))?;
            report.local_values += 1;
        }
    }
    Ok(report)
}

/// The pipeline's authorisation rule applied to a whole bundle before anything is written, so
/// a record the pipeline would refuse fails the import instead of half-importing it. Records
/// are judged against the membership the bundle's own membership records lead to; records
/// already held are skipped, as the pipeline does. Returns the first refused position.
///
/// Uses the pipeline's own rule (`ingest::authorise`); the pipeline checks again while writing.
fn authorise_bundle(state: &AppState, all: &[Record]) -> Result<(), (usize, Rejected)> {
    let ingest = state.service.ingest();
    let store = ingest.store();
    let stored = |e| (0, Rejected::from(e));
    let mut membership: Vec<Record> = store
        .membership_records()
        .map_err(stored)?
        .into_iter()
        .filter_map(|bytes| Record::decode(bytes).ok())
        .collect();
    membership.extend(
        all.iter()
            .filter(|r| r.content.kind.is_membership())
            .cloned(),
    );
    let current = ingest.membership();
    let after = evaluate(&current.charter, ingest.federation(), membership.iter());
    for (position, record) in all.iter().enumerate() {
        if store
            .has_record(&record.id)
            .map_err(|e| (position, e.into()))?
        {
            continue;
        }
        let verdict = crate::ingest::authorise(&after, record, Source::Import);
        verdict.map_err(|e| (position, e))?;
    }
    Ok(())
}

/// What `POST /api/v1/keys/rotate` takes.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyInput {
    /// Why the key is rotated; kept in this node's audit log, not published.
    #[serde(default)]
    pub reason: String,
}

/// What a key rotation did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyRotationView {
    pub region: RegionId,
    /// The retired key: records it signs from `created_at_ms` on are refused everywhere.
    pub old_key: kim_protocol::PublicKey,
    /// The key the node signs with from now on.
    pub new_key: kim_protocol::PublicKey,
    /// The key rotation record (signed by the old key).
    pub record: RecordId,
    pub created_at_ms: u64,
    /// Where the node keeps the old key (`region.key.retired-<ms>`).
    pub retired_key_file: String,
}

/// Rotate the region's signing key: the old key signs a handover to a new one, which every
/// node follows; records the old key signs after it are refused.
#[utoipa::path(post, path = "/api/v1/keys/rotate", tag = "node", request_body = RotateKeyInput,
    responses((status = 200, body = KeyRotationView), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn rotate_key(
    State(state): State<AppState>,
    body: Result<JsonBody<RotateKeyInput>, ApiError>,
) -> Result<axum::Json<KeyRotationView>, ApiError> {
    let target = match &body {
        Ok(JsonBody(input)) if !input.reason.is_empty() => {
            format!(
                "region key ({})",
                input.reason.chars().take(200).collect::<String>()
            )
        }
        _ => "region key".to_string(),
    };
    let outcome = async {
        body?;
        let rotated = state.service.rotate_key().await?;
        Ok(KeyRotationView {
            region: rotated.region,
            old_key: rotated.old_key,
            new_key: rotated.new_key,
            record: rotated.record,
            created_at_ms: rotated.created_at_ms,
            retired_key_file: rotated.retired_file.display().to_string(),
        })
    }
    .await;
    let view = state
        .audited("keys.rotate", &target, outcome, |v| {
            format!("ok {} new key {}", v.record, v.new_key)
        })
        .await?;
    Ok(axum::Json(view))
}
