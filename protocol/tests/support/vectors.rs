//! Builds the public test vectors from fixed seeds. Shared by `examples/gen_vectors.rs`, which
//! writes `vectors/*.json`, and by `tests/vectors.rs`, which checks the files are reproducible.

use ed25519_dalek::{Signer, SigningKey};
use kim_protocol::bytes::{FederationId, PublicKey, SignatureBytes};
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record, SIGNING_DOMAIN};
use kim_protocol::limits::{RECORD_BYTES_MAX, REVISION_MAX};
use kim_protocol::membership::{
    Charter, CharterRecord, Endorsement, Founder, JoinRequest, KeyRotation, Leave, RemovalVote,
    ThresholdRule, federation_id, genesis_digest,
};
use kim_protocol::samples;
use kim_protocol::types::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

/// The receiver's clock every vector is checked at: 2026-11-27T12:00:00Z.
pub const NOW_MS: u64 = 1_795_780_800_000;

pub struct Vectors {
    pub federation: FederationId,
    pub valid: Vec<Value>,
    pub invalid: Vec<Value>,
}

fn hex(bytes: &[u8]) -> String {
    kim_protocol::bytes::to_hex(bytes)
}

fn valid_entry(name: &str, description: &str, record: &Record) -> Value {
    json!({
        "name": name,
        "description": description,
        "record_hex": hex(&record.bytes),
        "id": record.id.to_hex(),
        "public_key": record.content.author.to_hex(),
        "content": serde_json::to_value(&record.content).unwrap_or(Value::Null),
    })
}

fn invalid_entry(
    name: &str,
    description: &str,
    bytes: &[u8],
    key: &PublicKey,
    code: &str,
) -> Value {
    json!({
        "name": name,
        "description": description,
        "record_hex": hex(bytes),
        "public_key": key.to_hex(),
        "expected_error": code,
    })
}

/// Signs content bytes the way `Record::sign` does, but without any checks, so invalid content
/// can carry a valid signature.
fn sign_raw(content_bytes: &[u8], key: &SigningKey) -> Vec<u8> {
    let mut msg = SIGNING_DOMAIN.to_vec();
    msg.extend_from_slice(content_bytes);
    let signature = key.sign(&msg).to_bytes();
    let mut out = Vec::new();
    let mut len = content_bytes.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(content_bytes);
    out.extend_from_slice(&signature);
    out
}

fn sign_content(content: &Content, key: &SigningKey) -> Vec<u8> {
    let bytes = postcard::to_stdvec(content).unwrap_or_default();
    sign_raw(&bytes, key)
}

