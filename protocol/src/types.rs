//! The shared things KIM records carry: region profiles, organisations, projects, co-operation
//! offers and requests, knowledge items, expressions of interest and outcomes.
//!
//! Field names follow the Enterprise Europe Network partnering profiles and Interreg project
//! databases where that helps the people who already use them (see DOMAIN.md). Every type here
//! crosses the wire, so field order is part of the binary encoding: append, never reorder.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bytes::{Hash32, PublicKey, RecordId};

/// A calendar date (no time zone): deadlines, project dates, agreement dates.
///
/// Binary form: year (u16 varint), month (u8), day (u8). JSON form: `"YYYY-MM-DD"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// A date, if it exists in the proleptic Gregorian calendar (years 1900 to 2999).
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let date = Date { year, month, day };
        date.is_valid().then_some(date)
    }

    /// Whether the fields name a real day between 1900-01-01 and 2999-12-31.
    pub fn is_valid(&self) -> bool {
        if !(1900..=2999).contains(&self.year) || !(1..=12).contains(&self.month) {
            return false;
        }
        let leap = self.year.is_multiple_of(4)
            && (!self.year.is_multiple_of(100) || self.year.is_multiple_of(400));
        let days = match self.month {
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => 31,
        };
        (1..=days).contains(&self.day)
    }

    /// Days since 1970-01-01 (Howard Hinnant's days-from-civil algorithm).
    pub fn days_since_epoch(&self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Milliseconds since the Unix epoch at the start of this day (UTC).
    pub fn start_ms(&self) -> i64 {
        self.days_since_epoch() * 86_400_000
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Date> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |s: &str| -> Option<u16> {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())?
        };
        let year = num(text.get(0..4)?)?;
        let month = u8::try_from(num(text.get(5..7)?)?).ok()?;
        let day = u8::try_from(num(text.get(8..10)?)?).ok()?;
        Date::new(year, month, day)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Date({self})")
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Date {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Date,
            )))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Date {}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.year, self.month, self.day).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Date::parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format_args!("{text:?} is not a valid YYYY-MM-DD date"))
            })
        } else {
            // Binary dates are range-checked by validation, which names the field.
            let (year, month, day) = <(u16, u8, u8)>::deserialize(deserializer)?;
            Ok(Date { year, month, day })
        }
    }
}

/// A reference to a logical item: the region that owns it, its kind and the author's key for it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemRef {
    pub region: PublicKey,
    pub kind: crate::envelope::Kind,
    pub key: String,
}

/// How a node of a region can be reached: its libp2p peer id and multiaddresses.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

/// Public contact details. Never required; always public when given.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicContact {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub website: Option<String>,
}

/// The node's self-description; item key `profile`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionProfile {
    /// The region's name, e.g. "Steiermark".
    pub name: String,
    /// NUTS 2024 codes the region covers (any level), e.g. `["AT22"]`.
    pub nuts: Vec<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// ISO 639-1 languages the agency works in.
    pub languages: Vec<String>,
    /// The development agency that operates the node.
    pub agency: String,
    pub contact: PublicContact,
    /// Where the region's nodes listen; binds transport identities to the region key.
    pub nodes: Vec<NodeAddress>,
    pub description: String,
}

/// What kind of body an organisation is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrganisationType {
    Sme,
    LargeEnterprise,
    Administration,
    University,
    ResearchOrganisation,
    SupportBody,
    Ngo,
    Other,
}

/// Size class from the EU SME definition (Recommendation 2003/361).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeClass {
    Micro,
    Small,
    Medium,
    Large,
    /// Not applicable (e.g. administrations) or not disclosed.
    Unspecified,
}

impl SizeClass {
    /// Classifies by staff headcount, annual turnover and balance-sheet total in euros.
    ///
    /// Staff decides the ceiling; a firm then needs turnover *or* balance sheet within the band.
    pub fn from_eu_definition(staff: u32, turnover_eur: u64, balance_sheet_eur: u64) -> SizeClass {
        let within = |turnover_max: u64, balance_max: u64| {
            turnover_eur <= turnover_max || balance_sheet_eur <= balance_max
        };
        if staff < 10 && within(2_000_000, 2_000_000) {
            SizeClass::Micro
        } else if staff < 50 && within(10_000_000, 10_000_000) {
            SizeClass::Small
        } else if staff < 250 && within(50_000_000, 43_000_000) {
            SizeClass::Medium
        } else {
            SizeClass::Large
        }
    }
}

