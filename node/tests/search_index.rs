//! The search index stays consistent with the store through publish, revise and withdraw, and is
//! rebuilt when missing or stale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use kim_node::config::{Config, DataDir};
use kim_node::node::{self, InitOptions};
use kim_node::search::{Query, SearchIndex};
use kim_node::service::{Collection, ItemInput};
use kim_protocol::samples;
use kim_protocol::types::Date;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

fn offer_input(key: &str, title: &str) -> ItemInput {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut body = samples::cooperation(&mut rng, Date::new(2026, 11, 27).unwrap());
    body.title = title.to_string();
    body.eoi_deadline = None;
    ItemInput {
        key: Some(key.into()),
        body: serde_json::to_value(body).unwrap(),
        expires_at_ms: None,
        private: None,
    }
}

fn text(words: &str) -> Query {
    Query {
        text: Some(words.to_string()),
        ..Query::default()
    }
}

fn keys(index: &SearchIndex, words: &str) -> Vec<String> {
    index
        .search(&text(words))
        .unwrap()
        .into_iter()
        .map(|h| h.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_follows_publish_revise_withdraw_and_is_rebuilt_when_lost() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = DataDir::new(dir.path().join("node"));
    node::init(
        &data,
        InitOptions {
            region_name: "Steiermark".into(),
            nuts: "AT22".into(),
            agency: None,
            languages: vec!["de".into()],
            api_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: vec![],
            seed: None,
        },
    )
    .await?;
    {
        let opened = node::open(&data, Config::load(&data.root)?)?;
        let service = &opened.state.service;
        let index = service.ingest().search().expect("index attached").clone();
        service
            .publish(
                Collection::Offers,
                offer_input("dryer", "Wood drying plants with heat recovery"),
            )
            .await?;
        service
            .publish(
                Collection::Offers,
                offer_input("sensor", "Wireless sensors for bridges"),
            )
            .await?;
        // Readers ask for this node's own writes first, as the API does.
        service.ingest().search_fresh().await;
        // English stemming: "sensor" finds "sensors", "plant" finds "plants".
        assert_eq!(keys(&index, "sensor"), vec!["sensor"]);
        assert_eq!(keys(&index, "plant"), vec!["dryer"]);
        // A revision replaces the document.
        service
            .revise(
                Collection::Offers,
                "sensor",
                offer_input("sensor", "Acoustic monitoring of bridges"),
            )
            .await?;
        // Readers ask for this node's own writes first, as the API does.
        service.ingest().search_fresh().await;
        assert!(keys(&index, "wireless").is_empty());
        assert_eq!(keys(&index, "acoustic"), vec!["sensor"]);
        // A withdrawal removes it.
        service
            .withdraw(Collection::Offers, "dryer", "sold".into())
            .await?;
        // Readers ask for this node's own writes first, as the API does.
        service.ingest().search_fresh().await;
        assert!(keys(&index, "drying").is_empty());
        assert_eq!(
            index.generation(),
            Some(service.ingest().digest().hash().to_hex())
        );
    }
    // The index is derived data: delete it and the next start rebuilds it from the store.
    std::fs::remove_dir_all(data.search())?;
    let opened = node::open(&data, Config::load(&data.root)?)?;
    let index = opened
        .state
        .service
        .ingest()
        .search()
        .expect("index attached")
        .clone();
    assert_eq!(keys(&index, "acoustic"), vec!["sensor"]);
    assert!(keys(&index, "drying").is_empty());
    Ok(())
}
