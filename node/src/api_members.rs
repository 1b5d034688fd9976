//! The membership routes of the HTTP API: the member set and pending candidates, endorsing or
//! declining a candidate, voting to remove a member, leaving, and inviting a new region.
//! Mounted by [`crate::api::router`]; the rules themselves live in `membership_ops`.

use axum::extract::State;
use axum::http::StatusCode;
use kim_protocol::RegionId;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, AppState, ErrorBody, JsonBody, PathParams};
use crate::ingest::system_now_ms;
use crate::membership_ops::{MembershipView, PendingEntry};

/// Adds this module's routes to the API's route table.
pub fn routes(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    router
        .routes(routes!(members))
        .routes(routes!(pending))
        .routes(routes!(endorse))
        .routes(routes!(decline))
        .routes(routes!(remove))
        .routes(routes!(leave))
        .routes(routes!(invite))
}

fn region_param(text: &str) -> Result<RegionId, ApiError> {
    RegionId::from_hex(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            format!("{text:?} is not a region id (64 hex characters)"),
        )
    })
}

/// A membership record this node signed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Signed {
    /// The record id.
    pub id: String,
    /// The membership state it names.
    pub state: String,
}

/// A reason, where one is asked for.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonInput {
    #[serde(default)]
    pub reason: String,
}

/// Members, pending candidates, former members and this region's standing.
#[utoipa::path(get, path = "/api/v1/members", tag = "membership",
    responses((status = 200, body = MembershipView), (status = 401, body = ErrorBody)))]
async fn members(State(state): State<AppState>) -> Result<axum::Json<MembershipView>, ApiError> {
    Ok(axum::Json(state.service.membership_view(system_now_ms())?))
}

/// Candidates waiting for endorsements (unexpired join requests), with their profiles.
#[utoipa::path(get, path = "/api/v1/members/pending", tag = "membership",
    responses((status = 200, body = [PendingEntry]), (status = 401, body = ErrorBody)))]
async fn pending(State(state): State<AppState>) -> Result<axum::Json<Vec<PendingEntry>>, ApiError> {
    Ok(axum::Json(
        state.service.membership_view(system_now_ms())?.pending,
    ))
}

fn signed(record: &kim_protocol::Record) -> Signed {
    let state = match &record.content.body {
        kim_protocol::Body::Endorsement(e) => e.state.to_hex(),
        kim_protocol::Body::RemovalVote(v) => v.state.to_hex(),
        kim_protocol::Body::Leave(l) => l.state.to_hex(),
        _ => String::new(),
    };
    Signed {
        id: record.id.to_hex(),
        state,
    }
}

