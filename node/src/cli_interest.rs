//! `kim interest …`: expressions of interest through the running node's API.

use std::fmt::Arguments;
use std::io::Write as _;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::{Client, short};

fn say(args: Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{args}");
}

macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
}

/// Contact details to release on acceptance (local data until then).
#[derive(Debug, Clone, Default, Args)]
pub struct ContactArgs {
    #[arg(long = "contact-person", default_value = "")]
    pub person: String,
    #[arg(long = "contact-organisation", default_value = "")]
    pub organisation: String,
    #[arg(long = "contact-email", default_value = "")]
    pub email: String,
    #[arg(long = "contact-phone", default_value = "")]
    pub phone: String,
    #[arg(long = "contact-note", default_value = "")]
    pub note: String,
}

impl ContactArgs {
    fn json(&self) -> Value {
        json!({
            "person": self.person,
            "organisation": self.organisation,
            "email": self.email,
            "phone": self.phone,
            "note": self.note,
        })
    }
}

/// `kim interest …`
#[derive(Debug, Subcommand)]
pub enum InterestCommand {
    /// Respond to another region's offer or request (delivered to that region's node only).
    Send {
        /// The offering region's id (hex).
        #[arg(long)]
        region: String,
        /// The offer's key.
        #[arg(long)]
        offer: String,
        #[arg(long)]
        message: String,
        #[arg(long, default_value = "")]
        questions: String,
        #[arg(long, default_value = "")]
        presentation: String,
        #[command(flatten)]
        contact: ContactArgs,
    },
    /// Expressions of interest sent and received.
    List,
    /// One expression of interest.
    Show { id: String },
    /// Accept an incoming expression: contacts are exchanged with the interested region.
    Accept {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        contact: ContactArgs,
    },
    /// Decline an incoming expression (nothing is released).
    Decline {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Record the outcome of an accepted expression (counted in the federation overview).
    Outcome {
        id: String,
        /// licence, technical_cooperation, research_cooperation, joint_venture,
        /// subcontracting, distribution, commercial, joint_project, other
        #[arg(long)]
        agreement: String,
        /// YYYY-MM-DD
        #[arg(long)]
        date: String,
        #[arg(long)]
        jobs: Option<u32>,
        #[arg(long)]
        nace: Option<String>,
    },
}

fn print_one(v: &Value) {
    say!(
        "{} {} {} — {}",
        v["direction"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["id"].as_str().unwrap_or(""),
        v["offer_title"].as_str().unwrap_or("")
    );
    say!("  region:   {}", v["region"].as_str().unwrap_or(""));
    say!("  offer:    {}", v["offer_key"].as_str().unwrap_or(""));
    say!("  message:  {}", v["message"].as_str().unwrap_or(""));
    if let Some(reason) = v["reason"].as_str() {
        say!("  answer:   {reason}");
    }
    let c = &v["their_contact"];
    if c.is_object() {
        say!(
            "  contact:  {} ({}) {} {}",
            c["person"].as_str().unwrap_or(""),
            c["organisation"].as_str().unwrap_or(""),
            c["email"].as_str().unwrap_or(""),
            c["phone"].as_str().unwrap_or("")
        );
    }
    if let Some(error) = v["last_error"].as_str() {
        say!("  delivery: {} attempts, last: {error}", v["attempts"]);
    }
    if let Some(outcome) = v["outcome"].as_str() {
        say!("  outcome:  {outcome}");
    }
}

pub async fn interest(client: &Client, command: InterestCommand) -> anyhow::Result<()> {
    match command {
        InterestCommand::Send {
            region,
            offer,
            message,
            questions,
            presentation,
            contact,
        } => {
            let v = client
                .post(
                    "/interests",
                    json!({
                        "region": region,
                        "offer": offer,
                        "message": message,
                        "questions": questions,
                        "presentation": presentation,
                        "contact": contact.json(),
                    }),
                )
                .await?;
            client.print(&v, |v| {
                say!(
                    "expression of interest {} queued for delivery to the offering region",
                    v["id"].as_str().unwrap_or("")
                );
            });
        }
        InterestCommand::List => {
            let v = client.get("/interests").await?;
            client.print(&v, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    say!("no expressions of interest");
                }
                say!("{:<9} {:<10} {:<18} OFFER", "DIRECTION", "STATUS", "ID");
                for i in list {
                    say!(
                        "{:<9} {:<10} {:<18} {}",
                        i["direction"].as_str().unwrap_or(""),
                        i["status"].as_str().unwrap_or(""),
                        short(i["id"].as_str().unwrap_or(""), 17),
                        i["offer_title"].as_str().unwrap_or("")
                    );
                }
            });
        }
        InterestCommand::Show { id } => {
            let v = client.get(&format!("/interests/{id}")).await?;
            client.print(&v, print_one);
        }
        InterestCommand::Accept {
            id,
            reason,
            contact,
        } => {
            let v = client
                .post(
                    &format!("/interests/{id}/accept"),
                    json!({ "reason": reason, "contact": contact.json() }),
                )
                .await?;
            client.print(&v, print_one);
        }
        InterestCommand::Decline { id, reason } => {
            let v = client
                .post(
                    &format!("/interests/{id}/decline"),
                    json!({ "reason": reason }),
                )
                .await?;
            client.print(&v, print_one);
        }
        InterestCommand::Outcome {
            id,
            agreement,
            date,
            jobs,
            nace,
        } => {
            let v = client
                .post(
                    &format!("/interests/{id}/outcome"),
                    json!({
                        "agreement": agreement,
                        "date": date,
                        "jobs_created": jobs,
                        "nace": nace,
                    }),
                )
                .await?;
            client.print(&v, print_one);
        }
    }
    Ok(())
}
