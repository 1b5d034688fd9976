//! `kim demo` as a user runs it: four regional nodes start and replicate each other's seeded
//! records, a fifth region joins live by invitation and endorsements, every node answers the
//! CLI, and all stop cleanly on Ctrl-C (SIGINT); a second run reuses them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod support {
    pub mod binary;
}
use support::binary::{command, kim};

/// A base port with base..base+3 and base+10..base+13 free right now, below the kernel's
/// ephemeral range (32768 and up), where the other tests' connections take their ports.
fn free_base() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0..500u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let base = 10_000 + (hasher.finish() % 22_000) as u16;
        let free = (0..5)
            .chain(10..15)
            .all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no 15-port range between 10000 and 32000 is free on 127.0.0.1");
}

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(dir: &Path, base: u16) -> Demo {
        let mut child = command()
            .arg("demo")
            .arg("--dir")
            .arg(dir)
            .args(["--base-port", &base.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kim demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output until a line contains `what`; returns it.
    fn wait_for(&mut self, what: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no {what:?} from kim demo ({e}); output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn interrupt(mut self) -> Vec<String> {
        let sent = command_kill("INT", self.child.id());
        assert!(sent, "kill -INT failed");
        self.wait_for("stopped; stores flushed");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "kim demo exited with {status}");
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed assertion must not leave the nodes running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command_kill(signal: &str, pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn four_regions_replicate_a_fifth_joins_live_and_all_stop_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let base = free_base();
    let mut demo = Demo::start(&dir, base);
    // The founders converge first: 4 founders' profiles, the charter and 36 records per region.
    let converged = demo.wait_for("converged:");
    assert!(
        converged.contains("(4) holds the same 149 records"),
        "{converged}"
    );
    // Then Kärnten joins live: invitation, request, three endorsements, admission, catch-up.
    let admitted = demo.wait_for("admitted:");
    assert!(
        admitted.contains("Kärnten is a member on every node"),
        "{admitted}"
    );
    for step in ["asks to join", "endorses Kärnten (3 of 3)"] {
        assert!(
            demo.seen.iter().any(|l| l.contains(step)),
            "{step} not shown"
        );
    }
    // + its join request, 3 endorsements, its profile and its 36 records.
    let converged = demo.wait_for("converged:");
    assert!(
        converged.contains("(5) holds the same 190 records"),
        "{converged}"
    );
    for line in ["Steiermark (AT22)", "Vzhodna Slovenija (SI03)"] {
        assert!(
            demo.seen.iter().any(|l| l.contains(line)),
            "{line} not shown"
        );
    }
    assert!(demo.seen.iter().any(|l| l.contains("token:")));

    // Every node is a full member with the other three connected, and holds the others'
    // offers.
    for nuts in ["at22", "si03", "ith4", "hr03", "at21"] {
        let status = kim(&dir.join(nuts), &["status", "--json"]).ok().json();
        assert_eq!(status["members"].as_array().unwrap().len(), 5, "{nuts}");
        assert_eq!(status["membership"]["state"], "member", "{nuts}");
        assert_eq!(status["sync_set"], 190, "{nuts}");
    }
    let members = kim(&dir.join("si03"), &["members", "list"]).ok();
    assert!(members.stdout.contains("Kärnten"), "{}", members.stdout);
    let si03 = kim(&dir.join("si03"), &["status", "--json"]).ok().json();
    let own = si03["region"].as_str().unwrap().to_string();
    let offers = kim(
        &dir.join("si03"),
        &["offer", "list", "--status", "all", "--json"],
    )
    .ok()
    .json();
    let items = offers.as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["region"].as_str() != Some(own.as_str())),
        "SI03 lists no offer of another region"
    );
    let peers = kim(&dir.join("at22"), &["peers"]).ok();
    assert!(
        peers.stdout.contains("Vzhodna Slovenija"),
        "{}",
        peers.stdout
    );
    demo.interrupt();

    // Again on the same directory: the same federation comes back, nothing re-seeded.
    let mut again = Demo::start(&dir, base);
    let converged = again.wait_for("converged:");
    assert!(
        converged.contains("(5) holds the same 190 records"),
        "{converged}"
    );
    again.interrupt();
}
