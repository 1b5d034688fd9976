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

/// A charter whose founders are `keys` ("region 0", "region 1", … in AT22), admitting and
/// removing by majority: the federation tests and benchmarks sign their records in.
pub fn charter(name: &str, keys: &[SigningKey]) -> crate::membership::Charter {
    use crate::membership::{Charter, Founder, ThresholdRule};
    Charter {
        name: name.into(),
        founders: keys
            .iter()
            .enumerate()
            .map(|(i, k)| Founder {
                key: public_key(k),
                name: format!("region {i}"),
                nuts: vec!["AT22".into()],
            })
            .collect(),
        admission: ThresholdRule::Majority,
        removal: ThresholdRule::Majority,
        created_at_ms: 0,
    }
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

// ---------------------------------------------------------------------------------------------
// Synthetic records at scale, for benchmarks and the demo.
//
// Unlike the fixed pools above (which test vectors depend on), these draw from weighted
// distributions: regions of the former CADSES area weighted towards the pilot regions, sectors
// weighted by how often they appear in partnering databases, texts in English, German,
// Slovenian, Italian and Polish assembled from phrase pools, keywords drawn per sector, and
// offers and requests in equal numbers. Every code is real (a test checks them against
// `codes`); NUTS 3 regions are taken from the embedded NUTS table.

/// A region records are drawn from: its NUTS 2 code, the language its agency writes in, and
/// how many records it produces relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticRegion {
    pub nuts: &'static str,
    pub language: &'static str,
    pub weight: u32,
}

/// A sector records are drawn from: a NACE Rev. 2.1 class, its weight, its name in the
/// [`SYNTHETIC_LANGUAGES`] (same order), and the keywords that go with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSector {
    pub nace: &'static str,
    pub weight: u32,
    pub label: [&'static str; 5],
    pub technology: &'static [&'static str],
    pub markets: &'static [&'static str],
}

/// The languages synthetic texts are written in, in the order of [`SyntheticSector::label`].
pub const SYNTHETIC_LANGUAGES: [&str; 5] = ["en", "de", "sl", "it", "pl"];

const fn region(nuts: &'static str, language: &'static str, weight: u32) -> SyntheticRegion {
    SyntheticRegion {
        nuts,
        language,
        weight,
    }
}

/// Regions of the former CADSES area; the four pilot-like regions weigh most.
pub const SYNTHETIC_REGIONS: &[SyntheticRegion] = &[
    region("AT22", "de", 8),
    region("AT21", "de", 3),
    region("AT13", "de", 5),
    region("AT12", "de", 3),
    region("AT31", "de", 3),
    region("AT34", "de", 2),
    region("SI04", "sl", 7),
    region("SI03", "sl", 5),
    region("DED2", "de", 6),
    region("DED4", "de", 3),
    region("DED5", "de", 3),
    region("DEE0", "de", 3),
    region("DEG0", "de", 2),
    region("DE30", "de", 4),
    region("DE40", "de", 2),
    region("ITH3", "it", 6),
    region("ITH4", "it", 4),
    region("ITH5", "it", 3),
    region("ITC4", "it", 4),
    region("ITF4", "it", 2),
    region("EL52", "en", 3),
    region("EL30", "en", 3),
    region("PL21", "pl", 5),
    region("PL22", "pl", 4),
    region("PL41", "pl", 3),
    region("PL51", "pl", 3),
    region("PL91", "pl", 3),
    region("CZ01", "en", 3),
    region("CZ06", "en", 3),
    region("SK01", "en", 2),
    region("SK02", "en", 2),
    region("HU11", "en", 3),
    region("HU21", "en", 2),
    region("BG41", "en", 2),
    region("RO11", "en", 2),
    region("RO42", "en", 2),
    region("HR05", "en", 3),
    region("HR03", "en", 2),
];

