//! `kim federation profile|create|sign|adopt`: several regions found one federation, with the
//! founders' signatures gathered as files (mail, a shared folder, a USB stick).
//!
//! 1. Each founder runs `kim federation profile` on its freshly initialised node: a *founder
//!    card* (region key, name, NUTS, languages, agency, the node's peer id and dialable
//!    addresses), signed by the region key so nobody can alter it on the way.
//! 2. Anyone runs `kim federation create --founder CARD…` with every card: a *charter draft*
//!    (the charter in readable form, its exact bytes, the federation id they hash to, the cards).
//! 3. Each founder runs `kim federation sign DRAFT` on its node: a *consent* (its signature over
//!    the charter bytes, and its region profile record for the new federation).
//! 4. Each founder runs `kim federation adopt DRAFT CONSENT…` with every consent: the node
//!    checks everything, builds the charter record and moves into the new federation
//!    ([`crate::node::adopt_federation`]); `kim run` then connects the founders' nodes, which
//!    find each other through the profiles.
//!
//! These commands work on the data directory of a stopped node (`profile` and `adopt` open the
//! store, which a running node holds locked); `create` needs no data directory at all.
//!
//! Every file carries exact signed bytes beside a readable copy; readers verify the bytes they
//! received and refuse a file whose readable copy says something else.
//!
//! Each founder's node signs the charter record as its own author. Records are named by
//! (author, kind, key), so the founders' charter records are distinct records that all carry the
//! same charter bytes and the same founder signatures; the federation id and the member set
//! depend only on the charter, and sync spreads every founder's charter record to every node, so
//! the founders' record sets converge. One deterministic record authored by a single founder
//! would need a second round of files (that founder signs only after every consent is in), for
//! no gain in what the membership rule decides.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use clap::Subcommand;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use kim_protocol::bytes::{from_hex, to_hex};
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record, author_key};
use kim_protocol::membership::{
    CHARTER_SIGNING_DOMAIN, Charter, CharterRecord, Founder, FounderSignature, ThresholdRule,
    federation_id,
};
use kim_protocol::{FederationId, PublicKey, SignatureBytes, codes, limits};
use serde::{Deserialize, Serialize};

use crate::config::{Config, DataDir};
use crate::founding::{self, FounderSpec};
use crate::ingest::system_now_ms;
use crate::store::Store;

