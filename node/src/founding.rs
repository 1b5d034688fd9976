//! Founding a federation: the charter every founder signs, and each founder's region profile,
//! which binds the region's node peer ids to its signing key.
//!
//! A one-region node (`kim init`) founds with itself as the only founder; the multi-node test
//! harness and `kim demo` found with several regions at once. Either way the result is a set of
//! ordinary signed records that every founding node ingests, so all founders start from the
//! same federation id and already know each other's nodes.

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::membership::{Charter, CharterRecord, Founder, ThresholdRule, federation_id};
use kim_protocol::types::{NodeAddress, PublicContact, RegionProfile};
use kim_protocol::{FederationId, PublicKey, codes};

/// One founding region: who it is and the keys of its (first) node.
#[derive(Clone)]
pub struct FounderSpec {
    pub name: String,
    pub nuts: String,
    pub agency: Option<String>,
    pub languages: Vec<String>,
    pub region_key: SigningKey,
    pub node_key: libp2p::identity::Keypair,
    /// Dialable addresses of the node (multiaddrs), published in the profile; may be empty.
    pub node_addrs: Vec<String>,
}

impl std::fmt::Debug for FounderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FounderSpec")
            .field("name", &self.name)
            .field("nuts", &self.nuts)
            .field("peer_id", &self.node_key.public().to_peer_id())
            .finish_non_exhaustive()
    }
}

impl FounderSpec {
    /// A founder with fresh random keys.
    pub fn generate(name: &str, nuts: &str) -> anyhow::Result<FounderSpec> {
        Ok(FounderSpec {
            name: name.to_string(),
            nuts: nuts.to_string(),
            agency: None,
            languages: vec!["en".into()],
            region_key: SigningKey::from_bytes(&crate::config::random_bytes()?),
            node_key: libp2p::identity::Keypair::generate_ed25519(),
            node_addrs: Vec::new(),
        })
    }

    /// The region id (the founder's public key).
    pub fn region(&self) -> PublicKey {
        PublicKey(self.region_key.verifying_key().to_bytes())
    }
}

/// The records that found a federation.
#[derive(Debug, Clone)]
pub struct Founding {
    /// The charter's exact bytes (its hash is the federation id).
    pub charter_bytes: Vec<u8>,
    pub federation: FederationId,
    /// The charter record, then one region profile per founder, as signed record bytes.
    pub records: Vec<Vec<u8>>,
}

/// The ISO country of a NUTS code, after checking the code exists.
pub fn country_of(nuts: &str) -> anyhow::Result<String> {
    let region = codes::nuts(nuts).with_context(|| {
        format!("{nuts:?} is not a NUTS 2024 code (for example AT22 for Steiermark)")
    })?;
    Ok(codes::nuts_country(region.code)
        .map(codes::nuts_country_to_iso)
        .unwrap_or_default()
        .to_string())
}

/// Builds and signs a charter with every founder's signature, and each founder's profile.
pub fn found(
    name: &str,
    founders: &[FounderSpec],
    admission: ThresholdRule,
    removal: ThresholdRule,
    now_ms: u64,
) -> anyhow::Result<Founding> {
    let first = founders
        .first()
        .context("a federation needs at least one founder")?;
    for founder in founders {
        country_of(&founder.nuts)?;
        for lang in &founder.languages {
            if !codes::is_language(lang) {
                anyhow::bail!(
                    "{lang:?} is not an ISO 639-1 language code (for example de, sl, en)"
                );
            }
        }
    }
    let charter = Charter {
        name: name.to_string(),
        founders: founders
            .iter()
            .map(|f| Founder {
                key: f.region(),
                name: f.name.clone(),
                nuts: vec![f.nuts.clone()],
            })
            .collect(),
        admission,
        removal,
        created_at_ms: now_ms,
    };
    charter
        .check()
        .map_err(|e| anyhow::anyhow!("the charter is not valid: {e}"))?;
    let charter_bytes = charter.to_bytes()?;
    let federation = federation_id(&charter_bytes);
    let charter_record = sign(
        federation,
        &first.region_key,
        Kind::Charter,
        "charter",
        now_ms,
        Body::Charter(CharterRecord {
            founder_signatures: founders
                .iter()
                .map(|f| CharterRecord::founder_sign(&charter_bytes, &f.region_key))
                .collect(),
            charter: charter_bytes.clone(),
        }),
    )?;
    let mut records = vec![charter_record.bytes];
    for founder in founders {
        records.push(profile_record(federation, founder, 1, now_ms)?.bytes);
    }
    Ok(Founding {
        charter_bytes,
        federation,
        records,
    })
}

