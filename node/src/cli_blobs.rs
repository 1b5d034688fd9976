//! `kim knowledge …`: the item commands every collection has, plus `attach`, which uploads a
//! file (`POST /api/v1/blobs`) and revises an own knowledge item to list it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{self, Client, ItemCommand};

/// What to do with knowledge items.
#[derive(Debug, Subcommand)]
pub enum KnowledgeCommand {
    /// Upload a file and add it to an own knowledge item's attachments (a new revision).
    Attach {
        /// The knowledge item's key.
        key: String,
        /// The file to attach (at most the node's blob_bytes_max, 50 MiB by default).
        file: PathBuf,
        /// Its media type (default: guessed from the file name's extension).
        #[arg(long)]
        media_type: Option<String>,
        /// The name readers see (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
    #[command(flatten)]
    Item(ItemCommand),
}

/// Runs a knowledge command.
pub async fn knowledge(client: &Client, command: KnowledgeCommand) -> anyhow::Result<()> {
    match command {
        KnowledgeCommand::Item(command) => cli::items(client, "knowledge", command).await,
        KnowledgeCommand::Attach {
            key,
            file,
            media_type,
            name,
        } => attach(client, &key, &file, media_type, name).await,
    }
}

/// A media type for common document, image and data files by extension.
pub fn guess_media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        "odp" => "application/vnd.oasis.opendocument.presentation",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "csv" => "text/csv",
        "txt" => "text/plain",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

async fn attach(
    client: &Client,
    key: &str,
    file: &Path,
    media_type: Option<String>,
    name: Option<String>,
) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let media_type = media_type.unwrap_or_else(|| guess_media_type(file).to_string());
    let name = match name {
        Some(n) => n,
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .context("the file has no usable name; pass --name")?
            .to_string(),
    };
    // The item first: refuse before uploading if it is not an own, live knowledge item.
    let path = format!("/knowledge/{}", cli::encode(key));
    let item = client.get(&path).await?;
    if item["status"] != "live" {
        anyhow::bail!(
            "knowledge item {key:?} is {}; only a live item can take attachments",
            item["status"]
        );
    }
    let uploaded = client.post_bytes("/blobs", &media_type, bytes).await?;
    let mut body = item["body"].clone();
    let attachment = json!({
        "name": name,
        "media_type": uploaded["media_type"],
        "size_bytes": uploaded["size_bytes"],
        "blake3": uploaded["blake3"],
    });
    let list = body
        .get_mut("attachments")
        .and_then(Value::as_array_mut)
        .context("the item's body has no attachments list")?;
    list.retain(|a| a["blake3"] != attachment["blake3"]);
    list.push(attachment.clone());
    let mut input = json!({ "body": body });
    if let Some(expires) = item.get("expires_at_ms").filter(|v| !v.is_null()) {
        input["expires_at_ms"] = expires.clone();
    }
    let revised = client.put(&path, input).await?;
    let out = json!({ "attachment": attachment, "revision": revised["revision"] });
    client.print(&out, |o| {
        println!(
            "attached {} ({} bytes, {}) to {key} as revision {}\nblake3 {}",
            o["attachment"]["name"].as_str().unwrap_or(""),
            o["attachment"]["size_bytes"],
            o["attachment"]["media_type"].as_str().unwrap_or(""),
            o["revision"],
            o["attachment"]["blake3"].as_str().unwrap_or("")
        )
    });
    Ok(())
}
