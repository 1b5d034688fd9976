//! The membership commands: `kim members …`, `kim endorse`, `kim federation invite|join|leave`.
//! All but `federation join` talk to the running node's API; joining happens before the node
//! has a store for the federation, so it works on the (stopped) data directory.

use std::fmt::Arguments;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, short};
use crate::config::DataDir;

/// Writes a line to stdout; a closed pipe (`kim members | head`) is not an error.
fn say(args: Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{args}");
}

macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
}

/// `kim members …`
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Members, pending candidates and former members.
    List,
    /// Candidates waiting for endorsements, with the profile each sent.
    Pending,
    /// Decline a candidate (recorded here; not endorsing is the refusal).
    Decline {
        /// Region id (hex) or name.
        region: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Vote to remove a member.
    Remove {
        /// Region id (hex) or name.
        region: String,
        #[arg(long)]
        reason: String,
    },
}

/// Finds a region id by hex id or unique hex prefix (8+ characters) among members and pending
/// candidates, or by name among members. Candidates choose their own names, so a candidate is
/// only ever named by its id (as `kim members pending` shows it): a look-alike name cannot
/// collect the endorsements meant for another region.
async fn resolve_region(client: &Client, text: &str) -> anyhow::Result<String> {
    let view = client.get("/members").await?;
    let entries = |list: &str| -> Vec<(String, String)> {
        view[list]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["region"].as_str().unwrap_or_default().to_string(),
                    e["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let members = entries("members");
    let pending = entries("pending");
    let wanted = text.trim().to_lowercase();
    let by_id = |(id, _): &&(String, String)| {
        *id == wanted || (wanted.len() >= 8 && id.starts_with(&wanted))
    };
    let mut hits: Vec<&(String, String)> =
        members.iter().chain(pending.iter()).filter(by_id).collect();
    if hits.is_empty() {
        hits = members
            .iter()
            .filter(|(_, name)| name.to_lowercase() == wanted)
            .collect();
    }
    match hits.as_slice() {
        [(id, _)] => Ok(id.clone()),
        [] if pending
            .iter()
            .any(|(_, name)| name.to_lowercase() == wanted) =>
        {
            bail!(
                "{text:?} is the name a candidate gave itself; name candidates by their region id, \
             as `kim members pending` shows it"
            )
        }
        [] => bail!(
            "no member or pending candidate is called {text:?}; see `kim members list` and \
             `kim members pending`"
        ),
        _ => bail!("{text:?} names several regions; use the region id"),
    }
}

pub async fn members(client: &Client, command: MembersCommand) -> anyhow::Result<()> {
    match command {
        MembersCommand::List => {
            let view = client.get("/members").await?;
            client.print(&view, |v| {
                say!(
                    "federation:  {} ({})",
                    v["name"].as_str().unwrap_or(""),
                    short(v["federation"].as_str().unwrap_or(""), 16)
                );
                say!(
                    "rules:       admission {}, removal {}",
                    v["admission_rule"].as_str().unwrap_or(""),
                    v["removal_rule"].as_str().unwrap_or("")
                );
                say!(
                    "state:       {}",
                    short(v["state"].as_str().unwrap_or(""), 16)
                );
                say!("{:<18} {:<8} NAME", "REGION", "ROLE");
                for m in v["members"].as_array().cloned().unwrap_or_default() {
                    let role = if m["founder"].as_bool() == Some(true) {
                        "founder"
                    } else {
                        "member"
                    };
                    let own = if m["own"].as_bool() == Some(true) {
                        " (this node)"
                    } else {
                        ""
                    };
                    say!(
                        "{:<18} {:<8} {}{own}",
                        short(m["region"].as_str().unwrap_or(""), 17),
                        role,
                        m["name"].as_str().unwrap_or("")
                    );
                }
                for p in v["pending"].as_array().cloned().unwrap_or_default() {
                    say!(
                        "{:<18} {:<8} {} ({} of {} endorsements)",
                        short(p["region"].as_str().unwrap_or(""), 17),
                        "pending",
                        p["name"].as_str().unwrap_or(""),
                        p["endorsements"],
                        p["required"]
                    );
                }
                for f in v["former"].as_array().cloned().unwrap_or_default() {
                    say!(
                        "{:<18} {:<8} {}",
                        short(f["region"].as_str().unwrap_or(""), 17),
                        f["how"].as_str().unwrap_or(""),
                        f["name"].as_str().unwrap_or("")
                    );
                }
            });
        }
        MembersCommand::Pending => {
            let pending = client.get("/members/pending").await?;
            client.print(&pending, |list| {
                let list = list.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    say!("no pending join requests");
                }
                for p in list {
                    let profile = &p["profile"];
                    say!(
                        "{} — {}",
                        p["name"].as_str().unwrap_or(""),
                        p["region"].as_str().unwrap_or("")
                    );
                    say!(
                        "  endorsements: {} of {}{}",
                        p["endorsements"],
                        p["required"],
                        p["our_decision"]
                            .as_str()
                            .map(|d| format!(" (this region: {d})"))
                            .unwrap_or_default()
                    );
                    say!(
                        "  agency:       {}",
                        profile["agency"].as_str().unwrap_or("")
                    );
                    say!(
                        "  nuts:         {}  country {}",
                        profile["nuts"]
                            .as_array()
                            .map(|n| n
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default(),
                        profile["country"].as_str().unwrap_or("")
                    );
                    if let Some(message) = p["message"].as_str().filter(|m| !m.is_empty()) {
                        say!("  message:      {message}");
                    }
                    say!(
                        "  endorse with: kim endorse {}",
                        p["region"].as_str().unwrap_or("")
                    );
                }
            });
        }
        MembersCommand::Decline { region, reason } => {
            let id = resolve_region(client, &region).await?;
            client
                .post(
                    &format!("/members/{id}/decline"),
                    json!({ "reason": reason }),
                )
                .await?;
            say!("declined {region}: this node will not endorse it");
        }
        MembersCommand::Remove { region, reason } => {
            let id = resolve_region(client, &region).await?;
            let done = client
                .post(
                    &format!("/members/{id}/remove"),
                    json!({ "reason": reason }),
                )
                .await?;
            client.print(&done, |d| {
                say!(
                    "voted to remove {region} (record {}); the node votes again if the state \
                     changes before the threshold is reached",
                    short(d["id"].as_str().unwrap_or(""), 16)
                );
            });
        }
    }
    Ok(())
}

/// `kim endorse <region>`
pub async fn endorse(client: &Client, region: &str) -> anyhow::Result<()> {
    let id = resolve_region(client, region).await?;
    let done = client
        .post(&format!("/members/{id}/endorse"), json!({}))
        .await?;
    client.print(&done, |d| {
        say!(
            "endorsed {region} (record {}, state {})",
            short(d["id"].as_str().unwrap_or(""), 16),
            short(d["state"].as_str().unwrap_or(""), 16)
        );
    });
    Ok(())
}

/// `kim federation invite`
pub async fn invite(client: &Client, days: u32, bootstrap: Vec<String>) -> anyhow::Result<()> {
    let view = client
        .post(
            "/federation/invitations",
            json!({ "valid_days": days, "bootstrap": bootstrap }),
        )
        .await?;
    client.print(&view, |v| {
        // The token alone on its line, so it can be copied whole.
        say!("{}", v["token"].as_str().unwrap_or(""));
    });
    if !client.json() {
        let _ = writeln!(
            std::io::stderr(),
            "invitation valid for {days} days; the new region runs: kim federation join <token>"
        );
    }
    Ok(())
}

/// `kim federation leave`
pub async fn leave(client: &Client, reason: String) -> anyhow::Result<()> {
    let done = client
        .post("/federation/leave", json!({ "reason": reason }))
        .await?;
    client.print(&done, |d| {
        say!(
            "left the federation (record {})",
            short(d["id"].as_str().unwrap_or(""), 16)
        );
    });
    Ok(())
}

/// `kim federation join <token>` on a stopped, fresh node.
pub async fn join(data: &DataDir, token: &str, message: &str) -> anyhow::Result<()> {
    let token = if token == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the token from stdin")?;
        text
    } else {
        token.to_string()
    };
    let report = crate::join::join(data, &token, message, Duration::from_secs(20)).await?;
    say!(
        "asked to join {} ({}) on the invitation of {}",
        report.federation_name,
        report.federation,
        report.inviter_name
    );
    say!(
        "join request {} by {}; pending: 0 of {} endorsements from {} members",
        if report.new {
            "delivered"
        } else {
            "already known"
        },
        report.peer,
        report.required,
        report.members
    );
    say!(
        "start the node to wait for admission: kim --data-dir {} run",
        data.root.display()
    );
    Ok(())
}
