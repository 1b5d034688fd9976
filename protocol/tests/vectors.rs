//! The public test vectors: reproducible from the generator, and each one accepted or rejected
//! with the stated code through the public API, as another implementation would check them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    pub mod vectors;
}

use kim_protocol::bytes::from_hex;
use kim_protocol::validate::{Context, check_record};
use kim_protocol::{Content, FederationId};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn context(file: &Value) -> Context {
    Context {
        federation: FederationId::from_hex(file["federation"].as_str().unwrap()).unwrap(),
        now_ms: file["now_ms"].as_u64().unwrap(),
    }
}

fn vectors(file: &Value) -> &Vec<Value> {
    file["vectors"].as_array().unwrap()
}

fn bytes_of(v: &Value) -> Vec<u8> {
    from_hex(v["record_hex"].as_str().unwrap()).unwrap()
}

#[test]
fn committed_vectors_are_what_the_generator_makes() {
    for (name, text) in support::vectors::files() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("vectors")
            .join(name);
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == text,
            "{name} differs from the generator's output: run `cargo run -p kim-protocol --example gen_vectors`"
        );
    }
}

#[test]
fn there_are_at_least_forty_of_each() {
    assert!(vectors(&load("valid.json")).len() >= 40);
    assert!(vectors(&load("invalid.json")).len() >= 40);
}

#[test]
fn valid_vectors_are_accepted_with_their_id_and_content() {
    let file = load("valid.json");
    let ctx = context(&file);
    for v in vectors(&file) {
        let name = v["name"].as_str().unwrap();
        let record = check_record(bytes_of(v), &ctx)
            .unwrap_or_else(|e| panic!("valid vector {name} rejected: {} ({e})", e.code()));
        assert_eq!(record.id.to_hex(), v["id"].as_str().unwrap(), "{name}: id");
        assert_eq!(
            record.content.author.to_hex(),
            v["public_key"].as_str().unwrap(),
            "{name}: key"
        );
        let content: Content = serde_json::from_value(v["content"].clone()).unwrap();
        assert_eq!(record.content, content, "{name}: decoded content");
        assert_eq!(
            postcard::to_stdvec(&content).unwrap(),
            record.content_bytes(),
            "{name}: JSON content re-encodes to the signed bytes"
        );
    }
}

#[test]
fn invalid_vectors_are_rejected_with_their_code() {
    let file = load("invalid.json");
    let ctx = context(&file);
    let known = kim_protocol::Error::ALL_CODES;
    for v in vectors(&file) {
        let name = v["name"].as_str().unwrap();
        let expected = v["expected_error"].as_str().unwrap();
        assert!(known.contains(&expected), "{name}: unknown code {expected}");
        match check_record(bytes_of(v), &ctx) {
            Ok(_) => panic!("invalid vector {name} was accepted"),
            Err(e) => assert_eq!(e.code(), expected, "{name}: {e}"),
        }
    }
}

#[test]
fn flipping_any_byte_of_any_valid_vector_is_rejected() {
    let file = load("valid.json");
    let ctx = context(&file);
    let mut flips = 0;
    for v in vectors(&file) {
        let bytes = bytes_of(v);
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            assert!(
                check_record(flipped, &ctx).is_err(),
                "{}: flipping byte {i} was accepted",
                v["name"].as_str().unwrap()
            );
            flips += 1;
        }
    }
    assert!(flips > 10_000, "only {flips} flips");
}