/// Sectors with their names in en, de, sl, it, pl and their keywords.
pub const SYNTHETIC_SECTORS: &[SyntheticSector] = &[
    SyntheticSector {
        nace: "62.10",
        weight: 10,
        label: [
            "software development",
            "Softwareentwicklung",
            "razvoj programske opreme",
            "sviluppo software",
            "tworzenie oprogramowania",
        ],
        technology: &[
            "software",
            "machine learning",
            "data platforms",
            "cloud computing",
            "cybersecurity",
            "internet of things",
            "artificial intelligence",
            "mobile applications",
        ],
        markets: &[
            "manufacturing industry",
            "public administration",
            "SMEs",
            "healthcare",
            "logistics",
        ],
    },
    SyntheticSector {
        nace: "28.29",
        weight: 8,
        label: [
            "machinery and automation",
            "Maschinenbau und Automatisierung",
            "strojegradnja in avtomatizacija",
            "macchinari e automazione",
            "maszyny i automatyka",
        ],
        technology: &[
            "automation",
            "robotics",
            "industrial control",
            "predictive maintenance",
            "sensors",
            "hydraulics",
            "CNC machining",
        ],
        markets: &[
            "manufacturing industry",
            "automotive suppliers",
            "food industry",
            "packaging",
        ],
    },
    SyntheticSector {
        nace: "26.11",
        weight: 5,
        label: [
            "electronic components",
            "elektronische Bauteile",
            "elektronske komponente",
            "componenti elettronici",
            "komponenty elektroniczne",
        ],
        technology: &[
            "sensors",
            "MEMS",
            "embedded systems",
            "printed circuit boards",
            "low-power electronics",
            "internet of things",
        ],
        markets: &[
            "automotive suppliers",
            "medical devices",
            "smart buildings",
            "consumer electronics",
        ],
    },
    SyntheticSector {
        nace: "10.51",
        weight: 5,
        label: [
            "dairy products",
            "Milchprodukte",
            "mlečni izdelki",
            "prodotti lattiero-caseari",
            "produkty mleczarskie",
        ],
        technology: &[
            "food processing",
            "cheese",
            "food safety",
            "traceability",
            "packaging",
        ],
        markets: &["retail", "food service", "export markets", "organic food"],
    },
    SyntheticSector {
        nace: "01.11",
        weight: 5,
        label: [
            "organic farming and cereals",
            "ökologischer Landbau und Getreide",
            "ekološko kmetijstvo in žita",
            "agricoltura biologica e cereali",
            "rolnictwo ekologiczne i zboża",
        ],
        technology: &[
            "precision agriculture",
            "organic farming",
            "drones",
            "soil monitoring",
            "irrigation",
        ],
        markets: &["farmers", "cooperatives", "food industry", "rural areas"],
    },
    SyntheticSector {
        nace: "35.11",
        weight: 6,
        label: [
            "renewable energy",
            "erneuerbare Energie",
            "obnovljivi viri energije",
            "energie rinnovabili",
            "energia odnawialna",
        ],
        technology: &[
            "photovoltaics",
            "smart grid",
            "energy storage",
            "biomass",
            "heat pumps",
            "hydrogen",
        ],
        markets: &[
            "energy communities",
            "municipalities",
            "utilities",
            "industry",
        ],
    },
    SyntheticSector {
        nace: "71.12",
        weight: 5,
        label: [
            "engineering consultancy",
            "Ingenieurdienstleistungen",
            "inženirske storitve",
            "servizi di ingegneria",
            "usługi inżynieryjne",
        ],
        technology: &[
            "building information modelling",
            "structural engineering",
            "energy efficiency",
            "simulation",
        ],
        markets: &["construction", "public infrastructure", "municipalities"],
    },
    SyntheticSector {
        nace: "85.59",
        weight: 4,
        label: [
            "vocational training",
            "berufliche Weiterbildung",
            "poklicno usposabljanje",
            "formazione professionale",
            "szkolenia zawodowe",
        ],
        technology: &[
            "e-learning",
            "vocational training",
            "digital skills",
            "blended learning",
        ],
        markets: &[
            "SMEs",
            "young people",
            "unemployed",
            "public employment services",
        ],
    },
    SyntheticSector {
        nace: "20.59",
        weight: 3,
        label: [
            "speciality chemicals",
            "Spezialchemie",
            "specialne kemikalije",
            "chimica speciale",
            "chemia specjalistyczna",
        ],
        technology: &[
            "bio-based coatings",
            "adhesives",
            "green chemistry",
            "recycling",
        ],
        markets: &[
            "construction",
            "furniture industry",
            "automotive suppliers",
            "packaging",
        ],
    },
    SyntheticSector {
        nace: "27.11",
        weight: 3,
        label: [
            "electric motors and e-mobility",
            "Elektromotoren und E-Mobilität",
            "elektromotorji in e-mobilnost",
            "motori elettrici e mobilità elettrica",
            "silniki elektryczne i elektromobilność",
        ],
        technology: &[
            "electric motors",
            "e-mobility",
            "power electronics",
            "battery management",
        ],
        markets: &["automotive suppliers", "public transport", "e-bikes"],
    },
    SyntheticSector {
        nace: "29.32",
        weight: 4,
        label: [
            "automotive components",
            "Automobilzulieferung",
            "avtomobilski deli",
            "componentistica auto",
            "części samochodowe",
        ],
        technology: &[
            "lightweight components",
            "aluminium casting",
            "composites",
            "quality control",
        ],
        markets: &["automotive suppliers", "e-bikes", "rail vehicles"],
    },
    SyntheticSector {
        nace: "33.12",
        weight: 2,
        label: [
            "industrial maintenance",
            "Industrieinstandhaltung",
            "industrijsko vzdrževanje",
            "manutenzione industriale",
            "utrzymanie ruchu",
        ],
        technology: &[
            "predictive maintenance",
            "condition monitoring",
            "industrial repair",
        ],
        markets: &["manufacturing industry", "energy sector", "utilities"],
    },
    SyntheticSector {
        nace: "55.10",
        weight: 4,
        label: [
            "hotels and rural tourism",
            "Hotellerie und ländlicher Tourismus",
            "hotelirstvo in podeželski turizem",
            "alberghi e turismo rurale",
            "hotelarstwo i turystyka wiejska",
        ],
        technology: &[
            "booking platforms",
            "sustainable tourism",
            "digital marketing",
        ],
        markets: &[
            "tourists",
            "rural areas",
            "cultural heritage",
            "cycling tourism",
        ],
    },
    SyntheticSector {
        nace: "46.90",
        weight: 3,
        label: [
            "wholesale and distribution",
            "Großhandel und Vertrieb",
            "trgovina na debelo in distribucija",
            "commercio all'ingrosso e distribuzione",
            "hurtownia i dystrybucja",
        ],
        technology: &["logistics", "e-commerce", "distribution"],
        markets: &[
            "retail",
            "export markets",
            "Western Balkans",
            "Central Europe",
        ],
    },
    SyntheticSector {
        nace: "72.10",
        weight: 5,
        label: [
            "applied research in engineering and natural sciences",
            "angewandte Forschung in Technik und Naturwissenschaften",
            "uporabne raziskave v tehniki in naravoslovju",
            "ricerca applicata in ingegneria e scienze naturali",
            "badania stosowane w naukach technicznych i przyrodniczych",
        ],
        technology: &[
            "materials science",
            "nanotechnology",
            "testing laboratory",
            "simulation",
            "biotechnology",
        ],
        markets: &["research organisations", "industry", "Horizon Europe"],
    },
    SyntheticSector {
        nace: "21.20",
        weight: 2,
        label: [
            "pharmaceutical preparations",
            "pharmazeutische Präparate",
            "farmacevtski izdelki",
            "preparati farmaceutici",
            "preparaty farmaceutyczne",
        ],
        technology: &["drug delivery", "biotechnology", "clinical trials"],
        markets: &["hospitals", "healthcare", "pharmacies"],
    },
    SyntheticSector {
        nace: "16.11",
        weight: 3,
        label: [
            "wood processing",
            "Holzverarbeitung",
            "predelava lesa",
            "lavorazione del legno",
            "przetwórstwo drewna",
        ],
        technology: &[
            "timber construction",
            "wood drying",
            "biomass",
            "CNC machining",
        ],
        markets: &["construction", "furniture industry", "export markets"],
    },
    SyntheticSector {
        nace: "31.00",
        weight: 2,
        label: [
            "furniture manufacturing",
            "Möbelherstellung",
            "proizvodnja pohištva",
            "produzione di mobili",
            "produkcja mebli",
        ],
        technology: &["furniture design", "CNC machining", "upholstery"],
        markets: &["retail", "hotels", "export markets"],
    },
    SyntheticSector {
        nace: "38.21",
        weight: 3,
        label: [
            "recycling of materials",
            "Wertstoffrecycling",
            "recikliranje materialov",
            "riciclo dei materiali",
            "recykling materiałów",
        ],
        technology: &[
            "recycling",
            "circular economy",
            "waste sorting",
            "plastic recycling",
        ],
        markets: &["municipalities", "packaging", "manufacturing industry"],
    },
    SyntheticSector {
        nace: "49.41",
        weight: 3,
        label: [
            "road freight and logistics",
            "Straßengüterverkehr und Logistik",
            "cestni tovorni promet in logistika",
            "trasporto merci su strada e logistica",
            "transport drogowy i logistyka",
        ],
        technology: &["logistics", "fleet management", "route optimisation"],
        markets: &["retail", "manufacturing industry", "cross-border trade"],
    },
    SyntheticSector {
        nace: "86.10",
        weight: 2,
        label: [
            "hospital and health services",
            "Krankenhaus- und Gesundheitsdienste",
            "bolnišnične in zdravstvene storitve",
            "servizi ospedalieri e sanitari",
            "usługi szpitalne i zdrowotne",
        ],
        technology: &[
            "telemedicine",
            "e-health",
            "medical devices",
            "ambient assisted living",
        ],
        markets: &["hospitals", "elderly care", "healthcare"],
    },
    SyntheticSector {
        nace: "74.11",
        weight: 2,
        label: [
            "industrial design",
            "Industriedesign",
            "industrijsko oblikovanje",
            "design industriale",
            "wzornictwo przemysłowe",
        ],
        technology: &["product design", "3D printing", "user experience"],
        markets: &["manufacturing industry", "consumer goods", "SMEs"],
    },
    SyntheticSector {
        nace: "11.02",
        weight: 3,
        label: [
            "wine production",
            "Weinherstellung",
            "proizvodnja vina",
            "produzione di vino",
            "produkcja wina",
        ],
        technology: &["winemaking", "traceability", "food safety"],
        markets: &["export markets", "wine tourism", "retail"],
    },
    SyntheticSector {
        nace: "70.20",
        weight: 3,
        label: [
            "management consultancy",
            "Unternehmensberatung",
            "svetovanje pri poslovanju",
            "consulenza aziendale",
            "doradztwo w zakresie zarządzania",
        ],
        technology: &[
            "business development",
            "internationalisation",
            "innovation management",
            "digital transformation",
        ],
        markets: &["SMEs", "start-ups", "public administration"],
    },
    SyntheticSector {
        nace: "43.21",
        weight: 2,
        label: [
            "electrical installation",
            "Elektroinstallation",
            "električne inštalacije",
            "impianti elettrici",
            "instalacje elektryczne",
        ],
        technology: &[
            "smart buildings",
            "photovoltaics",
            "heat pumps",
            "building automation",
        ],
        markets: &["construction", "housing", "municipalities"],
    },
];