/// Public profile of an SME, administration, university, research or support body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    /// Public name; must be absent when `anonymous` is set.
    pub name: Option<String>,
    /// Anonymous organisations reveal only country, type, size and sector.
    pub anonymous: bool,
    pub org_type: OrganisationType,
    pub size: SizeClass,
    /// NACE Rev. 2.1 codes (any level).
    pub nace: Vec<String>,
    /// The NUTS 2024 region the organisation is located in; absent when anonymous.
    pub nuts: Option<String>,
    pub country: String,
    pub year_established: Option<u16>,
    pub languages: Vec<String>,
    pub description: String,
    pub website: Option<String>,
}

/// A project's life stage.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Planned,
    Running,
    Closed,
}

/// A participant's role in a project.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantRole {
    LeadPartner,
    Partner,
    Associated,
}

/// One participant of a project.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub name: String,
    pub role: ParticipantRole,
    /// NUTS 2024 code of the participant's region.
    pub nuts: String,
    /// The participant's organisation item, when one is shared.
    pub organisation: Option<ItemRef>,
}

/// A co-operation project, as in Interreg's project databases.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub acronym: String,
    pub title: String,
    pub summary: String,
    pub programme: String,
    pub call: Option<String>,
    pub themes: Vec<String>,
    pub status: ProjectStatus,
    pub start: Date,
    pub end: Option<Date>,
    pub budget_eur: Option<u64>,
    pub participants: Vec<Participant>,
}

/// Which partnering profile this is; "who pays" decides offer versus request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CooperationKind {
    BusinessOffer,
    BusinessRequest,
    TechnologyOffer,
    TechnologyRequest,
    ResearchRequest,
    KnowledgeOffer,
    KnowledgeRequest,
}

/// How far a technology has come.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevelopmentStage {
    Concept,
    UnderDevelopment,
    Prototype,
    FieldTested,
    OnTheMarket,
    NotApplicable,
}

/// Intellectual property status of what is offered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IprStatus {
    None,
    PatentApplied,
    PatentGranted,
    SecretKnowHow,
    Copyright,
    Other,
}

/// A form of co-operation sought.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnershipType {
    Licence,
    TechnicalCooperation,
    ResearchCooperation,
    JointVenture,
    Subcontracting,
    Distribution,
    Commercial,
    ProjectPartner,
    KnowledgeExchange,
}

/// The partner an offer or request is looking for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerSought {
    /// The role the partner would play, in words.
    pub role: String,
    /// Organisation types wanted; empty means any.
    pub org_types: Vec<OrganisationType>,
    /// Size classes wanted; empty means any.
    pub sizes: Vec<SizeClass>,
    /// ISO 3166-1 countries wanted; empty means any.
    pub countries: Vec<String>,
    /// NUTS 2024 regions (any level, prefix match) wanted; empty means any.
    pub regions: Vec<String>,
}

/// A co-operation offer or request: the heart of KIM.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooperation {
    pub kind: CooperationKind,
    pub title: String,
    pub summary: String,
    pub description: String,
    /// Innovation and advantages, in words.
    pub innovation: String,
    pub stage: DevelopmentStage,
    pub ipr: IprStatus,
    pub technology_keywords: Vec<String>,
    pub market_keywords: Vec<String>,
    pub nace: Vec<String>,
    pub partnership_types: Vec<PartnershipType>,
    pub partner_sought: PartnerSought,
    /// Last day to send an expression of interest; not after the record's expiry.
    pub eoi_deadline: Option<Date>,
    /// Anonymous profiles carry no contact data or organisation reference in public text.
    pub anonymous: bool,
    /// The offering organisation's item; must be absent when anonymous.
    pub organisation: Option<ItemRef>,
    /// NUTS 2024 region of the offerer.
    pub nuts: String,
    pub languages: Vec<String>,
}

