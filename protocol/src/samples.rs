//! Realistic sample records from a caller-supplied RNG: real NUTS and NACE codes, plausible
//! multilingual texts. Test vectors, property tests, benchmarks and the demo draw from here, so
//! they all exercise the same shapes real users produce. Deterministic for a given RNG state.

use ed25519_dalek::SigningKey;
use rand_core::Rng;

use crate::bytes::{FederationId, Hash32, PublicKey, RecordId};
use crate::envelope::{Body, Content, FORMAT_VERSION, Kind};
use crate::types::*;

/// (NUTS 2 code, country, region name, language) of regions in the former CADSES area.
pub const REGIONS: &[(&str, &str, &str, &str)] = &[
    ("AT22", "AT", "Steiermark", "de"),
    ("AT13", "AT", "Wien", "de"),
    ("SI03", "SI", "Vzhodna Slovenija", "sl"),
    ("SI04", "SI", "Zahodna Slovenija", "sl"),
    ("DED2", "DE", "Dresden", "de"),
    ("DE30", "DE", "Berlin", "de"),
    ("ITH3", "IT", "Veneto", "it"),
    ("ITC4", "IT", "Lombardia", "it"),
    ("EL52", "GR", "Kentriki Makedonia", "el"),
    ("PL21", "PL", "Małopolskie", "pl"),
    ("CZ06", "CZ", "Jihovýchod", "cs"),
    ("SK02", "SK", "Západné Slovensko", "sk"),
    ("HU11", "HU", "Budapest", "hu"),
    ("BG41", "BG", "Yugozapaden", "bg"),
    ("RO11", "RO", "Nord-Vest", "ro"),
    ("HR05", "HR", "Grad Zagreb", "hr"),
];

/// NACE Rev. 2.1 codes with the themes that go with them.
pub const SECTORS: &[(&str, &[&str])] = &[
    ("26.11", &["electronic components", "sensors", "MEMS"]),
    ("62.10", &["software", "machine learning", "data platforms"]),
    ("28.29", &["machinery", "automation", "robotics"]),
    ("10.51", &["dairy", "food processing", "cheese"]),
    (
        "35.11",
        &["renewable energy", "photovoltaics", "smart grid"],
    ),
    ("71.12", &["engineering", "building information modelling"]),
    ("85.59", &["vocational training", "e-learning"]),
    (
        "01.11",
        &["organic farming", "cereals", "precision agriculture"],
    ),
    ("20.59", &["chemicals", "bio-based coatings"]),
    ("27.11", &["electric motors", "e-mobility"]),
    ("29.10", &["automotive", "lightweight components"]),
    ("33.12", &["maintenance", "industrial repair"]),
    ("55.10", &["tourism", "hotels", "rural tourism"]),
    ("46.90", &["wholesale", "distribution"]),
];

const OFFER_TITLES: &[&str] = &[
    "Low-power wireless sensor platform for structural health monitoring",
    "Predictive maintenance software for small manufacturing lines",
    "Energieeffiziente Trocknungsanlage für Holz und Biomasse",
    "Partner sought for a cross-border dairy quality label",
    "Open-source training toolkit for rural tourism entrepreneurs",
    "Recycling process for bio-based coatings seeks licensee",
    "Sistema di tracciabilità per filiere agroalimentari",
    "Digitalna platforma za upravljanje lokalnih energetskih skupnosti",
    "Lightweight aluminium parts for e-bike frames: subcontracting offered",
    "Distributor wanted for precision-agriculture drones in the Balkans",
];

const SUMMARIES: &[&str] = &[
    "A regional SME has developed and field-tested the solution with two municipalities and seeks partners to adapt it to new markets.",
    "Ein steirisches KMU bietet seine erprobte Technologie zur Lizenzierung an und sucht Partner für die gemeinsame Weiterentwicklung.",
    "The research group offers its know-how and laboratory facilities for joint applied research under Interreg and Horizon Europe calls.",
    "Podjetje išče partnerje za skupni razvoj in trženje v srednji in jugovzhodni Evropi.",
    "L'azienda cerca partner industriali per la produzione in piccola serie e la distribuzione nei mercati dell'Europa centrale.",
];

const KNOWLEDGE_TITLES: &[&str] = &[
    "Good practice: one-stop shop for SME internationalisation",
    "Training manual: writing a successful Interreg application",
    "Survey 2026: innovation needs of rural micro-enterprises",
    "Leitfaden: Technologietransfer zwischen Hochschulen und KMU",
    "Toolkit for regional smart-specialisation monitoring",
];

fn pick<'a, T, R: Rng + ?Sized>(rng: &mut R, items: &'a [T]) -> &'a T {
    let i = (rng.next_u64() % items.len() as u64) as usize;
    &items[i]
}

