//! libp2p protocol ids and gossip topic names. Each carries the federation id and a version, so
//! nodes of different federations, or of incompatible versions, never mix traffic.

use crate::bytes::FederationId;

/// The gossipsub topic on which a federation's records are pushed.
pub fn records_topic(federation: &FederationId) -> String {
    format!("/kim/{federation}/records/1")
}

/// Request-response protocol for set-reconciliation sync and record fetches (members only).
pub fn sync_protocol(federation: &FederationId) -> String {
    format!("/kim/{federation}/sync/1")
}

/// Request-response protocol for join requests and charter/membership fetches (anyone,
/// rate-limited).
pub fn join_protocol(federation: &FederationId) -> String {
    format!("/kim/{federation}/join/1")
}

/// Request-response protocol for direct delivery (expressions of interest).
pub fn direct_protocol(federation: &FederationId) -> String {
    format!("/kim/{federation}/direct/1")
}

/// Request-response protocol for attachment chunks.
pub fn blobs_protocol(federation: &FederationId) -> String {
    format!("/kim/{federation}/blobs/1")
}

/// Kademlia protocol among members' nodes (peer discovery only; no records are stored in it).
pub fn kad_protocol(federation: &FederationId) -> String {
    format!("/kim/{federation}/kad/1")
}

/// The identify protocol version a node announces.
pub fn identify_version(federation: &FederationId) -> String {
    format!("/kim/{federation}/1")
}
