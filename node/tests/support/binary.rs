//! The real `kim` binary as an operator drives it: run a command, start and stop a node on a
//! free loopback port, wait for its health route. Shared by the binary-level test files.

#![allow(dead_code)]

use kim_protocol::samples;
use kim_protocol::types::Date;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const KIM: &str = env!("CARGO_BIN_EXE_kim");

/// What one `kim` invocation did.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(self) -> Out {
        assert!(
            self.status.success(),
            "kim failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
    pub fn fails(self) -> Out {
        assert!(
            !self.status.success(),
            "kim should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// A `kim` command with a clean environment (no `KIM_*` or `NO_COLOR` from the caller).
pub fn command() -> Command {
    let mut cmd = Command::new(KIM);
    for (name, _) in std::env::vars() {
        if name.starts_with("KIM_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "info").env_remove("NO_COLOR");
    cmd
}

/// Runs `kim --data-dir DATA ARGS…` to completion.
pub fn kim(data: &Path, args: &[&str]) -> Out {
    let out = command()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run kim");
    Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The API port of the node that runs on `data`, once it has written `DATA/api-address`.
pub fn running_port(data: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(data.join("api-address")).ok()?;
    text.lines().next()?.trim().rsplit(':').next()?.parse().ok()
}

/// Removes the `api-address` a killed run left in `data`: it names a port some other process
/// may hold by now, and a test waiting for the next run's file must not read it.
pub fn forget_api_address(data: &Path) {
    match std::fs::remove_file(data.join("api-address")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot remove the old api-address: {e}"),
    }
}

/// A node's data directory and, while it runs, its `kim run` process (killed on drop).
#[derive(Debug)]
pub struct Node {
    pub data: PathBuf,
    /// The API port of the running node (0 before the first start): the node listens on a port
    /// the kernel chooses and writes it to `DATA/api-address`, so no other test can take it
    /// between choosing and binding.
    pub port: u16,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    /// `kim init` in `root/node`, its API on a port chosen when it starts.
    pub fn init(root: &Path) -> Node {
        let data = root.join("node");
        let listen = "127.0.0.1:0";
        kim(
            &data,
            &[
                "init",
                "--region-name",
                "Steiermark",
                "--nuts",
                "AT22",
                "--api-listen",
                listen,
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
            ],
        )
        .ok();
        Node {
            data,
            port: 0,
            log: root.join("node.log"),
            child: None,
        }
    }

    /// Starts `kim run` and waits until the API answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already running");
        forget_api_address(&self.data);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = command()
            .arg("--data-dir")
            .arg(&self.data)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn kim run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("kim run exited with {status}; log:\n{}", self.log());
            }
            if let Some(port) = running_port(&self.data)
                && health(port)
            {
                self.port = port;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node did not write its api-address and answer on it; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (TERM, INT) and waits for the process to end.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("node not running");
        let sent = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -s {signal} failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node did not stop within 20 s of SIG{signal}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kim(&self, args: &[&str]) -> Out {
        kim(&self.data, args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /api/v1/health` answers 200.
pub fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /api/v1/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// A p2p port free right now, below the kernel's ephemeral range (where the other tests'
/// connections take their ports), so it is still free when the node starts.
pub fn free_p2p_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0..500u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let port = 10_000 + (hasher.finish() % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 10000 and 32000 on 127.0.0.1");
}

/// `kim init` of one region in `root/dir`, with a dialable p2p address.
pub fn init_region(root: &Path, dir: &str, name: &str, nuts: &str, language: &str) -> Node {
    let data = root.join(dir);
    kim(
        &data,
        &[
            "init",
            "--region-name",
            name,
            "--nuts",
            nuts,
            "--language",
            language,
            "--agency",
            &format!("Development agency of {name}"),
            "--api-listen",
            "127.0.0.1:0",
            "--p2p-listen",
            &format!("/ip4/127.0.0.1/tcp/{}", free_p2p_port()),
        ],
    )
    .ok();
    Node {
        data,
        port: 0,
        log: root.join(format!("{dir}.log")),
        child: None,
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON file")
}

pub fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).expect("JSON")).expect("write");
}

pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// A valid offer input for `kim offer publish --file`.
pub fn offer_input(key: &str, seed: u64) -> Value {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut offer = samples::cooperation(
        &mut rng,
        Date {
            year: 2026,
            month: 1,
            day: 15,
        },
    );
    offer.eoi_deadline = None;
    json!({"key": key, "body": serde_json::to_value(offer).expect("offer JSON")})
}

/// Polls `check` until it returns something or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