/// Output for people and scripts that never panics on a closed pipe (as in `cli.rs`).
macro_rules! println {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Founding a federation with several regions (offline, on a stopped node's data directory).
#[derive(Debug, Subcommand)]
pub enum FoundingCommand {
    /// Write this region's founder card (signed by the region key) for the other founders.
    Profile {
        /// Where to write the card (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build a charter draft from every founder's card; needs no data directory.
    Create {
        /// The federation's name, e.g. "Alps-Adriatic Innovation Network".
        #[arg(long)]
        name: String,
        /// A founder card from `kim federation profile` (repeat once per founder, in order).
        #[arg(long = "founder", required = true)]
        founders: Vec<PathBuf>,
        /// Endorsements needed to admit a region: `majority`, `two-thirds`, `all`, a number k,
        /// or a fraction n/d of the current members.
        #[arg(long)]
        threshold: String,
        /// Votes needed to remove a region, out of the other members (same forms).
        #[arg(long, default_value = "majority")]
        removal: String,
        /// Where to write the draft (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign a charter draft as one of its founders: writes this founder's consent.
    Sign {
        /// The charter draft from `kim federation create`.
        draft: PathBuf,
        /// Where to write the consent (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Move this (fresh) node into the federation, given the draft and every founder's consent.
    Adopt {
        /// The charter draft every founder signed.
        draft: PathBuf,
        /// Every founder's consent from `kim federation sign` (this region's too).
        #[arg(required = true)]
        consents: Vec<PathBuf>,
    },
}

/// Runs one founding subcommand.
pub async fn run(data: &DataDir, command: FoundingCommand) -> anyhow::Result<()> {
    match command {
        FoundingCommand::Profile { out } => {
            let card = profile(data)?;
            let peers_hint = if card.card.addrs.is_empty() {
                "\nwarning: the card lists no address other nodes can dial (p2p_listen in \
                 config.toml is 0.0.0.0 or port 0); set a reachable address there and run \
                 `kim federation profile` again, or this node must dial the others itself"
            } else {
                ""
            };
            write_output(out.as_deref(), &card)?;
            note(
                out.is_some(),
                &format!(
                    "founder card of {} ({}), region {}, node {}{peers_hint}",
                    card.card.name, card.card.nuts, card.card.region, card.card.peer_id
                ),
            );
            Ok(())
        }
        FoundingCommand::Create {
            name,
            founders,
            threshold,
            removal,
            out,
        } => {
            let cards = founders
                .iter()
                .map(|path| read_json::<CardFile>(path, CARD_FILE_BYTES_MAX, "founder card"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let draft = create(&name, cards, &threshold, &removal, system_now_ms())?;
            write_output(out.as_deref(), &draft)?;
            note(
                out.is_some(),
                &format!(
                    "charter draft of {:?}: {} founders, federation {}\nnext: every founder runs \
                     `kim --data-dir DIR federation sign DRAFT --out consent.json`",
                    draft.charter.name,
                    draft.charter.founders.len(),
                    draft.federation
                ),
            );
            Ok(())
        }
        FoundingCommand::Sign { draft, out } => {
            let draft = read_json::<DraftFile>(&draft, DRAFT_FILE_BYTES_MAX, "charter draft")?;
            let checked = draft.verify()?;
            let consent = sign(data, &checked, system_now_ms())?;
            let summary = describe(&checked);
            write_output(out.as_deref(), &consent)?;
            note(
                out.is_some(),
                &format!(
                    "{summary}\nsigned as founder {} ({}).\nnext: collect every founder's consent \
                     and run `kim --data-dir DIR federation adopt DRAFT CONSENT…` on each node",
                    consent.name, consent.founder
                ),
            );
            Ok(())
        }
        FoundingCommand::Adopt { draft, consents } => {
            let draft = read_json::<DraftFile>(&draft, DRAFT_FILE_BYTES_MAX, "charter draft")?;
            let checked = draft.verify()?;
            let consents = consents
                .iter()
                .map(|path| {
                    read_json::<ConsentFile>(path, CONSENT_FILE_BYTES_MAX, "consent")
                        .map(|c| (path.clone(), c))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let adopted = adopt(data, &checked, consents).await?;
            println!("{}", describe(&checked));
            println!(
                "{} now belongs to federation {} ({} founding records stored)",
                data.root.display(),
                adopted.federation,
                adopted.stored
            );
            println!(
                "start it with `kim --data-dir {} run`; the founders' nodes find each other \
                 through their profiles",
                data.root.display()
            );
            Ok(())
        }
    }
}

// ----- files ---------------------------------------------------------------------------------

/// Format tag of a founder card, inside its signed bytes.
pub const CARD_FORMAT: &str = "kim-founder-card/1";
/// Domain of a region's signature over its founder card's bytes.
pub const CARD_SIGNING_DOMAIN: &[u8] = b"kim/founder-card/v1";
/// Format tag of a charter draft.
pub const DRAFT_FORMAT: &str = "kim-charter-draft/1";
/// Format tag of a founder's consent.
pub const CONSENT_FORMAT: &str = "kim-founder-consent/1";

/// Largest founder card file read.
pub const CARD_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Largest consent file read (a profile record is at most `RECORD_BYTES_MAX`, hex doubles it).
pub const CONSENT_FILE_BYTES_MAX: u64 = 4 * limits::RECORD_BYTES_MAX as u64;
/// Largest charter draft read: the charter and up to `FOUNDERS_MAX` cards.
pub const DRAFT_FILE_BYTES_MAX: u64 =
    CARD_FILE_BYTES_MAX * limits::FOUNDERS_MAX as u64 + 4 * limits::CHARTER_BYTES_MAX as u64;

/// What a founder states about its region and node; the region key signs its JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// Always [`CARD_FORMAT`].
    pub format: String,
    /// The region's key: its id in the federation.
    pub region: PublicKey,
    pub name: String,
    /// NUTS 2024 code.
    pub nuts: String,
    /// ISO 639-1 languages the agency works in.
    pub languages: Vec<String>,
    pub agency: String,
    /// The libp2p peer id of the region's node.
    pub peer_id: String,
    /// Multiaddrs other nodes can dial it on (may be empty).
    pub addrs: Vec<String>,
    pub created_at_ms: u64,
}

/// A founder card as a file: the exact signed bytes, a readable copy and the signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFile {
    /// Readable copy of `signed`; must say the same.
    pub card: Card,
    /// The card's JSON bytes as signed, hex.
    pub signed: String,
    /// The region key's signature over `CARD_SIGNING_DOMAIN ‖ signed bytes`.
    pub signature: SignatureBytes,
}

impl CardFile {
    /// Signs a card with the region key it names.
    pub fn sign(card: Card, key: &SigningKey) -> anyhow::Result<CardFile> {
        ensure!(
            card.region.0 == key.verifying_key().to_bytes(),
            "the card names another region key than the one signing it"
        );
        let bytes = serde_json::to_vec(&card).context("encoding the founder card")?;
        let mut msg = CARD_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&bytes);
        Ok(CardFile {
            card,
            signed: to_hex(&bytes),
            signature: SignatureBytes(key.sign(&msg).to_bytes()),
        })
    }

    /// Verifies the signature over the bytes as received and returns the card they hold.
    pub fn verify(&self) -> anyhow::Result<Card> {
        let who = format!("the founder card of {:?}", self.card.name);
        let bytes = from_hex(&self.signed).with_context(|| {
            format!("{who}: `signed` is not hex; ask its region for a new card")
        })?;
        let card: Card = serde_json::from_slice(&bytes)
            .with_context(|| format!("{who}: the signed bytes are not a founder card"))?;
        ensure!(
            card.format == CARD_FORMAT,
            "{who}: format {:?} is not {CARD_FORMAT}",
            card.format
        );
        let key = author_key(&card.region)
            .map_err(|e| anyhow::anyhow!("{who}: the region key is unusable: {e}"))?;
        let mut msg = CARD_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&bytes);
        key.verify_strict(&msg, &Signature::from_bytes(&self.signature.0))
            .map_err(|_| {
                anyhow::anyhow!(
                    "{who}: the signature does not verify with region key {}: the card was \
                     altered or damaged; ask its region for a new one",
                    card.region
                )
            })?;
        ensure!(
            self.card == card,
            "{who}: the readable copy differs from what the region signed; the file was edited"
        );
        check_card(&card).with_context(|| format!("{who} ({})", card.region))?;
        Ok(card)
    }
}

/// The content rules of a card (the same the region profile it becomes must pass).
fn check_card(card: &Card) -> anyhow::Result<()> {
    ensure!(
        !card.name.trim().is_empty() && card.name.chars().count() <= limits::NAME_CHARS_MAX,
        "the region name must have 1 to {} characters",
        limits::NAME_CHARS_MAX
    );
    founding::country_of(&card.nuts)?;
    ensure!(
        card.languages.len() <= limits::CODES_MAX,
        "more than {} languages",
        limits::CODES_MAX
    );
    for lang in &card.languages {
        ensure!(
            codes::is_language(lang),
            "{lang:?} is not an ISO 639-1 language code"
        );
    }
    ensure!(
        card.agency.chars().count() <= limits::NAME_CHARS_MAX,
        "the agency name is longer than {} characters",
        limits::NAME_CHARS_MAX
    );
    card.peer_id
        .parse::<libp2p::PeerId>()
        .with_context(|| format!("{:?} is not a libp2p peer id", card.peer_id))?;
    ensure!(
        card.addrs.len() <= limits::NODE_ADDRS_MAX,
        "more than {} node addresses",
        limits::NODE_ADDRS_MAX
    );
    for addr in &card.addrs {
        addr.parse::<libp2p::Multiaddr>()
            .with_context(|| format!("{addr:?} is not a multiaddr"))?;
    }
    Ok(())
}

/// A charter draft: what every founder signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftFile {
    /// Always [`DRAFT_FORMAT`].
    pub format: String,
    /// The hash of `charter_bytes`: the id the federation will have.
    pub federation: FederationId,
    /// Readable copy of `charter_bytes`; must say the same.
    pub charter: Charter,
    /// The exact charter bytes every founder signs, hex.
    pub charter_bytes: String,
    /// Every founder's card, in charter order.
    pub cards: Vec<CardFile>,
}

/// A draft whose every part was checked.
#[derive(Debug, Clone)]
pub struct CheckedDraft {
    pub charter: Charter,
    pub charter_bytes: Vec<u8>,
    pub federation: FederationId,
    /// The founders' cards, in charter order.
    pub cards: Vec<Card>,
}

impl DraftFile {
    /// Checks the charter bytes, the federation id, the readable copy and every card.
    pub fn verify(&self) -> anyhow::Result<CheckedDraft> {
        ensure!(
            self.format == DRAFT_FORMAT,
            "the draft's format {:?} is not {DRAFT_FORMAT}",
            self.format
        );
        let charter_bytes = from_hex(&self.charter_bytes)
            .context("the draft's charter_bytes are not hex; ask for the draft again")?;
        let charter = Charter::from_bytes(&charter_bytes)
            .map_err(|e| anyhow::anyhow!("the draft's charter bytes are unreadable: {e}"))?;
        charter
            .check()
            .map_err(|e| anyhow::anyhow!("the draft's charter is not valid: {e}"))?;
        let federation = federation_id(&charter_bytes);
        ensure!(
            federation == self.federation,
            "the draft names federation {} but its charter hashes to {federation}: the draft \
             was edited",
            self.federation
        );
        ensure!(
            charter == self.charter,
            "the draft's readable charter differs from the charter bytes: the draft was edited"
        );
        ensure!(
            self.cards.len() == charter.founders.len(),
            "the draft holds {} founder cards for {} founders",
            self.cards.len(),
            charter.founders.len()
        );
        let mut cards = Vec::with_capacity(self.cards.len());
        for (founder, file) in charter.founders.iter().zip(&self.cards) {
            let card = file.verify()?;
            ensure!(
                card.region == founder.key
                    && card.name == founder.name
                    && founder.nuts == [card.nuts.clone()],
                "the card of {:?} does not match founder {:?} of the charter",
                card.name,
                founder.name
            );
            cards.push(card);
        }
        Ok(CheckedDraft {
            charter,
            charter_bytes,
            federation,
            cards,
        })
    }
}

/// One founder's agreement to a charter draft.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentFile {
    /// Always [`CONSENT_FORMAT`].
    pub format: String,
    /// The federation (charter hash) consented to.
    pub federation: FederationId,
    /// The founder's region key.
    pub founder: PublicKey,
    /// The founder's name, for people reading the file.
    pub name: String,
    /// The founder's signature over the charter bytes.
    pub charter_signature: FounderSignature,
    /// The founder's region profile record in the new federation (exact signed bytes, hex):
    /// it binds the founder's node to its key, so the founders' nodes admit each other.
    pub profile_record: String,
}

// ----- the steps -----------------------------------------------------------------------------

/// `kim federation profile`: this region's founder card.
pub fn profile(data: &DataDir) -> anyhow::Result<CardFile> {
    let config = Config::load_file(&data.root)?;
    let key = data.load_key()?;
    let node_key = data.load_node_key()?;
    let region = PublicKey(key.verifying_key().to_bytes());
    // Languages and agency live in the region profile `kim init` stored; opening the store also
    // refuses clearly while the node runs.
    let store = Store::open(&data.store(), config.store_cache_bytes, false)?;
    let own_profile = store
        .item(&region, Kind::RegionProfile, "profile")?
        .filter(|entry| !entry.tombstone)
        .map(|entry| store.record(&entry.id))
        .transpose()?
        .flatten()
        .map(Record::decode)
        .transpose()
        .map_err(|e| anyhow::anyhow!("the stored region profile does not decode: {e}"))?;
    let (languages, agency) = match own_profile.map(|r| r.content.body) {
        Some(Body::RegionProfile(p)) => (p.languages, p.agency),
        _ => {
            tracing::warn!("no region profile of this region in the store; using defaults");
            (
                vec!["en".to_string()],
                format!("Regional development agency of {}", config.region_name),
            )
        }
    };
    let card = Card {
        format: CARD_FORMAT.to_string(),
        region,
        name: config.region_name.clone(),
        nuts: config.nuts.clone(),
        languages,
        agency,
        peer_id: node_key.public().to_peer_id().to_string(),
        addrs: crate::node::announceable(&config.p2p_listen),
        created_at_ms: system_now_ms(),
    };
    check_card(&card)?;
    CardFile::sign(card, &key)
}

/// Parses a threshold rule; `eligible_max` is the most voters the rule can ever have at
/// founding (founders for admission, founders minus one for removal).
pub fn parse_rule(text: &str, eligible_max: usize, what: &str) -> anyhow::Result<ThresholdRule> {
    let text = text.trim().to_ascii_lowercase();
    let rule = match text.as_str() {
        "majority" => ThresholdRule::Majority,
        "two-thirds" => ThresholdRule::Fraction {
            numerator: 2,
            denominator: 3,
        },
        "all" | "unanimous" => ThresholdRule::Fraction {
            numerator: 1,
            denominator: 1,
        },
        _ => {
            if let Some((n, d)) = text.split_once('/') {
                let parse = |s: &str| {
                    s.trim().parse::<u16>().with_context(|| {
                        format!("{what} {text:?}: {s:?} is not a whole number up to 65535")
                    })
                };
                let (numerator, denominator) = (parse(n)?, parse(d)?);
                ensure!(
                    numerator >= 1 && numerator <= denominator,
                    "{what} {text:?}: a fraction needs 0 < numerator <= denominator"
                );
                ThresholdRule::Fraction {
                    numerator,
                    denominator,
                }
            } else {
                let k: u16 = text.parse().with_context(|| {
                    format!(
                        "{what} {text:?} is not a rule: use majority, two-thirds, all, a number \
                         k or a fraction n/d"
                    )
                })?;
                ensure!(k >= 1, "{what}: a fixed threshold must be at least 1");
                ensure!(
                    usize::from(k) <= eligible_max.max(1),
                    "{what} {k} is larger than the {} regions that could vote at founding",
                    eligible_max.max(1)
                );
                ThresholdRule::Fixed(k)
            }
        }
    };
    Ok(rule)
}

/// `kim federation create`: verifies the cards and builds the charter draft.
pub fn create(
    name: &str,
    cards: Vec<CardFile>,
    threshold: &str,
    removal: &str,
    now_ms: u64,
) -> anyhow::Result<DraftFile> {
    let name = name.trim();
    ensure!(
        !name.is_empty() && name.chars().count() <= limits::NAME_CHARS_MAX,
        "the federation name must have 1 to {} characters",
        limits::NAME_CHARS_MAX
    );
    ensure!(
        !cards.is_empty(),
        "a federation needs at least one founder card"
    );
    let mut verified = Vec::with_capacity(cards.len());
    let mut regions = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for file in &cards {
        let card = file.verify()?;
        if let Some(other) = regions.insert(card.region, card.name.clone()) {
            bail!(
                "region {} ({:?}) is given twice as a founder (also as {other:?}); pass each \
                 founder's card once",
                card.region,
                card.name
            );
        }
        if let Some(other) = peers.insert(card.peer_id.clone(), card.name.clone()) {
            bail!(
                "{:?} and {other:?} name the same node {}; each founder needs its own node",
                card.name,
                card.peer_id
            );
        }
        verified.push(card);
    }
    let founders = verified.len();
    let charter = Charter {
        name: name.to_string(),
        founders: verified
            .iter()
            .map(|card| Founder {
                key: card.region,
                name: card.name.clone(),
                nuts: vec![card.nuts.clone()],
            })
            .collect(),
        admission: parse_rule(threshold, founders, "--threshold")?,
        removal: parse_rule(removal, founders.saturating_sub(1), "--removal")?,
        created_at_ms: now_ms,
    };
    charter
        .check()
        .map_err(|e| anyhow::anyhow!("the charter is not valid: {e}"))?;
    let charter_bytes = charter
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("encoding the charter: {e}"))?;
    ensure!(
        charter_bytes.len() <= limits::CHARTER_BYTES_MAX,
        "the charter takes {} bytes, more than {}: shorten the names",
        charter_bytes.len(),
        limits::CHARTER_BYTES_MAX
    );
    Ok(DraftFile {
        format: DRAFT_FORMAT.to_string(),
        federation: federation_id(&charter_bytes),
        charter,
        charter_bytes: to_hex(&charter_bytes),
        cards,
    })
}

/// What a founder signs, for people.
pub fn describe(draft: &CheckedDraft) -> String {
    let rule = |r: &ThresholdRule| match r {
        ThresholdRule::Fixed(k) => format!("{k} (fixed)"),
        ThresholdRule::Majority => "majority".to_string(),
        ThresholdRule::Fraction {
            numerator,
            denominator,
        } => format!("{numerator}/{denominator}"),
    };
    let mut text = format!(
        "federation:  {}\nname:        {}\nadmission:   {} of the members\nremoval:     {} of \
         the other members\nfounders:",
        draft.federation,
        draft.charter.name,
        rule(&draft.charter.admission),
        rule(&draft.charter.removal)
    );
    for card in &draft.cards {
        text.push_str(&format!(
            "\n  {} ({}) region {} node {}",
            card.name, card.nuts, card.region, card.peer_id
        ));
    }
    text
}

/// `kim federation sign`: this founder's charter signature and its profile in the new
/// federation.
pub fn sign(data: &DataDir, draft: &CheckedDraft, now_ms: u64) -> anyhow::Result<ConsentFile> {
    let config = Config::load_file(&data.root)?;
    let key = data.load_key()?;
    let node_key = data.load_node_key()?;
    let region = PublicKey(key.verifying_key().to_bytes());
    let card = draft
        .cards
        .iter()
        .find(|c| c.region == region)
        .with_context(|| {
            format!(
                "this region ({region}) is not a founder of {:?}; only its founders sign it",
                draft.charter.name
            )
        })?;
    let peer_id = node_key.public().to_peer_id().to_string();
    ensure!(
        card.peer_id == peer_id,
        "the draft's card for this region names node {} but this data directory's node is \
         {peer_id}; sign on the node the card was made on",
        card.peer_id
    );
    let addrs = crate::node::announceable(&config.p2p_listen);
    if addrs != card.addrs {
        tracing::warn!(
            card = ?card.addrs,
            now = ?addrs,
            "the node's dialable addresses changed since the card was made; the profile lists the current ones"
        );
    }
    let spec = FounderSpec {
        name: card.name.clone(),
        nuts: card.nuts.clone(),
        agency: Some(card.agency.clone()),
        languages: card.languages.clone(),
        region_key: key.clone(),
        node_key,
        node_addrs: addrs,
    };
    let profile = founding::profile_record(draft.federation, &spec, 1, now_ms)?;
    Ok(ConsentFile {
        format: CONSENT_FORMAT.to_string(),
        federation: draft.federation,
        founder: region,
        name: card.name.clone(),
        charter_signature: CharterRecord::founder_sign(&draft.charter_bytes, &key),
        profile_record: to_hex(&profile.bytes),
    })
}

/// Checks every consent against the draft: one per founder, each signature and profile valid.
/// Returns the founder signatures and profile records, in charter order.
pub fn check_consents(
    draft: &CheckedDraft,
    consents: Vec<(PathBuf, ConsentFile)>,
    now_ms: u64,
) -> anyhow::Result<(Vec<FounderSignature>, Vec<Record>)> {
    let mut by_founder: BTreeMap<PublicKey, (FounderSignature, Record)> = BTreeMap::new();
    let mut charter_msg = CHARTER_SIGNING_DOMAIN.to_vec();
    charter_msg.extend_from_slice(&draft.charter_bytes);
    let ctx = kim_protocol::validate::Context {
        federation: draft.federation,
        now_ms,
    };
    for (path, consent) in consents {
        let file = path.display();
        ensure!(
            consent.format == CONSENT_FORMAT,
            "{file}: format {:?} is not {CONSENT_FORMAT}",
            consent.format
        );
        ensure!(
            consent.federation == draft.federation,
            "{file} consents to federation {}, not to this draft's {}",
            consent.federation,
            draft.federation
        );
        let founder = consent.founder;
        let name = draft
            .charter
            .founders
            .iter()
            .find(|f| f.key == founder)
            .map(|f| f.name.clone())
            .with_context(|| format!("{file} is signed by {founder}, who is not a founder"))?;
        ensure!(
            !by_founder.contains_key(&founder),
            "{name} ({founder}) consented more than once ({file} is the second consent); pass \
             each founder's consent once"
        );
        let signature = consent.charter_signature;
        ensure!(
            signature.founder == founder,
            "{file}: the charter signature is by {}, not by the consenting founder {name}",
            signature.founder
        );
        let verifying = author_key(&founder)
            .map_err(|e| anyhow::anyhow!("{file}: founder key of {name} is unusable: {e}"))?;
        verifying
            .verify_strict(&charter_msg, &Signature::from_bytes(&signature.signature.0))
            .map_err(|_| {
                anyhow::anyhow!(
                    "{file}: the charter signature of {name} does not verify: the consent was \
                     altered or signs another charter; ask {name} to sign the draft again"
                )
            })?;
        let bytes = from_hex(&consent.profile_record)
            .with_context(|| format!("{file}: profile_record is not hex"))?;
        let profile = Record::decode(bytes)
            .and_then(|r| r.verify().map(|()| r))
            .and_then(|r| kim_protocol::validate::validate(&r.content, &ctx).map(|()| r))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{file}: the region profile of {name} is refused ({}: {e}); the consent was \
                     altered or damaged, ask {name} to sign the draft again",
                    e.code()
                )
            })?;
        let c = &profile.content;
        ensure!(
            c.author == founder
                && c.federation == draft.federation
                && c.kind == Kind::RegionProfile
                && matches!(&c.body, Body::RegionProfile(p) if !p.nodes.is_empty()),
            "{file}: the profile record is not {name}'s node profile in this federation"
        );
        by_founder.insert(founder, (signature, profile));
    }
    let missing: Vec<String> = draft
        .charter
        .founders
        .iter()
        .filter(|f| !by_founder.contains_key(&f.key))
        .map(|f| format!("{} ({})", f.name, f.key))
        .collect();
    ensure!(
        missing.is_empty(),
        "no consent from {}: every founder must sign the draft (`kim federation sign`) before \
         any node adopts it",
        missing.join(", ")
    );
    let mut signatures = Vec::with_capacity(by_founder.len());
    let mut profiles = Vec::with_capacity(by_founder.len());
    for founder in &draft.charter.founders {
        if let Some((signature, profile)) = by_founder.remove(&founder.key) {
            signatures.push(signature);
            profiles.push(profile);
        }
    }
    Ok((signatures, profiles))
}