/// Phrase pools of one language. Placeholders: `{kw}`, `{Kw}` (capitalised), `{kw2}`,
/// `{sector}`, `{Sector}`, `{market}`, `{region}`, `{years}`.
struct PhrasePool {
    offer_titles: &'static [&'static str],
    request_titles: &'static [&'static str],
    offer_openers: &'static [&'static str],
    request_openers: &'static [&'static str],
    middles: &'static [&'static str],
    closers: &'static [&'static str],
    innovation: &'static [&'static str],
}

/// Phrase pools in the order of [`SYNTHETIC_LANGUAGES`].
const PHRASES: [PhrasePool; 5] = [
    PhrasePool {
        offer_titles: &[
            "{Kw} for {market}",
            "Proven {kw} technology available for licensing",
            "{Sector} know-how: {kw} and {kw2}",
            "Innovative {kw} solution from {region}",
        ],
        request_titles: &[
            "Partner sought for {kw} in {sector}",
            "Supplier of {kw} wanted for {market}",
            "Research partners wanted: {kw} and {kw2}",
            "Distribution partners sought for {kw} products",
        ],
        offer_openers: &[
            "A company from {region} specialised in {sector} has developed a solution for {kw} that is already used by {market}.",
            "The company has {years} years of experience in {sector} and offers its expertise in {kw}.",
            "A research team in {region} has developed a new approach to {kw} and tested it with {market}.",
        ],
        request_openers: &[
            "A small company from {region} working in {sector} is looking for partners experienced in {kw}.",
            "An enterprise based in {region} wants to extend its range with {kw} and needs a reliable partner.",
            "A consortium in {region} is preparing a project on {kw} and looks for complementary partners from {market}.",
        ],
        middles: &[
            "The solution combines {kw} with {kw2} and reduces costs noticeably.",
            "Pilots with {market} have shown clear savings in time and energy.",
            "The approach has been tested for {years} years in real operation.",
            "Particular attention is paid to {kw2} and to compliance with EU standards.",
            "The team brings practical experience from several Interreg projects.",
        ],
        closers: &[
            "Long-term co-operation is sought in Central and South-East Europe.",
            "Interested organisations are invited to send an expression of interest.",
            "The aim is joint development and entry into new markets.",
        ],
        innovation: &[
            "Lower cost than established solutions and proven in real operation.",
            "Combines {kw} and {kw2} in one compact system.",
            "Cuts energy use by a third compared with conventional {sector} processes.",
        ],
    },
    PhrasePool {
        offer_titles: &[
            "{Kw}: innovative Lösung aus dem Bereich {sector}",
            "Erprobte Technologie für {kw} sucht Lizenznehmer",
            "Know-how in {sector} und {kw} für Partner verfügbar",
        ],
        request_titles: &[
            "Partner für {kw} im Bereich {sector} gesucht",
            "Zulieferer für {kw} gesucht",
            "Forschungspartner für {kw} und {kw2} gesucht",
        ],
        offer_openers: &[
            "Ein Unternehmen aus der Region {region} mit Schwerpunkt {sector} hat eine Lösung für {kw} entwickelt.",
            "Das Unternehmen verfügt über {years} Jahre Erfahrung im Bereich {sector} und bietet Know-how zu {kw} an.",
            "Eine Forschungsgruppe in {region} hat einen neuen Ansatz für {kw} entwickelt und bereits erfolgreich getestet.",
        ],
        request_openers: &[
            "Ein KMU aus {region} im Bereich {sector} sucht Partner mit Erfahrung in {kw}.",
            "Ein Unternehmen aus {region} möchte sein Angebot um {kw} erweitern und sucht dafür einen zuverlässigen Partner.",
            "Ein Konsortium in {region} bereitet ein Projekt zu {kw} vor und sucht ergänzende Partner.",
        ],
        middles: &[
            "Die Lösung verbindet {kw} mit {kw2} und senkt die Kosten deutlich.",
            "Pilotanwendungen haben Einsparungen bei Zeit und Energie gezeigt.",
            "Der Ansatz wurde über {years} Jahre im realen Betrieb erprobt.",
            "Besonderes Augenmerk gilt {kw2} und der Einhaltung der EU-Normen.",
        ],
        closers: &[
            "Gesucht wird eine langfristige Zusammenarbeit in Mittel- und Südosteuropa.",
            "Interessierte Organisationen sind eingeladen, eine Interessensbekundung zu senden.",
            "Ziel ist eine gemeinsame Weiterentwicklung und Markteinführung.",
        ],
        innovation: &[
            "Geringere Kosten als etablierte Lösungen und im realen Betrieb erprobt.",
            "Verbindet {kw} und {kw2} in einem kompakten System.",
        ],
    },
    PhrasePool {
        offer_titles: &[
            "{Kw} – inovativna rešitev ({sector})",
            "Preizkušena tehnologija za {kw} išče licenčnega partnerja",
            "Znanje in izkušnje na področju {kw} za nove partnerje",
        ],
        request_titles: &[
            "Iščemo partnerja za {kw} ({sector})",
            "Iščemo dobavitelja za {kw}",
            "Raziskovalni partnerji za {kw} in {kw2}",
        ],
        offer_openers: &[
            "Podjetje iz regije {region}, dejavno na področju: {sector}, je razvilo rešitev za {kw}.",
            "Podjetje ima {years} let izkušenj in ponuja strokovno znanje o {kw}.",
            "Raziskovalna skupina iz regije {region} je razvila nov pristop k {kw}.",
        ],
        request_openers: &[
            "Malo podjetje iz regije {region} išče partnerje z izkušnjami na področju {kw}.",
            "Podjetje iz regije {region} želi razširiti ponudbo s {kw} in išče zanesljivega partnerja.",
            "Konzorcij iz regije {region} pripravlja projekt o {kw} in išče dopolnilne partnerje.",
        ],
        middles: &[
            "Rešitev združuje {kw} in {kw2} ter občutno zmanjša stroške.",
            "Pilotni projekti so pokazali prihranke časa in energije.",
            "Pristop je bil {years} let preizkušen v realnem okolju.",
            "Posebna pozornost je namenjena {kw2} in skladnosti s standardi EU.",
        ],
        closers: &[
            "Iščemo dolgoročno sodelovanje v srednji in jugovzhodni Evropi.",
            "Zainteresirane organizacije vabimo, da pošljejo izraz interesa.",
            "Cilj je skupni razvoj in vstop na nove trge.",
        ],
        innovation: &[
            "Nižji stroški od uveljavljenih rešitev, preizkušeno v praksi.",
            "Združuje {kw} in {kw2} v enem kompaktnem sistemu.",
        ],
    },
    PhrasePool {
        offer_titles: &[
            "{Kw}: soluzione innovativa nel settore {sector}",
            "Tecnologia collaudata per {kw} cerca licenziatari",
            "Competenze in {kw} e {kw2} a disposizione di nuovi partner",
        ],
        request_titles: &[
            "Cercasi partner per {kw} nel settore {sector}",
            "Cercasi fornitore per {kw}",
            "Partner di ricerca cercati per {kw} e {kw2}",
        ],
        offer_openers: &[
            "Un'azienda della regione {region} attiva nel settore {sector} ha sviluppato una soluzione per {kw}.",
            "L'azienda vanta {years} anni di esperienza nel settore {sector} e offre competenze in {kw}.",
            "Un gruppo di ricerca della regione {region} ha sviluppato un nuovo approccio a {kw}.",
        ],
        request_openers: &[
            "Una PMI della regione {region} attiva nel settore {sector} cerca partner con esperienza in {kw}.",
            "Un'azienda della regione {region} intende ampliare la propria offerta con {kw} e cerca un partner affidabile.",
            "Un consorzio della regione {region} prepara un progetto su {kw} e cerca partner complementari.",
        ],
        middles: &[
            "La soluzione combina {kw} e {kw2} e riduce sensibilmente i costi.",
            "I progetti pilota hanno mostrato risparmi di tempo e di energia.",
            "L'approccio è stato collaudato per {years} anni in condizioni reali.",
            "Particolare attenzione è dedicata a {kw2} e al rispetto delle norme UE.",
        ],
        closers: &[
            "Si cerca una collaborazione di lungo periodo nell'Europa centrale e sud-orientale.",
            "Le organizzazioni interessate sono invitate a inviare una manifestazione di interesse.",
            "L'obiettivo è lo sviluppo congiunto e l'ingresso in nuovi mercati.",
        ],
        innovation: &[
            "Costi inferiori rispetto alle soluzioni consolidate, collaudata in condizioni reali.",
            "Combina {kw} e {kw2} in un unico sistema compatto.",
        ],
    },
    PhrasePool {
        offer_titles: &[
            "{Kw}: innowacyjne rozwiązanie ({sector})",
            "Sprawdzona technologia {kw} – poszukiwani licencjobiorcy",
            "Wiedza z zakresu {kw} i {kw2} dla nowych partnerów",
        ],
        request_titles: &[
            "Poszukiwany partner: {kw} ({sector})",
            "Poszukiwany dostawca: {kw}",
            "Partnerzy badawczy poszukiwani: {kw} i {kw2}",
        ],
        offer_openers: &[
            "Firma z regionu {region} działająca w branży: {sector} opracowała rozwiązanie w zakresie {kw}.",
            "Przedsiębiorstwo ma {years} lat doświadczenia i oferuje wiedzę w zakresie {kw}.",
            "Zespół badawczy z regionu {region} opracował nowe podejście do {kw}.",
        ],
        request_openers: &[
            "Małe przedsiębiorstwo z regionu {region} poszukuje partnerów z doświadczeniem w zakresie {kw}.",
            "Firma z regionu {region} chce rozszerzyć ofertę o {kw} i szuka rzetelnego partnera.",
            "Konsorcjum z regionu {region} przygotowuje projekt dotyczący {kw} i szuka partnerów uzupełniających.",
        ],
        middles: &[
            "Rozwiązanie łączy {kw} i {kw2} oraz znacząco obniża koszty.",
            "Projekty pilotażowe wykazały oszczędności czasu i energii.",
            "Podejście było testowane przez {years} lat w rzeczywistych warunkach.",
            "Szczególną uwagę poświęcono {kw2} oraz zgodności z normami UE.",
        ],
        closers: &[
            "Poszukiwana jest długoterminowa współpraca w Europie Środkowej i Południowo-Wschodniej.",
            "Zainteresowane organizacje zapraszamy do przesłania wyrażenia zainteresowania.",
            "Celem jest wspólny rozwój i wejście na nowe rynki.",
        ],
        innovation: &[
            "Niższe koszty niż w przypadku uznanych rozwiązań, sprawdzone w praktyce.",
            "Łączy {kw} i {kw2} w jednym kompaktowym systemie.",
        ],
    },
];

