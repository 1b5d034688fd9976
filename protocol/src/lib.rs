//! # kim-protocol
//!
//! The KIM wire protocol as a pure library: what a record is, how its bytes are signed and
//! checked, which records win, who is a member, and how two nodes find what the other lacks.
//! Nothing here does IO, reads a clock or draws randomness of its own: callers pass `now` and an
//! RNG. That is what lets the same code run in the node, in property tests and in fuzzers.
//! `SPEC.md` beside this crate is the normative description; `vectors/` holds test vectors.
//!
//! ## Layout
//! - [`bytes`]: fixed-size ids, keys, hashes and signatures (raw in binary, hex in JSON).
//! - [`types`]: the shared domain types (offers, knowledge, projects, …).
//! - [`envelope`]: the signed envelope, record ids, signing and (batch) verification.
//! - [`validate`]: stateless content rules, checked against [`codes`] and [`limits`].
//! - [`membership`]: charter and membership records, and the order-free membership rule.
//! - [`matching`]: offer/request matching: hard filters and a score out of 100 with reasons.
//! - [`resolve`]: which record of an item wins.
//! - [`digest`]: the order-free state digest over a set of record ids.

//! - [`reconcile`]: range-based set reconciliation messages and driver-free step functions.
//! - [`invitation`]: signed invitation tokens a member hands to a region that wants to join.
//! - [`direct`]: signed answers and contact releases between two regions' nodes.
//! - [`names`]: libp2p protocol ids and gossip topics.
//! - [`error`]: the one error enum with stable codes.

mod batch;
pub mod blob;
pub mod bytes;
pub mod codes;
pub mod digest;
pub mod direct;
pub mod envelope;
pub mod error;
pub mod invitation;
pub mod limits;
pub mod matching;
pub mod membership;
pub mod names;
pub mod reconcile;
pub mod resolve;
pub mod samples;
pub mod types;
pub mod validate;

pub use bytes::{FederationId, Hash32, PublicKey, RecordId, RegionId, SignatureBytes};
pub use envelope::{Body, Content, Kind, Record};
pub use error::Error;