pub fn generate() -> Vectors {
    let mut rng = ChaCha8Rng::seed_from_u64(0x4b494d); // "KIM"
    let founders: Vec<SigningKey> = (0..4).map(|_| samples::signing_key(&mut rng)).collect();
    let charter = Charter {
        name: "Sm@rt Region KIM federation".into(),
        founders: founders
            .iter()
            .enumerate()
            .map(|(i, k)| Founder {
                key: samples::public_key(k),
                name: samples::REGIONS[i].2.into(),
                nuts: vec![samples::REGIONS[i].0.into()],
            })
            .collect(),
        admission: ThresholdRule::Majority,
        removal: ThresholdRule::Majority,
        created_at_ms: NOW_MS - 30 * 86_400_000,
    };
    let charter_bytes = charter.to_bytes().unwrap_or_default();
    let federation = federation_id(&charter_bytes);
    let state = genesis_digest(&federation);
    let author = &founders[0];
    let author_pk = samples::public_key(author);
    let base = |kind: Kind, key: &str, revision: u64, body: Body| Content {
        format: FORMAT_VERSION,
        federation,
        author: author_pk,
        kind,
        key: key.into(),
        revision,
        created_at_ms: NOW_MS - 3_600_000,
        expires_at_ms: None,
        body,
    };
    let mut valid = Vec::new();
    let mut push_valid =
        |name: &str, description: &str, content: &Content, key: &SigningKey| match Record::sign(
            content, key,
        ) {
            Ok(record) => valid.push(valid_entry(name, description, &record)),
            Err(err) => panic!("valid vector {name} does not sign: {err}"),
        };

    // Charter, signed by all founders.
    let charter_record = CharterRecord {
        charter: charter_bytes.clone(),
        founder_signatures: founders
            .iter()
            .map(|k| CharterRecord::founder_sign(&charter_bytes, k))
            .collect(),
    };
    push_valid(
        "charter",
        "the federation's charter, signed by its four founders; the federation id is its hash",
        &base(
            Kind::Charter,
            "charter",
            1,
            Body::Charter(charter_record.clone()),
        ),
        author,
    );

    // Shared kinds, four of each from different seeds.
    let kinds = [
        Kind::RegionProfile,
        Kind::Organisation,
        Kind::Project,
        Kind::Cooperation,
        Kind::Knowledge,
        Kind::Interest,
        Kind::Outcome,
    ];
    for kind in kinds {
        for n in 0..4 {
            let mut content = samples::content(
                &mut rng,
                federation,
                author_pk,
                kind,
                &format!("{}-{n}", kind.as_str().replace('_', "-")),
                NOW_MS - 86_400_000 * (n + 1),
            );
            content.revision = n + 1;
            push_valid(
                &format!("{}_{n}", kind.as_str()),
                &format!("a realistic {} record, revision {}", kind.as_str(), n + 1),
                &content,
                author,
            );
        }
    }
    for (n, kind) in [
        Kind::Cooperation,
        Kind::Knowledge,
        Kind::Organisation,
        Kind::Project,
    ]
    .into_iter()
    .enumerate()
    {
        push_valid(
            &format!("tombstone_{}", kind.as_str()),
            "a withdrawal: a higher revision whose body is a tombstone",
            &base(
                kind,
                &format!("{}-0", kind.as_str()),
                9 + n as u64,
                Body::Tombstone(Tombstone {
                    reason: "withdrawn by the author".into(),
                }),
            ),
            author,
        );
    }
    // Membership records.
    let candidate = samples::signing_key(&mut rng);
    let candidate_pk = samples::public_key(&candidate);
    let join = Content {
        author: candidate_pk,
        ..base(
            Kind::JoinRequest,
            "join",
            1,
            Body::JoinRequest(JoinRequest {
                profile: samples::region_profile(&mut rng, 9),
                message: "Małopolska asks to join the federation.".into(),
            }),
        )
    };
    let join_record = Record::sign(&join, &candidate);
    push_valid(
        "join_request",
        "a candidate's join request, signed by the candidate",
        &join,
        &candidate,
    );
    let join_id = join_record
        .map(|r| r.id)
        .unwrap_or(kim_protocol::RecordId([0; 32]));
    for (i, founder) in founders.iter().enumerate().take(2) {
        let content = Content {
            author: samples::public_key(founder),
            ..base(
                Kind::Endorsement,
                "endorse",
                1,
                Body::Endorsement(Endorsement {
                    state,
                    candidate: candidate_pk,
                    join_request: join_id,
                }),
            )
        };
        push_valid(
            &format!("endorsement_{i}"),
            "a member endorses the candidate in the genesis state",
            &content,
            founder,
        );
    }
    push_valid(
        "removal_vote",
        "a member votes to remove another",
        &base(
            Kind::RemovalVote,
            "remove",
            1,
            Body::RemovalVote(RemovalVote {
                state,
                target: samples::public_key(&founders[3]),
                reason: "node unreachable for six months".into(),
            }),
        ),
        author,
    );
    push_valid(
        "leave",
        "a member leaves",
        &Content {
            author: samples::public_key(&founders[2]),
            ..base(
                Kind::Leave,
                "leave",
                1,
                Body::Leave(Leave {
                    state,
                    reason: "agency closed".into(),
                }),
            )
        },
        &founders[2],
    );
    let new_key = samples::signing_key(&mut rng);
    push_valid(
        "key_rotation",
        "a region hands over to a new key; the new key proves possession",
        &base(
            Kind::KeyRotation,
            "rotate",
            1,
            Body::KeyRotation(KeyRotation::new(&federation, &author_pk, &new_key)),
        ),
        author,
    );
    let mut expiring = samples::content(
        &mut rng,
        federation,
        author_pk,
        Kind::Cooperation,
        "offer-expiring",
        NOW_MS - 1000,
    );
    expiring.expires_at_ms = Some(NOW_MS - 500);
    if let Body::Cooperation(c) = &mut expiring.body {
        c.eoi_deadline = None;
    }
    push_valid(
        "expired_offer",
        "valid but already expired: stored, hidden from queries",
        &expiring,
        author,
    );
    let mut skew = base(
        Kind::Cooperation,
        "offer-skew",
        1,
        Body::Cooperation(samples::cooperation(
            &mut rng,
            Date {
                year: 2026,
                month: 11,
                day: 27,
            },
        )),
    );
    skew.created_at_ms = NOW_MS + 5 * 60 * 1000;
    if let Body::Cooperation(c) = &mut skew.body {
        c.eoi_deadline = None;
    }
    push_valid(
        "created_at_skew_limit",
        "created-at exactly 5 minutes after the receiver's clock is accepted",
        &skew,
        author,
    );

    // ---- invalid vectors ----
    let mut invalid = Vec::new();
    let good = sample_offer(&mut rng, federation, author_pk);
    let good_bytes = sign_content(&good, author);
    let mut bad = |name: &str, description: &str, bytes: Vec<u8>, code: &str| {
        invalid.push(invalid_entry(name, description, &bytes, &author_pk, code));
    };
    let mutate = |name: &str, description: &str, code: &str, f: &dyn Fn(&mut Content)| {
        let mut c = good.clone();
        f(&mut c);
        (
            name.to_string(),
            description.to_string(),
            sign_content(&c, author),
            code.to_string(),
        )
    };
    let mut cases: Vec<(String, String, Vec<u8>, String)> = Vec::new();

    bad(
        "too_large",
        "one byte over the record limit",
        vec![0u8; RECORD_BYTES_MAX + 1],
        "record.too_large",
    );
    let mut trailing = good_bytes.clone();
    trailing.push(0);
    bad(
        "trailing_byte",
        "a zero byte after the signature",
        trailing,
        "record.trailing_bytes",
    );
    bad(
        "truncated",
        "the last signature byte is missing",
        good_bytes[..good_bytes.len() - 1].to_vec(),
        "record.malformed",
    );
    bad("empty", "no bytes at all", Vec::new(), "record.malformed");
    let mut overlong = vec![good_bytes[0] | 0x80, good_bytes[1] | 0x80, 0x00];
    overlong.extend_from_slice(&good_bytes[2..]);
    bad(
        "overlong_length",
        "the content length written as an overlong varint",
        overlong,
        "record.non_canonical",
    );
    let mut sig_flip = good_bytes.clone();
    let last = sig_flip.len() - 1;
    sig_flip[last] ^= 0x01;
    bad(
        "signature_bit_flipped",
        "one bit of S changed",
        sig_flip,
        "signature.invalid",
    );
    let mut r_flip = good_bytes.clone();
    r_flip[last - 40] ^= 0x01;
    bad(
        "signature_r_flipped",
        "one bit of R changed",
        r_flip,
        "signature.invalid",
    );
    let other = samples::signing_key(&mut rng);
    bad(
        "signed_by_other_key",
        "valid content signed by a key that is not the author",
        sign_content(&good, &other),
        "signature.invalid",
    );
    let mut no_domain = postcard::to_stdvec(&good).unwrap_or_default();
    let plain_sig = author.sign(&no_domain).to_bytes();
    let mut undomained = vec![];
    undomained.extend_from_slice(&sign_raw(&no_domain, author)[..]);
    let n = undomained.len();
    undomained[n - 64..].copy_from_slice(&plain_sig);
    bad(
        "signature_without_domain",
        "signature over the content without the kim/record/v1 prefix",
        undomained,
        "signature.invalid",
    );
    no_domain.clear();
    // Identity point: a small-order (weak) key.
    let mut weak = good.clone();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    weak.author = PublicKey(identity);
    bad(
        "weak_author_key",
        "author is the identity point (small order)",
        sign_content(&weak, author),
        "signature.weak_key",
    );
    let mut not_point = good.clone();
    // The first y coordinate (as [b; 32]) for which no curve point exists.
    let off_curve = (0u8..=255)
        .map(|b| [b; 32])
        .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
        .unwrap_or([0xff; 32]);
    not_point.author = PublicKey(off_curve);
    bad(
        "author_not_a_point",
        "author bytes do not decode to a curve point",
        sign_content(&not_point, author),
        "signature.bad_key",
    );
    let mut wrong_format = postcard::to_stdvec(&good).unwrap_or_default();
    wrong_format[0] = 2;
    bad(
        "format_2",
        "content format 2 is not supported by v1 readers",
        sign_raw(&wrong_format, author),
        "record.unsupported_format",
    );
    let mut overlong_rev = postcard::to_stdvec(&Content {
        revision: 0,
        ..good.clone()
    })
    .unwrap_or_default();
    // Content = format(1) ‖ federation(32) ‖ author(32) ‖ kind(1) ‖ key(len+bytes) ‖ revision …
    let rev_at = 1 + 32 + 32 + 1 + 1 + good.key.len();
    overlong_rev.splice(rev_at..rev_at + 1, [0x80, 0x00]);
    bad(
        "overlong_revision",
        "revision 0 written as an overlong varint inside signed content",
        sign_raw(&overlong_rev, author),
        "record.non_canonical",
    );
    let mut bad_bool = postcard::to_stdvec(&good).unwrap_or_default();
    // Flip the anonymous flag's byte to 2, which is no bool; it sits before the offer's
    // organisation, nuts and languages at the end of the body.
    let tail = postcard::to_stdvec(&(
        match &good.body {
            Body::Cooperation(c) => c.organisation.clone(),
            _ => None,
        },
        match &good.body {
            Body::Cooperation(c) => c.nuts.clone(),
            _ => String::new(),
        },
        match &good.body {
            Body::Cooperation(c) => c.languages.clone(),
            _ => vec![],
        },
    ))
    .unwrap_or_default();
    let flag_at = bad_bool.len() - tail.len() - 1;
    bad_bool[flag_at] = 2;
    bad(
        "bad_bool",
        "a boolean encoded as 2",
        sign_raw(&bad_bool, author),
        "record.malformed",
    );

    cases.push(mutate(
        "wrong_federation",
        "signed for another federation",
        "record.wrong_federation",
        &|c| c.federation = FederationId([0x42; 32]),
    ));
    cases.push(mutate(
        "created_in_future",
        "created-at 5 minutes and 1 ms after the receiver's clock",
        "record.created_in_future",
        &|c| c.created_at_ms = NOW_MS + 300_001,
    ));
    cases.push(mutate(
        "expiry_before_creation",
        "expires before it was created",
        "record.expiry_before_creation",
        &|c| c.expires_at_ms = Some(c.created_at_ms - 1),
    ));
    cases.push(mutate(
        "revision_too_large",
        "revision above 2^53",
        "record.revision_too_large",
        &|c| c.revision = REVISION_MAX + 1,
    ));
    cases.push(mutate(
        "item_key_uppercase",
        "item keys are lowercase",
        "record.bad_item_key",
        &|c| c.key = "Offer-1".into(),
    ));
    cases.push(mutate(
        "item_key_empty",
        "item key is empty",
        "record.bad_item_key",
        &|c| c.key = String::new(),
    ));
    cases.push(mutate(
        "kind_mismatch",
        "kind says knowledge, body is an offer",
        "record.kind_mismatch",
        &|c| c.kind = Kind::Knowledge,
    ));
    cases.push(mutate(
        "tombstone_for_endorsement",
        "membership records cannot be withdrawn",
        "record.tombstone_not_allowed",
        &|c| {
            c.kind = Kind::Endorsement;
            c.body = Body::Tombstone(Tombstone::default());
        },
    ));
    cases.push(mutate(
        "missing_title",
        "an offer needs a title",
        "field.missing",
        &on_offer(|o| o.title = "  ".into()),
    ));
    cases.push(mutate(
        "title_too_long",
        "301 characters of title",
        "field.too_long",
        &on_offer(|o| o.title = "é".repeat(301)),
    ));
    cases.push(mutate(
        "control_character",
        "a NUL in the summary",
        "field.control_character",
        &on_offer(|o| o.summary.push('\0')),
    ));
    cases.push(mutate(
        "too_many_keywords",
        "33 technology keywords",
        "field.too_many_items",
        &on_offer(|o| o.technology_keywords = (0..33).map(|i| format!("k{i}")).collect()),
    ));
    cases.push(mutate(
        "duplicate_keyword",
        "the same keyword twice",
        "field.duplicate_item",
        &on_offer(|o| o.technology_keywords = vec!["sensors".into(), "sensors".into()]),
    ));
    cases.push(mutate(
        "unknown_nuts",
        "AT99 is no NUTS 2024 region",
        "code.unknown_nuts",
        &on_offer(|o| o.nuts = "AT99".into()),
    ));
    cases.push(mutate(
        "old_nuts_code",
        "SI01 existed in NUTS 2013, not in NUTS 2024",
        "code.unknown_nuts",
        &on_offer(|o| o.nuts = "SI01".into()),
    ));
    cases.push(mutate(
        "unknown_nace",
        "99.99 is no NACE Rev. 2.1 class",
        "code.unknown_nace",
        &on_offer(|o| o.nace = vec!["99.99".into()]),
    ));
    cases.push(mutate(
        "unknown_country",
        "XX is no ISO 3166-1 country",
        "code.unknown_country",
        &on_offer(|o| o.partner_sought.countries = vec!["XX".into()]),
    ));
    cases.push(mutate(
        "greece_as_el",
        "ISO writes Greece as GR; EL is NUTS only",
        "code.unknown_country",
        &on_offer(|o| o.partner_sought.countries = vec!["EL".into()]),
    ));
    cases.push(mutate(
        "unknown_language",
        "xx is no ISO 639-1 language",
        "code.unknown_language",
        &on_offer(|o| o.languages = vec!["xx".into()]),
    ));
    cases.push(mutate(
        "impossible_date",
        "30 February",
        "date.invalid",
        &on_offer(|o| {
            o.eoi_deadline = Some(Date {
                year: 2027,
                month: 2,
                day: 30,
            })
        }),
    ));
    cases.push(mutate(
        "deadline_after_expiry",
        "deadline for expressions of interest after the offer expires",
        "date.order",
        &|c| {
            c.expires_at_ms = Some(NOW_MS + 86_400_000);
            if let Body::Cooperation(o) = &mut c.body {
                o.eoi_deadline = Date::new(2027, 6, 1);
            }
        },
    ));
    cases.push(mutate(
        "anonymous_with_email",
        "anonymous offer with an e-mail address",
        "anonymity.contact_data",
        &on_offer(|o| {
            o.anonymous = true;
            o.organisation = None;
            o.description.push_str(" Contact: anna@firma.at");
        }),
    ));
    cases.push(mutate(
        "anonymous_with_phone",
        "anonymous offer with a phone number",
        "anonymity.contact_data",
        &on_offer(|o| {
            o.anonymous = true;
            o.organisation = None;
            o.summary = "Call +43 316 1234567 for details".into();
        }),
    ));
    cases.push(mutate(
        "anonymous_with_link",
        "anonymous offer with a web link",
        "anonymity.contact_data",
        &on_offer(|o| {
            o.anonymous = true;
            o.organisation = None;
            o.innovation = "see www.firma.at".into();
        }),
    ));
    cases.push(mutate(
        "anonymous_with_organisation",
        "anonymous offer naming its organisation",
        "anonymity.contact_data",
        &on_offer(|o| {
            o.anonymous = true;
            o.organisation = Some(ItemRef {
                region: PublicKey([1; 32]),
                kind: Kind::Organisation,
                key: "org-1".into(),
            });
        }),
    ));
    let project = |f: &dyn Fn(&mut Project)| {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut p = samples::project(&mut rng);
        f(&mut p);
        move |c: &mut Content| {
            c.kind = Kind::Project;
            c.expires_at_ms = None;
            c.body = Body::Project(p.clone());
        }
    };
    cases.push(mutate(
        "project_two_leads",
        "two lead partners",
        "project.lead_partner",
        &project(&|p| p.participants[1].role = ParticipantRole::LeadPartner),
    ));
    cases.push(mutate(
        "project_no_lead",
        "no lead partner",
        "project.lead_partner",
        &project(&|p| p.participants[0].role = ParticipantRole::Partner),
    ));
    cases.push(mutate(
        "project_ends_before_start",
        "end before start",
        "date.order",
        &project(&|p| p.end = Date::new(2020, 1, 1)),
    ));
    let profile = {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        samples::region_profile(&mut rng, 0)
    };
    let p1 = profile.clone();
    cases.push(mutate(
        "profile_wrong_key",
        "a region profile's key must be \"profile\"",
        "record.bad_item_key",
        &move |c| {
            c.kind = Kind::RegionProfile;
            c.expires_at_ms = None;
            c.body = Body::RegionProfile(p1.clone());
        },
    ));
    let p2 = profile.clone();
    cases.push(mutate(
        "profile_nuts_other_country",
        "NUTS SI03 in a profile that says Austria",
        "field.bad_value",
        &move |c| {
            c.kind = Kind::RegionProfile;
            c.key = "profile".into();
            c.expires_at_ms = None;
            let mut p = p2.clone();
            p.nuts = vec!["SI03".into()];
            c.body = Body::RegionProfile(p);
        },
    ));
    let knowledge = |f: &dyn Fn(&mut Knowledge)| {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut k = samples::knowledge(&mut rng);
        f(&mut k);
        move |c: &mut Content| {
            c.kind = Kind::Knowledge;
            c.expires_at_ms = None;
            c.body = Body::Knowledge(k.clone());
        }
    };
    cases.push(mutate(
        "knowledge_missing_abstract",
        "knowledge items need an abstract",
        "field.missing",
        &knowledge(&|k| k.abstract_text.clear()),
    ));
    cases.push(mutate(
        "attachment_bad_media_type",
        "media type without a subtype",
        "field.bad_value",
        &knowledge(&|k| k.attachments[0].media_type = "pdf".into()),
    ));
    cases.push(mutate(
        "attachment_empty",
        "an attachment of zero bytes",
        "field.bad_value",
        &knowledge(&|k| k.attachments[0].size_bytes = 0),
    ));
    cases.push(mutate(
        "self_endorsement",
        "a region endorses itself",
        "field.bad_value",
        &move |c| {
            c.kind = Kind::Endorsement;
            c.expires_at_ms = None;
            c.body = Body::Endorsement(Endorsement {
                state,
                candidate: c.author,
                join_request: join_id,
            });
        },
    ));
    cases.push(mutate(
        "vote_against_self",
        "a region votes itself out",
        "field.bad_value",
        &move |c| {
            c.kind = Kind::RemovalVote;
            c.expires_at_ms = None;
            c.body = Body::RemovalVote(RemovalVote {
                state,
                target: c.author,
                reason: "x".into(),
            });
        },
    ));
    let stolen = KeyRotation::new(&federation, &PublicKey([3; 32]), &new_key);
    cases.push(mutate(
        "rotation_bad_proof",
        "the new key's proof was made for another old key",
        "membership.bad_rotation_proof",
        &move |c| {
            c.kind = Kind::KeyRotation;
            c.expires_at_ms = None;
            c.body = Body::KeyRotation(stolen.clone());
        },
    ));
    let mut unsigned_charter = charter_record.clone();
    unsigned_charter.founder_signatures.pop();
    cases.push(mutate(
        "charter_missing_founder_signature",
        "one founder did not sign the charter",
        "membership.bad_founder_signature",
        &move |c| {
            c.kind = Kind::Charter;
            c.key = "charter".into();
            c.expires_at_ms = None;
            c.body = Body::Charter(unsigned_charter.clone());
        },
    ));
    let mut forged = charter_record.clone();
    forged.founder_signatures[1].signature = SignatureBytes([9; 64]);
    cases.push(mutate(
        "charter_forged_founder_signature",
        "a founder signature is garbage",
        "membership.bad_founder_signature",
        &move |c| {
            c.kind = Kind::Charter;
            c.key = "charter".into();
            c.expires_at_ms = None;
            c.body = Body::Charter(forged.clone());
        },
    ));
    let other_charter = {
        let mut ch = charter.clone();
        ch.name = "Another federation".into();
        let bytes = ch.to_bytes().unwrap_or_default();
        CharterRecord {
            founder_signatures: founders
                .iter()
                .map(|k| CharterRecord::founder_sign(&bytes, k))
                .collect(),
            charter: bytes,
        }
    };
    cases.push(mutate(
        "charter_of_other_federation",
        "a correctly signed charter whose hash is not this federation's id",
        "membership.charter_hash_mismatch",
        &move |c| {
            c.kind = Kind::Charter;
            c.key = "charter".into();
            c.expires_at_ms = None;
            c.body = Body::Charter(other_charter.clone());
        },
    ));
    for (name, description, bytes, code) in cases {
        invalid.push(invalid_entry(
            &name,
            &description,
            &bytes,
            &author_pk,
            &code,
        ));
    }
    Vectors {
        federation,
        valid,
        invalid,
    }
}