/// A founder's region profile, listing its node's peer id and addresses.
pub fn profile_record(
    federation: FederationId,
    founder: &FounderSpec,
    revision: u64,
    now_ms: u64,
) -> anyhow::Result<Record> {
    let mut languages = founder.languages.clone();
    if languages.is_empty() {
        languages.push("en".into());
    }
    sign_revision(
        federation,
        &founder.region_key,
        Kind::RegionProfile,
        "profile",
        revision,
        now_ms,
        Body::RegionProfile(RegionProfile {
            name: founder.name.clone(),
            nuts: vec![founder.nuts.clone()],
            country: country_of(&founder.nuts)?,
            languages,
            agency: founder
                .agency
                .clone()
                .unwrap_or_else(|| format!("Regional development agency of {}", founder.name)),
            contact: PublicContact::default(),
            nodes: vec![NodeAddress {
                peer_id: founder.node_key.public().to_peer_id().to_string(),
                addrs: founder.node_addrs.clone(),
            }],
            description: String::new(),
        }),
    )
}

fn sign(
    federation: FederationId,
    key: &SigningKey,
    kind: Kind,
    item: &str,
    now_ms: u64,
    body: Body,
) -> anyhow::Result<Record> {
    sign_revision(federation, key, kind, item, 1, now_ms, body)
}

fn sign_revision(
    federation: FederationId,
    key: &SigningKey,
    kind: Kind,
    item: &str,
    revision: u64,
    now_ms: u64,
    body: Body,
) -> anyhow::Result<Record> {
    let content = Content {
        format: FORMAT_VERSION,
        federation,
        author: PublicKey(key.verifying_key().to_bytes()),
        kind,
        key: item.to_string(),
        revision,
        created_at_ms: now_ms,
        expires_at_ms: None,
        body,
    };
    Record::sign(&content, key).map_err(|e| anyhow::anyhow!("signing the {kind} record: {e}"))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use kim_protocol::membership::evaluate;
    use kim_protocol::validate::{Context, validate};

    #[test]
    fn every_founder_is_a_member_and_every_record_is_valid() {
        let founders: Vec<FounderSpec> = [("Steiermark", "AT22"), ("Vzhodna Slovenija", "SI03")]
            .iter()
            .map(|(n, c)| FounderSpec::generate(n, c).unwrap())
            .collect();
        let founding = found(
            "Alps-Adriatic",
            &founders,
            ThresholdRule::Majority,
            ThresholdRule::Majority,
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(founding.records.len(), 3);
        let ctx = Context {
            federation: founding.federation,
            now_ms: 1_700_000_000_000,
        };
        let records: Vec<Record> = founding
            .records
            .iter()
            .map(|b| Record::decode(b.clone()).unwrap())
            .collect();
        for r in &records {
            r.verify().unwrap();
            validate(&r.content, &ctx).unwrap();
        }
        let charter = Charter::from_bytes(&founding.charter_bytes).unwrap();
        let state = evaluate(&charter, founding.federation, records.iter());
        for f in &founders {
            assert!(state.is_member(&f.region()), "{}", f.name);
        }
    }

    #[test]
    fn unknown_codes_are_refused_with_the_code() {
        let bad = FounderSpec::generate("Nowhere", "ZZ99").unwrap();
        let err = found(
            "x",
            &[bad],
            ThresholdRule::Majority,
            ThresholdRule::Majority,
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ZZ99"), "{err}");
    }
}