/// Endorse a pending candidate. The endorsement names the current state; if the state moves
/// on before the candidate is admitted, the node endorses again in the new one.
#[utoipa::path(post, path = "/api/v1/members/{region}/endorse", tag = "membership",
    params(("region" = String, Path, description = "the candidate's region id (hex)")),
    responses((status = 201, body = Signed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn endorse(
    State(state): State<AppState>,
    PathParams(region): PathParams<String>,
) -> Result<(StatusCode, axum::Json<Signed>), ApiError> {
    let outcome = match region_param(&region) {
        Ok(candidate) => state
            .service
            .endorse(candidate)
            .await
            .map(|r| signed(&r))
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let done = state
        .audited(
            "member.endorse",
            &format!("members/{region}"),
            outcome,
            |s| format!("ok {}", s.id),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(done)))
}

/// Decline a pending candidate: nothing is signed (not endorsing is the refusal); the node
/// remembers the decision and shows it in the pending list.
#[utoipa::path(post, path = "/api/v1/members/{region}/decline", tag = "membership",
    params(("region" = String, Path)), request_body = ReasonInput,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn decline(
    State(state): State<AppState>,
    PathParams(region): PathParams<String>,
    body: Result<JsonBody<ReasonInput>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let outcome = match (region_param(&region), body) {
        (Ok(candidate), Ok(JsonBody(input))) => state
            .service
            .decline(candidate, input.reason)
            .await
            .map_err(ApiError::from),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    state
        .audited(
            "member.decline",
            &format!("members/{region}"),
            outcome,
            |()| "ok".into(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Vote to remove a member (a reason is required). The region concerned does not count; at
/// the charter's removal threshold every node drops it.
#[utoipa::path(post, path = "/api/v1/members/{region}/remove", tag = "membership",
    params(("region" = String, Path)), request_body = ReasonInput,
    responses((status = 201, body = Signed), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    PathParams(region): PathParams<String>,
    body: Result<JsonBody<ReasonInput>, ApiError>,
) -> Result<(StatusCode, axum::Json<Signed>), ApiError> {
    let outcome = match (region_param(&region), body) {
        (Ok(target), Ok(JsonBody(input))) => state
            .service
            .vote_remove(target, input.reason)
            .await
            .map(|r| signed(&r))
            .map_err(ApiError::from),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let done = state
        .audited(
            "member.remove_vote",
            &format!("members/{region}"),
            outcome,
            |s| format!("ok {}", s.id),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(done)))
}

/// Leave the federation. Other nodes stop accepting this region's records and drop its
/// connections.
#[utoipa::path(post, path = "/api/v1/federation/leave", tag = "membership",
    request_body = ReasonInput,
    responses((status = 201, body = Signed), (status = 409, body = ErrorBody)))]
async fn leave(
    State(state): State<AppState>,
    body: Result<JsonBody<ReasonInput>, ApiError>,
) -> Result<(StatusCode, axum::Json<Signed>), ApiError> {
    let outcome = match body {
        Ok(JsonBody(input)) => state
            .service
            .leave(input.reason)
            .await
            .map(|r| signed(&r))
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let done = state
        .audited("federation.leave", "federation", outcome, |s| {
            format!("ok {}", s.id)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(done)))
}

/// What an invitation should say.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteInput {
    /// Days the invitation stays valid (default 7, at most 90).
    #[serde(default)]
    pub valid_days: Option<u32>,
    /// Bootstrap addresses to put in it, ending in `/p2p/<peer id>`; default: this node's
    /// listen addresses and other members' published addresses.
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

/// A signed invitation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvitationView {
    /// The token to hand to the joining region's operator (`kim federation join <token>`).
    pub token: String,
    pub expires_at_ms: u64,
    pub bootstrap: Vec<String>,
}

/// Most bootstrap addresses an invitation gets by default.
const DEFAULT_BOOTSTRAP_MAX: usize = 8;

/// Sign an invitation for a new region.
#[utoipa::path(post, path = "/api/v1/federation/invitations", tag = "membership",
    request_body = InviteInput,
    responses((status = 201, body = InvitationView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn invite(
    State(state): State<AppState>,
    body: Result<JsonBody<InviteInput>, ApiError>,
) -> Result<(StatusCode, axum::Json<InvitationView>), ApiError> {
    let outcome = match body {
        Ok(JsonBody(input)) => make_invitation(&state, input).await,
        Err(e) => Err(e),
    };
    let view = state
        .audited("federation.invite", "federation", outcome, |v| {
            format!("ok expires {}", v.expires_at_ms)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

async fn make_invitation(state: &AppState, input: InviteInput) -> Result<InvitationView, ApiError> {
    let days = input.valid_days.unwrap_or(7);
    let mut bootstrap = input.bootstrap;
    for addr in &bootstrap {
        let parsed: libp2p::Multiaddr = addr.parse().map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "request.bad_parameter",
                format!("bootstrap {addr:?} is not a multiaddr: {e}"),
            )
        })?;
        if !matches!(
            parsed.iter().last(),
            Some(libp2p::multiaddr::Protocol::P2p(_))
        ) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "request.bad_parameter",
                format!("bootstrap {addr:?} must end in /p2p/<peer id>"),
            ));
        }
    }
    if bootstrap.is_empty()
        && let Some(net) = &state.net
    {
        let own = net.local_peer_id();
        let listen = tokio::time::timeout(std::time::Duration::from_secs(2), net.listen_addrs())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for mut addr in listen {
            let unspecified = addr.iter().any(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
                libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
                _ => false,
            });
            if unspecified {
                continue;
            }
            addr.push(libp2p::multiaddr::Protocol::P2p(own));
            bootstrap.push(addr.to_string());
        }
        if let Some(access) = &state.access {
            bootstrap.extend(access.member_addrs(&own).iter().map(ToString::to_string));
        }
        let mut seen = std::collections::HashSet::new();
        bootstrap.retain(|a| seen.insert(a.clone()));
        bootstrap.truncate(DEFAULT_BOOTSTRAP_MAX);
    }
    if bootstrap.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_parameter",
            "no bootstrap address: the node has no network running; pass --bootstrap",
        ));
    }
    let valid_ms = u64::from(days) * 86_400_000;
    let token = state.service.invite(bootstrap.clone(), valid_ms)?;
    Ok(InvitationView {
        token,
        expires_at_ms: system_now_ms().saturating_add(valid_ms),
        bootstrap,
    })
}
