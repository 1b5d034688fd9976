//! `kim keys rotate`: asks the running node to hand its region over to a new signing key
//! (`POST /api/v1/keys/rotate`), and says what the operator should do next.

use std::io::Write as _;

use clap::Subcommand;
use serde_json::json;

use crate::cli::Client;

/// Output that never panics on a closed pipe (as in `cli.rs`).
macro_rules! println {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// What to do with the region's signing key.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Replace the region's signing key with a new one: the old key signs the handover, every
    /// node follows it, and records the old key signs afterwards are refused.
    Rotate {
        /// Why (kept in this node's audit log, not published).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Runs one `kim keys` subcommand against the running node.
pub async fn run(client: &Client, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate { reason } => {
            let view = client
                .post("/keys/rotate", json!({ "reason": reason }))
                .await?;
            if client.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).unwrap_or_default()
                );
                return Ok(());
            }
            let field = |name: &str| view[name].as_str().unwrap_or("?").to_string();
            println!("region key rotated");
            println!("region:       {}", field("region"));
            println!("old key:      {} (retired)", field("old_key"));
            println!("new key:      {}", field("new_key"));
            println!("handover:     record {}", field("record"));
            println!("old key file: {}", field("retired_key_file"));
            println!(
                "back up the new region.key now; keep the old key file offline or delete it \
                 (records it signs from now on are refused by every node)"
            );
            Ok(())
        }
    }
}
