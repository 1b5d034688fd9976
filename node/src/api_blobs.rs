//! The attachment routes of the HTTP API: upload a file (`POST /api/v1/blobs`), download one a
//! live knowledge item lists (`GET /api/v1/blobs/{hash}`, fetched from members' nodes on
//! demand) and see what this node holds of it (`GET /api/v1/blobs/{hash}/status`).
//! Mounted by [`crate::api::router`]; the store and transfers live in `blobs.rs`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kim_protocol::Hash32;
use kim_protocol::types::Attachment;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::api::{ApiError, AppState, ErrorBody, PathParams};
use crate::blobs::{FetchError, Held};

/// How long a download waits for a fetch from peers before answering 504 (the fetch goes on
/// in the background only while the request waits; what verified is kept for the next try).
pub const FETCH_WAIT: Duration = Duration::from_secs(120);

/// Adds this module's routes to the API's route table; uploads take up to `bytes_max` bytes.
pub fn routes(router: OpenApiRouter<AppState>, bytes_max: u64) -> OpenApiRouter<AppState> {
    let limit = usize::try_from(bytes_max).unwrap_or(usize::MAX);
    router
        .routes(routes!(upload).layer(DefaultBodyLimit::max(limit)))
        .routes(routes!(download))
        .routes(routes!(blob_status))
}

/// A stored upload: what to put in a knowledge item's `attachments`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// BLAKE3 hash of the file (hex): the attachment's `blake3`.
    pub blake3: String,
    pub size_bytes: u64,
    /// The media type the upload was sent with (`Content-Type`).
    pub media_type: String,
}

/// What this node holds of an attachment.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobStatus {
    pub blake3: String,
    /// `held` (complete, verified), `partial` (a transfer under way or interrupted) or `absent`.
    pub state: String,
    /// Size of the file held or being fetched.
    pub size_bytes: Option<u64>,
    /// Verified pieces (1 MiB) present, and how many the file has.
    pub pieces_have: u64,
    pub pieces_total: Option<u64>,
    /// Whether a live knowledge item lists it (only those are served and kept).
    pub listed: bool,
}

fn hash_param(text: &str) -> Result<Hash32, ApiError> {
    Hash32::from_hex(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            format!("{text:?} is not a BLAKE3 hash (64 hex characters)"),
        )
    })
}

/// The media type of an upload: `Content-Type` without parameters, `type/subtype` tokens as
/// the protocol requires; `application/octet-stream` when absent.
fn media_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/octet-stream".into());
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "blob.bad_media_type",
            "Content-Type must be a media type like application/pdf",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(&b))
    };
    match essence.split_once('/') {
        Some((t, s)) if token(t) && token(s) => Ok(essence),
        _ => Err(bad()),
    }
}

fn store_failure(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(cause = %e, "attachment store failure in a request");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "blob.store_failure",
        e.to_string(),
    )
}

/// Uploads a file; staff then list it in a knowledge item's `attachments` (publish or revise).
#[utoipa::path(post, path = "/api/v1/blobs", tag = "attachments",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the file's bytes; Content-Type is its media type"),
    responses((status = 201, body = Uploaded), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Uploaded>), ApiError> {
    let max = state.blobs.bytes_max();
    let outcome = async {
        let media_type = media_type(&headers)?;
        let body = body.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "blob.too_large",
                    format!("the file is larger than blob_bytes_max ({max} bytes)"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "request.unreadable", r.body_text())
            }
        })?;
        if body.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "blob.empty",
                "an attachment cannot be empty",
            ));
        }
        let size_bytes = body.len() as u64;
        let blobs = std::sync::Arc::clone(&state.blobs);
        let hash = tokio::task::spawn_blocking(move || blobs.put(&body))
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        Ok(Uploaded {
            blake3: hash.to_hex(),
            size_bytes,
            media_type,
        })
    }
    .await;
    let uploaded = state
        .audited("blob.upload", "blobs", outcome, |u| {
            format!("ok {} {} bytes", u.blake3, u.size_bytes)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(uploaded)))
}

/// The attachment a live knowledge item lists under `hash`.
async fn listed(state: &AppState, hash: Hash32) -> Result<Option<Attachment>, ApiError> {
    let ingest = std::sync::Arc::clone(state.service.ingest());
    let blobs = std::sync::Arc::clone(&state.blobs);
    tokio::task::spawn_blocking(move || crate::blobs::referenced_cached(&ingest, &blobs))
        .await
        .map_err(store_failure)?
        .map(|all| all.get(&hash).cloned())
        .map_err(store_failure)
}