/// The charter record this founder's node authors: the charter bytes with every founder's
/// signature in charter order, dated at the charter's creation, so the same founder always
/// builds the same bytes.
pub fn charter_record(
    draft: &CheckedDraft,
    key: &SigningKey,
    founder_signatures: Vec<FounderSignature>,
) -> anyhow::Result<Record> {
    let body = CharterRecord {
        charter: draft.charter_bytes.clone(),
        founder_signatures,
    };
    body.verify().map_err(|e| {
        anyhow::anyhow!("the founders' signatures do not complete the charter: {e}")
    })?;
    let content = Content {
        format: FORMAT_VERSION,
        federation: draft.federation,
        author: PublicKey(key.verifying_key().to_bytes()),
        kind: Kind::Charter,
        key: "charter".to_string(),
        revision: 1,
        created_at_ms: draft.charter.created_at_ms,
        expires_at_ms: None,
        body: Body::Charter(body),
    };
    Record::sign(&content, key).map_err(|e| anyhow::anyhow!("signing the charter record: {e}"))
}

/// `kim federation adopt`: checks every consent, builds the charter record and moves the node.
pub async fn adopt(
    data: &DataDir,
    draft: &CheckedDraft,
    consents: Vec<(PathBuf, ConsentFile)>,
) -> anyhow::Result<crate::node::Adopted> {
    let key = data.load_key()?;
    let region = PublicKey(key.verifying_key().to_bytes());
    ensure!(
        draft.charter.founders.iter().any(|f| f.key == region),
        "this region ({region}) is not a founder of {:?}; a node adopts only a charter it founds",
        draft.charter.name
    );
    let (signatures, profiles) = check_consents(draft, consents, system_now_ms())?;
    let charter = charter_record(draft, &key, signatures)?;
    let mut records = vec![charter.bytes];
    records.extend(profiles.into_iter().map(|r| r.bytes));
    let expected = records.len();
    let adopted = crate::node::adopt_federation(data, &draft.charter_bytes, records).await?;
    if !adopted.refused.is_empty() {
        let list: Vec<String> = adopted
            .refused
            .iter()
            .map(|(id, code)| format!("{id} ({code})"))
            .collect();
        bail!(
            "the node moved into federation {} but refused {} of {} founding records: {}",
            adopted.federation,
            list.len(),
            expected,
            list.join(", ")
        );
    }
    tracing::info!(
        federation = %adopted.federation,
        stored = adopted.stored,
        "adopted the co-founded federation"
    );
    Ok(adopted)
}