/// What a knowledge item is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnowledgeCategory {
    GoodPractice,
    Toolkit,
    TrainingManual,
    SurveyResult,
    Study,
    Dataset,
    Other,
}

/// A file attached to a knowledge item, fetched from peers by its content hash.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub media_type: String,
    pub size_bytes: u64,
    pub blake3: Hash32,
}

/// A knowledge item: good practice, toolkit, training manual, survey result, study or dataset.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knowledge {
    pub category: KnowledgeCategory,
    pub title: String,
    #[serde(rename = "abstract")]
    pub abstract_text: String,
    pub themes: Vec<String>,
    pub keywords: Vec<String>,
    /// NUTS 2024 regions concerned.
    pub regions: Vec<String>,
    pub languages: Vec<String>,
    /// Licence in words or as an SPDX identifier.
    pub licence: String,
    pub authors: Vec<String>,
    pub project: Option<ItemRef>,
    pub attachments: Vec<Attachment>,
}

/// A response to an offer, delivered only to the offering region.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpressionOfInterest {
    /// The offer or request responded to.
    pub offer: ItemRef,
    /// The record id of the revision read when responding.
    pub offer_record: RecordId,
    pub cooperation_sought: Vec<PartnershipType>,
    pub message: String,
    pub questions: String,
    /// A short presentation of the interested organisation.
    pub presentation: String,
}

/// What kind of agreement a co-operation produced.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgreementType {
    Licence,
    TechnicalCooperation,
    ResearchCooperation,
    JointVenture,
    Subcontracting,
    Distribution,
    Commercial,
    JointProject,
    Other,
}

/// The recorded outcome of an accepted expression of interest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub offer: ItemRef,
    /// The expression of interest that led to it.
    pub interest: RecordId,
    pub agreement: AgreementType,
    pub date: Date,
    pub nace: Option<String>,
    pub jobs_created: Option<u32>,
}

/// Withdraws an item: the body is gone everywhere; the tombstone stays so sync cannot resurrect it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_and_reject_impossible_days() {
        assert_eq!(Date::parse("2026-02-28"), Date::new(2026, 2, 28));
        assert_eq!(Date::parse("2024-02-29").map(|d| d.day), Some(29));
        assert_eq!(Date::parse("2026-02-29"), None);
        assert_eq!(Date::parse("2026-13-01"), None);
        assert_eq!(Date::parse("26-01-01"), None);
        assert_eq!(Date::parse("2026-1-011"), None);
        assert_eq!(Date::parse("+026-01-01"), None);
    }

    #[test]
    fn days_since_epoch_matches_known_days() {
        assert_eq!(Date::new(1970, 1, 1).map(|d| d.days_since_epoch()), Some(0));
        assert_eq!(
            Date::new(2000, 3, 1).map(|d| d.days_since_epoch()),
            Some(11_017)
        );
        assert_eq!(
            Date::new(2026, 11, 27).map(|d| d.days_since_epoch()),
            Some(20_784)
        );
    }

    #[test]
    fn sme_size_classes_follow_the_eu_definition() {
        assert_eq!(
            SizeClass::from_eu_definition(9, 1_000_000, 0),
            SizeClass::Micro
        );
        assert_eq!(
            SizeClass::from_eu_definition(9, 5_000_000, 1_000_000),
            SizeClass::Micro
        );
        assert_eq!(
            SizeClass::from_eu_definition(9, 5_000_000, 5_000_000),
            SizeClass::Small
        );
        assert_eq!(
            SizeClass::from_eu_definition(49, 9_000_000, 99_000_000),
            SizeClass::Small
        );
        assert_eq!(
            SizeClass::from_eu_definition(200, 60_000_000, 40_000_000),
            SizeClass::Medium
        );
        assert_eq!(
            SizeClass::from_eu_definition(200, 60_000_000, 45_000_000),
            SizeClass::Large
        );
        assert_eq!(SizeClass::from_eu_definition(250, 1, 1), SizeClass::Large);
    }
}