/// `attachment; filename="…"; filename*=UTF-8''…`, safe whatever the name holds.
fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Downloads an attachment a live knowledge item lists, with its media type and file name.
/// If this node does not hold it yet, it fetches it from connected members' nodes first
/// (verified piece by piece; an interrupted fetch resumes at the next request).
#[utoipa::path(get, path = "/api/v1/blobs/{hash}", tag = "attachments",
    params(("hash" = String, Path, description = "the attachment's BLAKE3 hash (hex)")),
    responses((status = 200, description = "the file, with the media type the knowledge item gives",
            content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
async fn download(
    State(state): State<AppState>,
    PathParams(hash): PathParams<String>,
) -> Result<Response, ApiError> {
    let hash = hash_param(&hash)?;
    let Some(attachment) = listed(&state, hash).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "blob.unknown",
            format!("no live knowledge item lists attachment {hash}"),
        ));
    };
    let max = state.blobs.bytes_max();
    if attachment.size_bytes > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "blob.too_large",
            format!(
                "the attachment is {} bytes, more than this node's blob_bytes_max ({max})",
                attachment.size_bytes
            ),
        ));
    }
    if state.blobs.held_size(&hash).is_none() {
        let Some(net) = state.net.clone() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob.no_peers",
                "this node runs no network to fetch the attachment from",
            ));
        };
        let fetch = crate::blobs::fetch(&net, &state.blobs, hash, attachment.size_bytes);
        match tokio::time::timeout(FETCH_WAIT, fetch).await {
            Ok(Ok(_)) => {}
            Ok(Err(e @ (FetchError::NoPeers | FetchError::Unavailable { .. }))) => {
                let code = if matches!(e, FetchError::NoPeers) {
                    "blob.no_peers"
                } else {
                    "blob.unavailable"
                };
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("{e}; try again later"),
                ));
            }
            Ok(Err(e @ FetchError::TooLarge { .. })) => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "blob.too_large",
                    e.to_string(),
                ));
            }
            Ok(Err(FetchError::Store(e))) => return Err(store_failure(e)),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "blob.timeout",
                    format!(
                        "fetching the attachment took more than {} s; what arrived is kept, try again",
                        FETCH_WAIT.as_secs()
                    ),
                ));
            }
        }
    }
    let file = match tokio::fs::File::open(state.blobs.path(&hash)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Deleted between the fetch and now (the item was withdrawn meanwhile).
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "blob.unknown",
                format!("attachment {hash} is no longer listed"),
            ));
        }
        Err(e) => return Err(store_failure(e)),
    };
    let size = file.metadata().await.map_err(store_failure)?.len();
    let stream = libp2p::futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let content_type = HeaderValue::from_str(&attachment.media_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(&attachment.name),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// What this node holds of an attachment: the whole file, part of it, or nothing.
#[utoipa::path(get, path = "/api/v1/blobs/{hash}/status", tag = "attachments",
    params(("hash" = String, Path, description = "the attachment's BLAKE3 hash (hex)")),
    responses((status = 200, body = BlobStatus), (status = 400, body = ErrorBody)))]
async fn blob_status(
    State(state): State<AppState>,
    PathParams(hash): PathParams<String>,
) -> Result<axum::Json<BlobStatus>, ApiError> {
    let hash = hash_param(&hash)?;
    let listed = listed(&state, hash).await?.is_some();
    let status = match state.blobs.held(&hash) {
        Held::Complete { size } => BlobStatus {
            blake3: hash.to_hex(),
            state: "held".into(),
            size_bytes: Some(size),
            pieces_have: kim_protocol::blob::piece_count(size),
            pieces_total: Some(kim_protocol::blob::piece_count(size)),
            listed,
        },
        Held::Partial { size, have, pieces } => BlobStatus {
            blake3: hash.to_hex(),
            state: "partial".into(),
            size_bytes: Some(size),
            pieces_have: have,
            pieces_total: Some(pieces),
            listed,
        },
        Held::Absent => BlobStatus {
            blake3: hash.to_hex(),
            state: "absent".into(),
            size_bytes: None,
            pieces_have: 0,
            pieces_total: None,
            listed,
        },
    };
    Ok(axum::Json(status))
}
