//! # kim-node
//!
//! A KIM regional node: the durable store, the ingest pipeline every record passes, the
//! service staff use, the HTTP API, and the `kim` command line (in `main.rs` and `cli.rs`).
//! This is the only crate that touches tokio, sled, axum, the file system and the environment.
//!
//! ## Layout
//! - [`config`]: data directory, `config.toml`, `KIM_*` environment, secrets.
//! - [`store`]: sled behind one module; nothing else names sled.
//! - [`ingest`]: size check → decode → verify → validate → authorise → resolve → store.
//! - [`net`]: the libp2p event loop (gossip, sync, discovery, gate) and its client.
//! - [`search`]: the tantivy index of searchable items, kept in step with the store.
//! - [`service`]: publish, revise, withdraw, list, drafts; the one place that signs.
//! - [`mod@matches`]: one offer or request against the replica: index retrieval, exact scoring.
//! - [`saved`]: saved searches and the notifications new items raise (local only).
//! - [`overview`]: per-region counts and the co-operation potential matrix.
//! - [`api`]: axum routes under `/api/v1`, errors, auth, OpenAPI; [`api_find`] adds search,
//!   matches, saved searches, notifications and the federation overview.
//! - [`node`]: `init` and `run`.
//! - [`cli`]: the client subcommands that talk to a running node; [`cli_founding`]: `kim
//!   federation profile|create|sign|adopt` (founding with several regions, offline);
//!   [`cli_keys`]: `kim keys rotate`.
//! - [`keys`]: the region key files: rotation hand-over on disk and its crash recovery.
//! - [`mod@bench`]: `kim bench …`; [`bench_reconcile`]: `kim bench reconcile` against negentropy;
//!   [`bench_search`]: `kim bench search`; [`bench_net`]: `kim bench propagation|catchup`.
//! - [`founding`], [`demo`], [`indexer`]: founding records, `kim demo`, the search indexer.

pub use libp2p;

pub mod api;
pub mod api_blobs;
pub mod api_find;
pub mod api_interest;
pub mod api_members;
pub mod bench;
pub mod bench_blobs;
pub mod bench_net;
pub mod bench_reconcile;
pub mod bench_search;
pub mod blobs;
pub mod cli;
pub mod cli_blobs;
pub mod cli_founding;
pub mod cli_interest;
pub mod cli_keys;
pub mod cli_members;
pub mod config;
pub mod demo;
pub mod direct;
pub mod founding;
pub mod indexer;
pub mod ingest;
pub mod interest;
pub mod join;
pub mod keys;
pub mod matches;
pub mod membership_ops;
pub mod net;
pub mod node;
pub mod overview;
pub mod saved;
pub mod search;
pub mod service;
pub mod store;