/// Draws an item with probability proportional to its weight.
fn weighted<'a, T, R: Rng + ?Sized>(
    rng: &mut R,
    items: &'a [T],
    weight: impl Fn(&T) -> u32,
) -> &'a T {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    let mut at = below(rng, total);
    for item in items {
        let w = u64::from(weight(item));
        if at < w {
            return item;
        }
        at -= w;
    }
    &items[items.len() - 1]
}

/// `true` with probability `percent` / 100.
fn chance<R: Rng + ?Sized>(rng: &mut R, percent: u64) -> bool {
    below(rng, 100) < percent
}

/// Up to `n` distinct items drawn from `pool`, in drawing order.
fn distinct<'a, R: Rng + ?Sized>(rng: &mut R, pool: &[&'a str], n: usize) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n * 3 {
        if out.len() >= n.min(pool.len()) {
            break;
        }
        let item = *pick(rng, pool);
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

struct Slots<'a> {
    kw: &'a str,
    kw2: &'a str,
    sector: &'a str,
    market: &'a str,
    region: &'a str,
    years: u64,
}

fn fill(template: &str, s: &Slots<'_>) -> String {
    template
        .replace("{Kw}", &capitalised(s.kw))
        .replace("{kw}", s.kw)
        .replace("{kw2}", s.kw2)
        .replace("{Sector}", &capitalised(s.sector))
        .replace("{sector}", s.sector)
        .replace("{market}", s.market)
        .replace("{region}", s.region)
        .replace("{years}", &s.years.to_string())
}