fn on_offer(f: impl Fn(&mut Cooperation)) -> impl Fn(&mut Content) {
    move |c: &mut Content| {
        if let Body::Cooperation(o) = &mut c.body {
            f(o)
        }
    }
}

fn sample_offer(rng: &mut ChaCha8Rng, federation: FederationId, author: PublicKey) -> Content {
    let mut content = samples::content(
        rng,
        federation,
        author,
        Kind::Cooperation,
        "offer-base",
        NOW_MS - 60_000,
    );
    if let Body::Cooperation(c) = &mut content.body {
        c.anonymous = false;
        c.eoi_deadline = Date::new(2027, 3, 31);
    }
    content
}

/// The files as written to `protocol/vectors/`.
pub fn files() -> Vec<(&'static str, String)> {
    let v = generate();
    let header = |kind: &str, items: &Vec<Value>| {
        json!({
            "description": format!("KIM protocol v1 {kind} record vectors; see SPEC.md section Test vectors"),
            "generator": "cargo run -p kim-protocol --example gen_vectors",
            "federation": v.federation.to_hex(),
            "now_ms": NOW_MS,
            "vectors": items,
        })
    };
    let pretty = |value: Value| serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    vec![
        ("valid.json", pretty(header("valid", &v.valid))),
        ("invalid.json", pretty(header("invalid", &v.invalid))),
    ]
}