fn below<R: Rng + ?Sized>(rng: &mut R, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// A signing key drawn from the RNG.
pub fn signing_key<R: Rng + ?Sized>(rng: &mut R) -> SigningKey {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The public key of a signing key, as the protocol carries it.
pub fn public_key(key: &SigningKey) -> PublicKey {
    PublicKey(key.verifying_key().to_bytes())
}

/// A region profile for one of [`REGIONS`].
pub fn region_profile<R: Rng + ?Sized>(rng: &mut R, index: usize) -> RegionProfile {
    let (nuts, country, name, lang) = REGIONS[index % REGIONS.len()];
    let port = 7700 + below(rng, 200);
    RegionProfile {
        name: name.to_string(),
        nuts: vec![nuts.to_string()],
        country: country.to_string(),
        languages: if lang == "en" {
            vec!["en".into()]
        } else {
            vec![lang.into(), "en".into()]
        },
        agency: format!("Regional Development Agency {name}"),
        contact: PublicContact {
            email: Some(format!("kim@rda-{}.example", nuts.to_lowercase())),
            phone: None,
            website: Some(format!("https://rda-{}.example", nuts.to_lowercase())),
        },
        nodes: vec![NodeAddress {
            peer_id: format!("12D3KooW{:016x}", rng.next_u64()),
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{port}")],
        }],
        description: format!("The KIM node of {name}."),
    }
}

/// A co-operation offer or request.
pub fn cooperation<R: Rng + ?Sized>(rng: &mut R, created: Date) -> Cooperation {
    let (nuts, country, _, lang) = *pick(rng, REGIONS);
    let (nace, themes) = *pick(rng, SECTORS);
    let kinds = [
        CooperationKind::BusinessOffer,
        CooperationKind::BusinessRequest,
        CooperationKind::TechnologyOffer,
        CooperationKind::TechnologyRequest,
        CooperationKind::ResearchRequest,
        CooperationKind::KnowledgeOffer,
        CooperationKind::KnowledgeRequest,
    ];
    let anonymous = below(rng, 4) == 0;
    let other_country = pick(rng, REGIONS).1;
    Cooperation {
        kind: *pick(rng, &kinds),
        title: pick(rng, OFFER_TITLES).to_string(),
        summary: pick(rng, SUMMARIES).to_string(),
        description: format!(
            "{} The offer concerns {} and related services. Stage reached after {} years of development.",
            pick(rng, SUMMARIES),
            themes.join(", "),
            1 + below(rng, 8)
        ),
        innovation: "Lower cost than established solutions and proven in real operation.".into(),
        stage: *pick(
            rng,
            &[
                DevelopmentStage::Prototype,
                DevelopmentStage::FieldTested,
                DevelopmentStage::OnTheMarket,
            ],
        ),
        ipr: *pick(
            rng,
            &[
                IprStatus::None,
                IprStatus::PatentGranted,
                IprStatus::SecretKnowHow,
            ],
        ),
        technology_keywords: themes.iter().take(2).map(|s| s.to_string()).collect(),
        market_keywords: vec!["SMEs".into(), "public sector".into()],
        nace: vec![nace.to_string()],
        partnership_types: vec![
            *pick(
                rng,
                &[
                    PartnershipType::Licence,
                    PartnershipType::TechnicalCooperation,
                    PartnershipType::ResearchCooperation,
                ],
            ),
            PartnershipType::Commercial,
        ],
        partner_sought: PartnerSought {
            role: "An industrial partner able to pilot the solution.".into(),
            org_types: vec![OrganisationType::Sme],
            sizes: vec![SizeClass::Small, SizeClass::Medium],
            countries: if country == other_country {
                vec![]
            } else {
                vec![other_country.to_string()]
            },
            regions: vec![],
        },
        eoi_deadline: Date::new(created.year + 1, created.month, 1),
        anonymous,
        organisation: None,
        nuts: nuts.to_string(),
        languages: vec![lang.to_string(), "en".into()],
    }
}

/// An organisation profile.
pub fn organisation<R: Rng + ?Sized>(rng: &mut R) -> Organisation {
    let (nuts, country, region, lang) = *pick(rng, REGIONS);
    let (nace, themes) = *pick(rng, SECTORS);
    let staff = 1 + below(rng, 400) as u32;
    Organisation {
        name: Some(format!("{} {} GmbH", region, themes[0])),
        anonymous: false,
        org_type: OrganisationType::Sme,
        size: SizeClass::from_eu_definition(staff, u64::from(staff) * 120_000, 0),
        nace: vec![nace.to_string()],
        nuts: Some(nuts.to_string()),
        country: country.to_string(),
        year_established: Some(1950 + below(rng, 75) as u16),
        languages: vec![lang.to_string(), "en".into()],
        description: format!("Works on {}.", themes.join(", ")),
        website: None,
    }
}

/// A project with a lead partner and two partners.
pub fn project<R: Rng + ?Sized>(rng: &mut R) -> Project {
    let start =
        Date::new(2024 + below(rng, 3) as u16, 1 + below(rng, 12) as u8, 1).unwrap_or(Date {
            year: 2025,
            month: 1,
            day: 1,
        });
    let participants = (0..3)
        .map(|i| {
            let (nuts, _, region, _) = *pick(rng, REGIONS);
            Participant {
                name: format!("Agency of {region}"),
                role: if i == 0 {
                    ParticipantRole::LeadPartner
                } else {
                    ParticipantRole::Partner
                },
                nuts: nuts.to_string(),
                organisation: None,
            }
        })
        .collect();
    Project {
        acronym: format!("SMART-{}", below(rng, 1000)),
        title: "Smart regions for SME co-operation across Central Europe".into(),
        summary: pick(rng, SUMMARIES).to_string(),
        programme: "Interreg Central Europe".into(),
        call: Some("Call 3".into()),
        themes: vec!["SME competitiveness".into(), "innovation".into()],
        status: ProjectStatus::Running,
        start,
        end: Date::new(start.year + 3, start.month, 1),
        budget_eur: Some(500_000 + below(rng, 3_000_000)),
        participants,
    }
}

/// A knowledge item with one attachment.
pub fn knowledge<R: Rng + ?Sized>(rng: &mut R) -> Knowledge {
    let (nuts, _, _, lang) = *pick(rng, REGIONS);
    let mut hash = [0u8; 32];
    rng.fill_bytes(&mut hash);
    Knowledge {
        category: *pick(
            rng,
            &[
                KnowledgeCategory::GoodPractice,
                KnowledgeCategory::TrainingManual,
                KnowledgeCategory::SurveyResult,
                KnowledgeCategory::Toolkit,
            ],
        ),
        title: pick(rng, KNOWLEDGE_TITLES).to_string(),
        abstract_text: pick(rng, SUMMARIES).to_string(),
        themes: vec!["internationalisation".into()],
        keywords: vec!["SME support".into(), "cross-border".into()],
        regions: vec![nuts.to_string()],
        languages: vec![lang.to_string()],
        licence: "CC-BY-4.0".into(),
        authors: vec!["KIM team".into()],
        project: None,
        attachments: vec![Attachment {
            name: "manual.pdf".into(),
            media_type: "application/pdf".into(),
            size_bytes: 10_000 + below(rng, 5_000_000),
            blake3: Hash32(hash),
        }],
    }
}

/// A body of the given shared (non-membership) kind.
pub fn body<R: Rng + ?Sized>(rng: &mut R, kind: Kind, author: PublicKey, created: Date) -> Body {
    let offer = ItemRef {
        region: author,
        kind: Kind::Cooperation,
        key: "offer-1".into(),
    };
    match kind {
        Kind::RegionProfile => {
            let index = below(rng, REGIONS.len() as u64) as usize;
            Body::RegionProfile(region_profile(rng, index))
        }
        Kind::Organisation => Body::Organisation(organisation(rng)),
        Kind::Project => Body::Project(project(rng)),
        Kind::Knowledge => Body::Knowledge(knowledge(rng)),
        Kind::Interest => Body::Interest(ExpressionOfInterest {
            offer,
            offer_record: RecordId([7; 32]),
            cooperation_sought: vec![PartnershipType::TechnicalCooperation],
            message: "We would like to test your platform in our production line.".into(),
            questions: "Is a pilot licence possible?".into(),
            presentation: "Machine builder, 80 staff.".into(),
        }),
        Kind::Outcome => Body::Outcome(Outcome {
            offer,
            interest: RecordId([9; 32]),
            agreement: AgreementType::TechnicalCooperation,
            date: created,
            nace: Some("28.29".into()),
            jobs_created: Some(3),
        }),
        _ => Body::Cooperation(cooperation(rng, created)),
    }
}

/// A complete content for a shared kind, authored by `author`, made at `now_ms`.
pub fn content<R: Rng + ?Sized>(
    rng: &mut R,
    federation: FederationId,
    author: PublicKey,
    kind: Kind,
    key: &str,
    now_ms: u64,
) -> Content {
    let days = now_ms / 86_400_000;
    let created = date_from_days(days as i64);
    let body = body(rng, kind, author, created);
    let key = if kind == Kind::RegionProfile {
        "profile".to_string()
    } else {
        key.to_string()
    };
    Content {
        format: FORMAT_VERSION,
        federation,
        author,
        kind,
        key,
        revision: 1,
        created_at_ms: now_ms,
        expires_at_ms: (kind == Kind::Cooperation).then_some(now_ms + 400 * 86_400_000),
        body,
    }
}

/// The civil date of a day count since 1970-01-01 (inverse of [`Date::days_since_epoch`]).
pub fn date_from_days(days: i64) -> Date {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    Date { year, month, day }
}