/// A real NUTS region for a synthetic record: the NUTS 2 region itself or, half of the time, one
/// of its NUTS 3 regions (never an Extra-Regio code).
fn synthetic_nuts<R: Rng + ?Sized>(rng: &mut R, nuts2: &'static str) -> &'static str {
    if chance(rng, 50) {
        let all = crate::codes::nuts_all();
        let start = all.partition_point(|r| r.code < nuts2);
        let children: Vec<&'static str> = all[start..]
            .iter()
            .take_while(|r| r.code.starts_with(nuts2))
            .filter(|r| r.level == 3 && !r.code.ends_with('Z'))
            .map(|r| r.code)
            .collect();
        let i = below(rng, children.len() as u64) as usize;
        if let Some(child) = children.get(i).copied() {
            return child;
        }
    }
    nuts2
}

/// The ISO 3166 country of a NUTS code (`EL52` -> `GR`).
fn iso_country(nuts: &str) -> String {
    crate::codes::nuts_country_to_iso(nuts.get(..2).unwrap_or(nuts)).to_string()
}

/// A synthetic co-operation offer or request. Even indexes give offers (business, technology,
/// knowledge), odd indexes requests (business, technology, knowledge, R&D), so any run of
/// records is balanced. Texts are in the region's language (70 %) or English; the record names
/// no organisation and no deadline (see [`synthetic_cooperation_content`] for those).
pub fn synthetic_cooperation<R: Rng + ?Sized>(rng: &mut R, index: u64) -> Cooperation {
    use CooperationKind::*;
    let region = *weighted(rng, SYNTHETIC_REGIONS, |r| r.weight);
    let sector = *weighted(rng, SYNTHETIC_SECTORS, |s| s.weight);
    let kind = if index.is_multiple_of(2) {
        *weighted(
            rng,
            &[
                (BusinessOffer, 18),
                (TechnologyOffer, 16),
                (KnowledgeOffer, 10),
            ],
            |k| k.1,
        )
    } else {
        *weighted(
            rng,
            &[
                (BusinessRequest, 14),
                (TechnologyRequest, 12),
                (KnowledgeRequest, 8),
                (ResearchRequest, 10),
            ],
            |k| k.1,
        )
    }
    .0;
    let offer = matches!(kind, BusinessOffer | TechnologyOffer | KnowledgeOffer);

    let language = if region.language != "en" && chance(rng, 70) {
        region.language
    } else {
        "en"
    };
    let lang_index = SYNTHETIC_LANGUAGES
        .iter()
        .position(|l| *l == language)
        .unwrap_or(0);
    let phrases = &PHRASES[lang_index];

    // Keywords: mostly from the sector, sometimes one from a neighbouring field.
    let n = 2 + below(rng, 3) as usize;
    let mut technology: Vec<&str> = distinct(rng, sector.technology, n);
    if chance(rng, 15) {
        let other = weighted(rng, SYNTHETIC_SECTORS, |s| s.weight);
        let extra = *pick(rng, other.technology);
        if !technology.contains(&extra) {
            technology.push(extra);
        }
    }
    let n = 1 + below(rng, 2) as usize;
    let markets: Vec<&str> = distinct(rng, sector.markets, n);
    let kw = technology.first().copied().unwrap_or("innovation");
    let kw2 = technology.get(1).copied().unwrap_or(kw);
    let region_name = crate::codes::nuts(region.nuts).map_or(region.nuts, |r| r.name);
    let slots = Slots {
        kw,
        kw2,
        sector: sector.label[lang_index],
        market: markets.first().copied().unwrap_or("SMEs"),
        region: region_name,
        years: 5 + below(rng, 16),
    };

    let (titles, openers) = if offer {
        (phrases.offer_titles, phrases.offer_openers)
    } else {
        (phrases.request_titles, phrases.request_openers)
    };
    let title = fill(pick::<&str, _>(rng, titles), &slots);
    let mut sentences = vec![fill(pick::<&str, _>(rng, openers), &slots)];
    let n = 2 + below(rng, 2) as usize;
    let middles = distinct(rng, phrases.middles, n);
    let in_summary = 1 + below(rng, 2) as usize;
    for (i, middle) in middles.iter().enumerate() {
        sentences.push(fill(middle, &slots));
        if i + 1 == in_summary {
            break;
        }
    }
    let summary = sentences.join(" ");
    for middle in middles.iter().skip(in_summary) {
        sentences.push(fill(middle, &slots));
    }
    sentences.push(fill(pick::<&str, _>(rng, phrases.closers), &slots));
    let description = sentences.join(" ");

    // NACE: the class, sometimes its group instead, sometimes a second sector.
    let mut nace = vec![sector.nace.to_string()];
    if chance(rng, 15)
        && let Some(group) = crate::codes::nace(sector.nace).and_then(|c| c.parent)
    {
        nace[0] = group.to_string();
    }
    if chance(rng, 20) {
        let other = weighted(rng, SYNTHETIC_SECTORS, |s| s.weight)
            .nace
            .to_string();
        if !nace.contains(&other) {
            nace.push(other);
        }
    }

    use PartnershipType as P;
    let pool: &[PartnershipType] = match kind {
        BusinessOffer | BusinessRequest => &[
            P::Commercial,
            P::Distribution,
            P::Subcontracting,
            P::JointVenture,
        ],
        TechnologyOffer | TechnologyRequest => &[
            P::Licence,
            P::TechnicalCooperation,
            P::ResearchCooperation,
            P::JointVenture,
            P::Commercial,
        ],
        ResearchRequest => &[
            P::ResearchCooperation,
            P::ProjectPartner,
            P::TechnicalCooperation,
        ],
        KnowledgeOffer | KnowledgeRequest => &[
            P::KnowledgeExchange,
            P::ProjectPartner,
            P::TechnicalCooperation,
        ],
    };
    let mut partnership_types = Vec::new();
    for _ in 0..1 + below(rng, 3) {
        let t = *pick(rng, pool);
        if !partnership_types.contains(&t) {
            partnership_types.push(t);
        }
    }

    let (stage, ipr) = match kind {
        TechnologyOffer => (
            *pick(
                rng,
                &[
                    DevelopmentStage::Prototype,
                    DevelopmentStage::FieldTested,
                    DevelopmentStage::OnTheMarket,
                    DevelopmentStage::UnderDevelopment,
                ],
            ),
            *pick(
                rng,
                &[
                    IprStatus::PatentGranted,
                    IprStatus::PatentApplied,
                    IprStatus::SecretKnowHow,
                    IprStatus::None,
                ],
            ),
        ),
        BusinessOffer => (DevelopmentStage::OnTheMarket, IprStatus::None),
        ResearchRequest => (DevelopmentStage::Concept, IprStatus::None),
        _ => (DevelopmentStage::NotApplicable, IprStatus::None),
    };

    // Partner sought: most profiles are open; some name countries, a few a region.
    let mut countries: Vec<String> = Vec::new();
    if chance(rng, 35) {
        for _ in 0..1 + below(rng, 3) {
            let c = iso_country(weighted(rng, SYNTHETIC_REGIONS, |r| r.weight).nuts);
            if !countries.contains(&c) {
                countries.push(c);
            }
        }
    }
    let regions = if chance(rng, 8) {
        vec![
            weighted(rng, SYNTHETIC_REGIONS, |r| r.weight)
                .nuts
                .to_string(),
        ]
    } else {
        vec![]
    };
    let org_types = match below(rng, 10) {
        0..=4 => vec![],
        5..=7 => vec![OrganisationType::Sme],
        8 => vec![OrganisationType::Sme, OrganisationType::LargeEnterprise],
        _ => vec![
            OrganisationType::University,
            OrganisationType::ResearchOrganisation,
        ],
    };
    let sizes = if chance(rng, 25) {
        vec![SizeClass::Micro, SizeClass::Small, SizeClass::Medium]
    } else {
        vec![]
    };
    let role = match language {
        "de" => "Ein erfahrener Partner für die gemeinsame Umsetzung.",
        "sl" => "Izkušen partner za skupno izvedbo.",
        "it" => "Un partner esperto per la realizzazione comune.",
        "pl" => "Doświadczony partner do wspólnej realizacji.",
        _ => "An experienced partner for joint implementation.",
    };

    let mut languages = vec![language.to_string()];
    if language != "en" {
        languages.push("en".into());
    }
    Cooperation {
        kind,
        title,
        summary,
        description,
        innovation: fill(pick::<&str, _>(rng, phrases.innovation), &slots),
        stage,
        ipr,
        technology_keywords: technology.iter().map(|s| s.to_string()).collect(),
        market_keywords: markets.iter().map(|s| s.to_string()).collect(),
        nace,
        partnership_types,
        partner_sought: PartnerSought {
            role: role.to_string(),
            org_types,
            sizes,
            countries,
            regions,
        },
        eoi_deadline: None,
        anonymous: chance(rng, 20),
        organisation: None,
        nuts: synthetic_nuts(rng, region.nuts).to_string(),
        languages,
    }
}

/// A synthetic organisation profile: mostly SMEs (sizes skewed towards micro and small, as in
/// the EU business population), some universities, research and support bodies.
pub fn synthetic_organisation<R: Rng + ?Sized>(rng: &mut R, index: u64) -> Organisation {
    const STEMS: &[&str] = &[
        "Alpen", "Danu", "Kras", "Vitra", "Nord", "Tera", "Lumen", "Sava", "Mura", "Adria",
        "Karpat", "Vistul", "Elba", "Tisa", "Drava", "Pannon",
    ];
    const ENDINGS: &[&str] = &[
        "tec", "soft", "form", "lab", "tronic", "mont", "agro", "plan",
    ];
    let region = *weighted(rng, SYNTHETIC_REGIONS, |r| r.weight);
    let sector = *weighted(rng, SYNTHETIC_SECTORS, |s| s.weight);
    let org_type = weighted(
        rng,
        &[
            (OrganisationType::Sme, 70),
            (OrganisationType::LargeEnterprise, 5),
            (OrganisationType::University, 6),
            (OrganisationType::ResearchOrganisation, 6),
            (OrganisationType::SupportBody, 6),
            (OrganisationType::Administration, 5),
            (OrganisationType::Ngo, 2),
        ],
        |t| t.1,
    )
    .0;
    let staff = match org_type {
        OrganisationType::Sme => match below(rng, 100) {
            0..=54 => 1 + below(rng, 9),
            55..=84 => 10 + below(rng, 40),
            _ => 50 + below(rng, 200),
        },
        OrganisationType::LargeEnterprise => 250 + below(rng, 5000),
        _ => 20 + below(rng, 800),
    } as u32;
    let size = match org_type {
        OrganisationType::Sme | OrganisationType::LargeEnterprise => {
            SizeClass::from_eu_definition(staff, u64::from(staff) * 110_000, 0)
        }
        _ => SizeClass::Unspecified,
    };
    let country = iso_country(region.nuts);
    let legal = match country.as_str() {
        "AT" | "DE" => "GmbH",
        "SI" | "HR" => "d.o.o.",
        "IT" => "S.r.l.",
        "PL" => "sp. z o.o.",
        "CZ" | "SK" => "s.r.o.",
        "HU" => "Kft.",
        "RO" => "SRL",
        "BG" => "EOOD",
        _ => "Ltd",
    };
    let region_name = crate::codes::nuts(region.nuts).map_or(region.nuts, |r| r.name);
    let name = match org_type {
        OrganisationType::University => format!("University of {region_name}"),
        OrganisationType::ResearchOrganisation => {
            format!(
                "{region_name} Institute for {}",
                capitalised(sector.label[0])
            )
        }
        OrganisationType::SupportBody => format!("{region_name} Innovation Agency"),
        OrganisationType::Administration => format!("Municipality {}", index % 997),
        OrganisationType::Ngo => format!("{region_name} Rural Development Association"),
        _ => format!(
            "{}{} {} {legal}",
            pick(rng, STEMS),
            pick(rng, ENDINGS),
            index % 1000
        ),
    };
    let anonymous = org_type == OrganisationType::Sme && chance(rng, 10);
    let mut nace = vec![sector.nace.to_string()];
    if chance(rng, 20) {
        let other = weighted(rng, SYNTHETIC_SECTORS, |s| s.weight)
            .nace
            .to_string();
        if !nace.contains(&other) {
            nace.push(other);
        }
    }
    let mut languages = vec![region.language.to_string()];
    if region.language != "en" {
        languages.push("en".into());
    }
    Organisation {
        name: (!anonymous).then_some(name),
        anonymous,
        org_type,
        size,
        nace,
        nuts: (!anonymous).then(|| synthetic_nuts(rng, region.nuts).to_string()),
        country,
        year_established: Some(1950 + below(rng, 76) as u16),
        languages,
        description: format!(
            "Works in {} ({}).",
            sector.label[0],
            sector.technology.join(", ")
        ),
        website: None,
    }
}

/// A complete synthetic co-operation content authored by `author` around `now_ms`: key
/// `offer-{index}`, created up to 14 months earlier (recent records more likely, so a few have
/// expired), expiring 12 months after creation, with a deadline for expressions of interest on
/// 40 % of them and, unless anonymous, a reference to organisation `org-{index / 3}` of the
/// author (so an organisation publishes several records).
pub fn synthetic_cooperation_content<R: Rng + ?Sized>(
    rng: &mut R,
    federation: FederationId,
    author: PublicKey,
    index: u64,
    now_ms: u64,
) -> Content {
    const DAY_MS: u64 = 86_400_000;
    let mut body = synthetic_cooperation(rng, index);
    // Age in days, skewed towards recent records: 420 × u², u uniform in [0, 1).
    let u = below(rng, 1_000) as f64 / 1_000.0;
    let age_ms = (420.0 * u * u * DAY_MS as f64) as u64;
    let created_at_ms = now_ms.saturating_sub(age_ms);
    let expires_at_ms = created_at_ms + 365 * DAY_MS;
    if chance(rng, 40) {
        let days = (created_at_ms / DAY_MS) + 30 + below(rng, 300);
        body.eoi_deadline = Some(date_from_days(days as i64));
    }
    if !body.anonymous {
        body.organisation = Some(ItemRef {
            region: author,
            kind: Kind::Organisation,
            key: format!("org-{}", index / 3),
        });
    }
    Content {
        format: FORMAT_VERSION,
        federation,
        author,
        kind: Kind::Cooperation,
        key: format!("offer-{index}"),
        revision: 1,
        created_at_ms,
        expires_at_ms: Some(expires_at_ms),
        body: Body::Cooperation(body),
    }
}
