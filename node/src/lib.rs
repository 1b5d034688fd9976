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
//! - [`api`]: axum routes under `/api/v1`, errors, auth, OpenAPI.
//! - [`node`]: `init` and `run`.
//! - [`cli`]: the client subcommands that talk to a running node.
//! - [`bench`]: `kim bench …`; [`bench_reconcile`]: `kim bench reconcile` against negentropy.

pub use libp2p;

pub mod api;
pub mod bench;
pub mod bench_net;
pub mod bench_reconcile;
pub mod cli;
pub mod config;
pub mod demo;
pub mod founding;
pub mod indexer;
pub mod ingest;
pub mod net;
pub mod node;
pub mod search;
pub mod service;
pub mod store;