// ----- helpers -------------------------------------------------------------------------------

/// Reads a JSON file of at most `max` bytes.
fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    max: u64,
    what: &str,
) -> anyhow::Result<T> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?
        .len();
    ensure!(
        size <= max,
        "{} is {size} bytes, more than a {what} can be ({max})",
        path.display()
    );
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a {what} file", path.display()))
}

/// Writes pretty JSON to `out`, or to standard output.
fn write_output<T: Serialize>(out: Option<&Path>, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding the output")?;
    text.push('\n');
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(())
        }
    }
}

/// A message for the operator: on standard output when the data went to a file, else on
/// standard error so the JSON on standard output stays clean.
fn note(data_in_file: bool, text: &str) {
    if data_in_file {
        println!("{text}");
    } else {
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn card(name: &str, nuts: &str) -> (CardFile, SigningKey) {
        let key = SigningKey::from_bytes(&crate::config::random_bytes().unwrap());
        let node = libp2p::identity::Keypair::generate_ed25519();
        let card = Card {
            format: CARD_FORMAT.into(),
            region: PublicKey(key.verifying_key().to_bytes()),
            name: name.into(),
            nuts: nuts.into(),
            languages: vec!["de".into()],
            agency: format!("Agency of {name}"),
            peer_id: node.public().to_peer_id().to_string(),
            addrs: vec!["/ip4/192.0.2.1/tcp/7651".into()],
            created_at_ms: 1,
        };
        (CardFile::sign(card, &key).unwrap(), key)
    }

    #[test]
    fn rules_parse_and_refuse_what_cannot_be_met() {
        assert_eq!(
            parse_rule("majority", 3, "t").unwrap(),
            ThresholdRule::Majority
        );
        assert_eq!(parse_rule("2", 3, "t").unwrap(), ThresholdRule::Fixed(2));
        assert_eq!(
            parse_rule("two-thirds", 3, "t").unwrap(),
            ThresholdRule::Fraction {
                numerator: 2,
                denominator: 3
            }
        );
        assert_eq!(
            parse_rule("3/4", 3, "t").unwrap(),
            ThresholdRule::Fraction {
                numerator: 3,
                denominator: 4
            }
        );
        let err = parse_rule("4", 3, "--threshold").unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        assert!(parse_rule("0", 3, "t").is_err());
        assert!(parse_rule("5/4", 3, "t").is_err());
        assert!(parse_rule("most", 3, "t").is_err());
    }

    #[test]
    fn a_card_verifies_and_any_change_is_refused() {
        let (file, _) = card("Steiermark", "AT22");
        assert_eq!(file.verify().unwrap(), file.card);

        let mut readable = file.clone();
        readable.card.name = "Kärnten".into();
        let err = readable.verify().unwrap_err().to_string();
        assert!(err.contains("readable copy"), "{err}");

        let mut forged = file.clone();
        forged.signature.0[0] ^= 1;
        let err = forged.verify().unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");

        let mut swapped = file.clone();
        let mut bytes = from_hex(&swapped.signed).unwrap();
        let text = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("AT22", "AT21");
        bytes = text.into_bytes();
        swapped.signed = to_hex(&bytes);
        assert!(swapped.verify().is_err());
    }

    #[test]
    fn create_checks_founders_and_the_draft_verifies() {
        let (a, _) = card("Steiermark", "AT22");
        let (b, _) = card("Vzhodna Slovenija", "SI03");
        let draft = create("Alps", vec![a.clone(), b.clone()], "2", "1", 5).unwrap();
        let checked = draft.verify().unwrap();
        assert_eq!(checked.charter.founders.len(), 2);
        assert_eq!(checked.federation, federation_id(&checked.charter_bytes));

        let err = create("Alps", vec![a.clone(), a.clone()], "1", "1", 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        let err = create("Alps", vec![a.clone(), b.clone()], "3", "1", 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than"), "{err}");

        let mut edited = draft.clone();
        edited.charter.name = "Other".into();
        assert!(edited.verify().is_err());
        let mut edited = draft;
        edited.federation = FederationId([7; 32]);
        assert!(edited.verify().is_err());
    }
}
