//! The deployment files stay true: the example config parses as the node's config and lists
//! every setting the node writes, and the commands the systemd units and the container run
//! exist with the flags they use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use kim_node::config::Config;

const EXAMPLE: &str = include_str!("../../deploy/config.example.toml");
const SERVICE: &str = include_str!("../../deploy/systemd/kim.service");
const BACKUP: &str = include_str!("../../deploy/systemd/kim-backup.service");
const CONTAINER: &str = include_str!("../../deploy/Containerfile");

fn keys(text: &str) -> BTreeSet<String> {
    text.parse::<toml::Table>()
        .expect("valid TOML")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_example_config_is_complete_and_parses() {
    let config: Config = toml::from_str(EXAMPLE).expect("the example is a valid config");
    assert_eq!(config.api_listen.to_string(), "127.0.0.1:7650");
    // What the node would write for this config has exactly the example's settings.
    let written = config.to_documented_toml();
    assert_eq!(
        keys(&written),
        keys(EXAMPLE),
        "deploy/config.example.toml is out of date"
    );
}

#[test]
fn the_units_and_the_container_run_commands_that_exist() {
    assert!(SERVICE.contains("ExecStart=/usr/local/bin/kim run"));
    assert!(SERVICE.contains("KillSignal=SIGTERM"));
    assert!(BACKUP.contains("kim export --local --output"));
    assert!(CONTAINER.contains("CMD [\"run\"]"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_kim"))
        .args(["export", "--help"])
        .output()
        .expect("run kim");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--local") && text.contains("--output"),
        "{text}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_kim"))
        .args(["run", "--help"])
        .output()
        .expect("run kim");
    assert!(help.status.success());
}
