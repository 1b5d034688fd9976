//! Validation: the rules a record's content must satisfy beyond a good signature.
//!
//! Pure and stateless: the caller passes the federation it serves and its clock reading.
//! Rules that need other records (authorisation, item resolution, membership) live elsewhere.

use crate::bytes::FederationId;
use crate::codes;
use crate::envelope::{Body, Content, FORMAT_VERSION, Kind};
use crate::error::Error;
use crate::limits::*;
use crate::membership::federation_id;
use crate::types::*;

/// What validation needs to know about the receiver.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The federation this node serves; other federations' records are refused.
    pub federation: FederationId,
    /// The receiver's clock, milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// Checks every stateless rule of SPEC.md ("Validation") and returns the first violation.
pub fn validate(content: &Content, ctx: &Context) -> Result<(), Error> {
    if content.format != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            found: content.format,
            supported: FORMAT_VERSION,
        });
    }
    if content.federation != ctx.federation {
        return Err(Error::WrongFederation {
            expected: ctx.federation.to_hex(),
            found: content.federation.to_hex(),
        });
    }
    if content.created_at_ms > ctx.now_ms.saturating_add(CREATED_AT_FUTURE_SKEW_MS_MAX) {
        return Err(Error::CreatedInFuture {
            created_at_ms: content.created_at_ms,
            now_ms: ctx.now_ms,
            skew_ms: CREATED_AT_FUTURE_SKEW_MS_MAX,
        });
    }
    if let Some(expires_at_ms) = content.expires_at_ms
        && expires_at_ms <= content.created_at_ms
    {
        return Err(Error::ExpiryBeforeCreation {
            created_at_ms: content.created_at_ms,
            expires_at_ms,
        });
    }
    if content.revision > REVISION_MAX {
        return Err(Error::RevisionTooLarge {
            revision: content.revision,
            max: REVISION_MAX,
        });
    }
    item_key(&content.key)?;
    match content.body.kind() {
        None if !content.kind.withdrawable() => {
            return Err(Error::TombstoneNotAllowed {
                kind: content.kind.as_str(),
            });
        }
        Some(kind) if kind != content.kind => {
            return Err(Error::KindMismatch {
                kind: content.kind.as_str(),
                body: content.body.name(),
            });
        }
        _ => {}
    }
    match &content.body {
        Body::Tombstone(t) => text("reason", &t.reason, SUMMARY_CHARS_MAX, false),
        Body::RegionProfile(p) => {
            if content.key != "profile" {
                return Err(Error::BadItemKey {
                    key: content.key.clone(),
                    reason: "a region profile's key is \"profile\"",
                });
            }
            region_profile(p)
        }
        Body::Organisation(o) => organisation(o),
        Body::Project(p) => project(p),
        Body::Cooperation(c) => cooperation(c, content.expires_at_ms),
        Body::Knowledge(k) => knowledge(k),
        Body::Interest(i) => interest(i),
        Body::Outcome(o) => outcome(o),
        Body::Charter(c) => {
            let charter = c.verify()?;
            if federation_id(&c.charter) != content.federation {
                return Err(Error::CharterHashMismatch);
            }
            if !charter.founders.iter().any(|f| f.key == content.author) {
                return Err(Error::BadCharter {
                    reason: "the charter record must be signed by a founder",
                });
            }
            text("name", &charter.name, NAME_CHARS_MAX, true)?;
            for founder in &charter.founders {
                text("founders.name", &founder.name, NAME_CHARS_MAX, true)?;
                codes_list("founders.nuts", &founder.nuts, nuts)?;
            }
            Ok(())
        }
        Body::JoinRequest(j) => {
            region_profile(&j.profile)?;
            text("message", &j.message, SUMMARY_CHARS_MAX, false)
        }
        Body::Endorsement(e) => {
            if e.candidate == content.author {
                return Err(Error::BadValue {
                    field: "candidate",
                    reason: "a region cannot endorse itself",
                });
            }
            Ok(())
        }
        Body::RemovalVote(v) => {
            if v.target == content.author {
                return Err(Error::BadValue {
                    field: "target",
                    reason: "use a leave record to leave; a region cannot vote itself out",
                });
            }
            text("reason", &v.reason, SUMMARY_CHARS_MAX, true)
        }
        Body::Leave(l) => text("reason", &l.reason, SUMMARY_CHARS_MAX, false),
        Body::KeyRotation(r) => {
            if r.new_key == content.author {
                return Err(Error::BadValue {
                    field: "new_key",
                    reason: "the new key equals the old key",
                });
            }
            r.verify_proof(&content.federation, &content.author)
        }
    }
}

/// Item keys: 1–64 characters of `a-z 0-9 . _ -`, so they are safe in URLs and file names.
pub fn item_key(key: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::BadItemKey {
            key: key.chars().take(ITEM_KEY_CHARS_MAX + 1).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > ITEM_KEY_CHARS_MAX {
        return bad("longer than 64 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn text(field: &'static str, value: &str, max: usize, required: bool) -> Result<(), Error> {
    if required && value.trim().is_empty() {
        return Err(Error::MissingField { field });
    }
    // Byte length bounds char count from above; count chars only when it matters.
    if value.len() > max {
        let len = value.chars().count();
        if len > max {
            return Err(Error::TextTooLong { field, len, max });
        }
    }
    if has_control_character(value) {
        return Err(Error::ControlCharacter { field });
    }
    Ok(())
}

/// Whether `value` holds a control character other than line feed and tab: exactly
/// `value.chars().any(|c| c.is_control() && c != '\n' && c != '\t')`, read as bytes. The
/// control characters (Unicode category Cc) are U+0000–U+001F, U+007F and U+0080–U+009F; in
/// UTF-8 the first two ranges are single bytes and the last is `C2 80`–`C2 9F`, and `C2` is
/// always a lead byte in valid UTF-8. Every text field of every record passes here, and
/// the byte scan is several times faster than decoding characters.
fn has_control_character(value: &str) -> bool {
    let bytes = value.as_bytes();
    let suspect = |b: u8| b < 0x20 || b == 0x7f || b == 0xc2;
    if !bytes.iter().any(|&b| suspect(b)) {
        return false;
    }
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\n' | b'\t' => false,
        0x00..=0x1f | 0x7f => true,
        0xc2 => matches!(bytes.get(i + 1), Some(0x80..=0x9f)),
        _ => false,
    })
}

fn opt_text(field: &'static str, value: &Option<String>, max: usize) -> Result<(), Error> {
    value
        .as_deref()
        .map_or(Ok(()), |v| text(field, v, max, true))
}

fn list_len<T>(field: &'static str, items: &[T], max: usize) -> Result<(), Error> {
    if items.len() > max {
        return Err(Error::TooManyItems {
            field,
            len: items.len(),
            max,
        });
    }
    Ok(())
}

fn keywords(field: &'static str, items: &[String]) -> Result<(), Error> {
    list_len(field, items, LIST_ITEMS_MAX)?;
    for item in items {
        text(field, item, KEYWORD_CHARS_MAX, true)?;
    }
    no_duplicates(field, items)
}

fn no_duplicates(field: &'static str, items: &[String]) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for item in items {
        if !seen.insert(item.as_str()) {
            return Err(Error::DuplicateItem {
                field,
                value: item.clone(),
            });
        }
    }
    Ok(())
}

fn codes_list(
    field: &'static str,
    items: &[String],
    check: fn(&'static str, &str) -> Result<(), Error>,
) -> Result<(), Error> {
    list_len(field, items, CODES_MAX)?;
    for item in items {
        check(field, item)?;
    }
    no_duplicates(field, items)
}

fn shorten(value: &str) -> String {
    value.chars().take(KEYWORD_CHARS_MAX).collect()
}

fn nuts(field: &'static str, code: &str) -> Result<(), Error> {
    codes::nuts(code).map(|_| ()).ok_or(Error::UnknownNuts {
        field,
        value: shorten(code),
    })
}

fn nace(field: &'static str, code: &str) -> Result<(), Error> {
    codes::nace(code).map(|_| ()).ok_or(Error::UnknownNace {
        field,
        value: shorten(code),
    })
}

fn country(field: &'static str, code: &str) -> Result<(), Error> {
    if codes::is_country(code) {
        Ok(())
    } else {
        Err(Error::UnknownCountry {
            field,
            value: shorten(code),
        })
    }
}

fn language(field: &'static str, code: &str) -> Result<(), Error> {
    if codes::is_language(code) {
        Ok(())
    } else {
        Err(Error::UnknownLanguage {
            field,
            value: shorten(code),
        })
    }
}

fn date(field: &'static str, value: &Date) -> Result<(), Error> {
    if value.is_valid() {
        Ok(())
    } else {
        Err(Error::BadDate {
            field,
            value: format!("{}-{}-{}", value.year, value.month, value.day),
        })
    }
}

/// A NUTS code must lie in the stated country (NUTS writes Greece as EL).
fn nuts_in_country(field: &'static str, code: &str, country_code: &str) -> Result<(), Error> {
    nuts(field, code)?;
    match codes::nuts_country(code) {
        Some(prefix) if codes::nuts_country_to_iso(prefix) == country_code => Ok(()),
        _ => Err(Error::BadValue {
            field,
            reason: "the NUTS region is not in the stated country",
        }),
    }
}

fn contact(c: &PublicContact) -> Result<(), Error> {
    opt_text("contact.email", &c.email, REFERENCE_CHARS_MAX)?;
    opt_text("contact.phone", &c.phone, REFERENCE_CHARS_MAX)?;
    opt_text("contact.website", &c.website, REFERENCE_CHARS_MAX)
}

fn region_profile(p: &RegionProfile) -> Result<(), Error> {
    text("name", &p.name, NAME_CHARS_MAX, true)?;
    country("country", &p.country)?;
    if p.nuts.is_empty() {
        return Err(Error::MissingField { field: "nuts" });
    }
    list_len("nuts", &p.nuts, CODES_MAX)?;
    for code in &p.nuts {
        nuts_in_country("nuts", code, &p.country)?;
    }
    no_duplicates("nuts", &p.nuts)?;
    codes_list("languages", &p.languages, language)?;
    text("agency", &p.agency, NAME_CHARS_MAX, true)?;
    contact(&p.contact)?;
    list_len("nodes", &p.nodes, REGION_NODES_MAX)?;
    for node in &p.nodes {
        text("nodes.peer_id", &node.peer_id, REFERENCE_CHARS_MAX, true)?;
        list_len("nodes.addrs", &node.addrs, NODE_ADDRS_MAX)?;
        for addr in &node.addrs {
            text("nodes.addrs", addr, REFERENCE_CHARS_MAX, true)?;
        }
    }
    text("description", &p.description, DESCRIPTION_CHARS_MAX, false)
}

fn organisation(o: &Organisation) -> Result<(), Error> {
    country("country", &o.country)?;
    if o.anonymous {
        if o.name.is_some() || o.nuts.is_some() || o.website.is_some() {
            return Err(Error::AnonymityViolation {
                field: "name",
                what: "an anonymous organisation has no name, region or website",
            });
        }
        anonymous_text("description", &o.description)?;
    } else {
        match &o.name {
            Some(name) => text("name", name, NAME_CHARS_MAX, true)?,
            None => return Err(Error::MissingField { field: "name" }),
        }
    }
    if let Some(code) = &o.nuts {
        nuts_in_country("nuts", code, &o.country)?;
    }
    codes_list("nace", &o.nace, nace)?;
    if let Some(year) = o.year_established
        && !(1000..=2999).contains(&year)
    {
        return Err(Error::BadValue {
            field: "year_established",
            reason: "not a plausible year",
        });
    }
    codes_list("languages", &o.languages, language)?;
    text("description", &o.description, DESCRIPTION_CHARS_MAX, false)?;
    opt_text("website", &o.website, REFERENCE_CHARS_MAX)
}

fn item_ref(field: &'static str, r: &ItemRef, kind: Kind) -> Result<(), Error> {
    if r.kind != kind {
        return Err(Error::BadValue {
            field,
            reason: "the reference points at an item of the wrong kind",
        });
    }
    item_key(&r.key).map_err(|_| Error::BadValue {
        field,
        reason: "the referenced item key is invalid",
    })
}

fn distinct<T: Ord + std::fmt::Debug>(field: &'static str, items: &[T]) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for item in items {
        if !seen.insert(item) {
            return Err(Error::DuplicateItem {
                field,
                value: format!("{item:?}"),
            });
        }
    }
    Ok(())
}

fn project(p: &Project) -> Result<(), Error> {
    text("acronym", &p.acronym, NAME_CHARS_MAX, true)?;
    text("title", &p.title, TITLE_CHARS_MAX, true)?;
    text("summary", &p.summary, SUMMARY_CHARS_MAX, true)?;
    text("programme", &p.programme, NAME_CHARS_MAX, true)?;
    opt_text("call", &p.call, NAME_CHARS_MAX)?;
    keywords("themes", &p.themes)?;
    date("start", &p.start)?;
    if let Some(end) = &p.end {
        date("end", end)?;
        if end < &p.start {
            return Err(Error::DateOrder {
                first: "start",
                second: "end",
            });
        }
    }
    list_len("participants", &p.participants, PARTICIPANTS_MAX)?;
    for participant in &p.participants {
        text("participants.name", &participant.name, NAME_CHARS_MAX, true)?;
        nuts("participants.nuts", &participant.nuts)?;
        if let Some(org) = &participant.organisation {
            item_ref("participants.organisation", org, Kind::Organisation)?;
        }
    }
    let leads = p
        .participants
        .iter()
        .filter(|x| x.role == ParticipantRole::LeadPartner)
        .count();
    if leads != 1 {
        return Err(Error::LeadPartner { found: leads });
    }
    Ok(())
}

fn cooperation(c: &Cooperation, expires_at_ms: Option<u64>) -> Result<(), Error> {
    text("title", &c.title, TITLE_CHARS_MAX, true)?;
    text("summary", &c.summary, SUMMARY_CHARS_MAX, true)?;
    text("description", &c.description, DESCRIPTION_CHARS_MAX, false)?;
    text("innovation", &c.innovation, DESCRIPTION_CHARS_MAX, false)?;
    keywords("technology_keywords", &c.technology_keywords)?;
    keywords("market_keywords", &c.market_keywords)?;
    codes_list("nace", &c.nace, nace)?;
    list_len(
        "partnership_types",
        &c.partnership_types,
        PartnershipType::COUNT,
    )?;
    distinct("partnership_types", &c.partnership_types)?;
    distinct("partner_sought.org_types", &c.partner_sought.org_types)?;
    distinct("partner_sought.sizes", &c.partner_sought.sizes)?;
    let ps = &c.partner_sought;
    text("partner_sought.role", &ps.role, SUMMARY_CHARS_MAX, false)?;
    list_len("partner_sought.org_types", &ps.org_types, LIST_ITEMS_MAX)?;
    list_len("partner_sought.sizes", &ps.sizes, LIST_ITEMS_MAX)?;
    codes_list("partner_sought.countries", &ps.countries, country)?;
    codes_list("partner_sought.regions", &ps.regions, nuts)?;
    nuts("nuts", &c.nuts)?;
    codes_list("languages", &c.languages, language)?;
    if let Some(deadline) = &c.eoi_deadline {
        date("eoi_deadline", deadline)?;
        if let Some(expires_at_ms) = expires_at_ms
            && deadline.start_ms() > i64::try_from(expires_at_ms).unwrap_or(i64::MAX)
        {
            return Err(Error::DateOrder {
                first: "eoi_deadline",
                second: "expires_at",
            });
        }
    }
    if c.anonymous {
        if c.organisation.is_some() {
            return Err(Error::AnonymityViolation {
                field: "organisation",
                what: "an anonymous profile names no organisation",
            });
        }
        anonymous_text("title", &c.title)?;
        anonymous_text("summary", &c.summary)?;
        anonymous_text("description", &c.description)?;
        anonymous_text("innovation", &c.innovation)?;
        anonymous_text("partner_sought.role", &ps.role)?;
        for k in c.technology_keywords.iter().chain(&c.market_keywords) {
            anonymous_text("keywords", k)?;
        }
    } else if let Some(org) = &c.organisation {
        item_ref("organisation", org, Kind::Organisation)?;
    }
    Ok(())
}

impl PartnershipType {
    /// Number of partnership types; a list longer than this must repeat one.
    pub const COUNT: usize = 9;
}

fn knowledge(k: &Knowledge) -> Result<(), Error> {
    text("title", &k.title, TITLE_CHARS_MAX, true)?;
    text("abstract", &k.abstract_text, SUMMARY_CHARS_MAX, true)?;
    keywords("themes", &k.themes)?;
    keywords("keywords", &k.keywords)?;
    codes_list("regions", &k.regions, nuts)?;
    codes_list("languages", &k.languages, language)?;
    text("licence", &k.licence, NAME_CHARS_MAX, false)?;
    list_len("authors", &k.authors, LIST_ITEMS_MAX)?;
    for author in &k.authors {
        text("authors", author, NAME_CHARS_MAX, true)?;
    }
    if let Some(project) = &k.project {
        item_ref("project", project, Kind::Project)?;
    }
    list_len("attachments", &k.attachments, ATTACHMENTS_MAX)?;
    for a in &k.attachments {
        text("attachments.name", &a.name, NAME_CHARS_MAX, true)?;
        text(
            "attachments.media_type",
            &a.media_type,
            REFERENCE_CHARS_MAX,
            true,
        )?;
        let well_formed = a.media_type.split_once('/').is_some_and(|(t, s)| {
            let token = |part: &str| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(&b))
            };
            token(t) && token(s)
        });
        if !well_formed {
            return Err(Error::BadValue {
                field: "attachments.media_type",
                reason: "expected type/subtype",
            });
        }
        if a.size_bytes == 0 || a.size_bytes > ATTACHMENT_BYTES_MAX {
            return Err(Error::BadValue {
                field: "attachments.size_bytes",
                reason: "size must be between 1 byte and 4 GiB",
            });
        }
    }
    Ok(())
}

fn interest(i: &ExpressionOfInterest) -> Result<(), Error> {
    item_ref("offer", &i.offer, Kind::Cooperation)?;
    list_len(
        "cooperation_sought",
        &i.cooperation_sought,
        PartnershipType::COUNT,
    )?;
    distinct("cooperation_sought", &i.cooperation_sought)?;
    text("message", &i.message, DESCRIPTION_CHARS_MAX, true)?;
    text("questions", &i.questions, DESCRIPTION_CHARS_MAX, false)?;
    text(
        "presentation",
        &i.presentation,
        DESCRIPTION_CHARS_MAX,
        false,
    )
}

fn outcome(o: &Outcome) -> Result<(), Error> {
    item_ref("offer", &o.offer, Kind::Cooperation)?;
    date("date", &o.date)?;
    if let Some(code) = &o.nace {
        nace("nace", code)?;
    }
    Ok(())
}

/// The anonymity rule: public text of an anonymous record carries no e-mail address, phone
/// number or web link.
pub fn anonymous_text(field: &'static str, value: &str) -> Result<(), Error> {
    if let Some(what) = contact_data_in(value) {
        return Err(Error::AnonymityViolation { field, what });
    }
    Ok(())
}

/// Finds contact data in free text; returns what kind it found.
pub fn contact_data_in(value: &str) -> Option<&'static str> {
    let lower = value.to_lowercase();
    if lower.contains("http://") || lower.contains("https://") || lower.contains("www.") {
        return Some("a web link");
    }
    let separator = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '(' | ')' | '<' | '>' | '[' | ']' | ',' | ';' | '"' | '\''
            )
    };
    for word in lower.split(separator) {
        if let Some((local, domain)) = word.split_once('@')
            && !local.is_empty()
            && domain.contains('.')
        {
            return Some("an e-mail address");
        }
        if looks_like_domain(word) {
            return Some("a web link");
        }
    }
    // Phone numbers: a run of seven or more digits with only separators between them that
    // starts like a dialled number ('+', '(' or a leading 0), so year ranges are not caught.
    let mut digits = 0;
    let mut dialled = false;
    let mut in_run = false;
    for c in value.chars() {
        if c.is_ascii_digit() {
            if !in_run {
                in_run = true;
                dialled = c == '0';
                digits = 0;
            }
            digits += 1;
            if digits >= 7 && dialled {
                return Some("a phone number");
            }
        } else if c == '+' || c == '(' {
            if !in_run || digits == 0 {
                in_run = true;
                dialled = true;
                digits = 0;
            }
        } else if !matches!(c, ' ' | '-' | '/' | '.' | ')') {
            in_run = false;
            digits = 0;
        }
    }
    None
}

/// `example.com`, `firma.at/kontakt`: a dot-separated name ending in a common top-level domain.
fn looks_like_domain(word: &str) -> bool {
    const TLDS: &[&str] = &[
        "com", "org", "net", "eu", "info", "biz", "io", "at", "de", "si", "it", "gr", "pl", "cz",
        "sk", "hu", "bg", "ro", "hr", "rs", "ba", "me", "mk", "al", "md", "ua", "fr", "es", "nl",
        "be", "ch", "uk",
    ];
    // Without a dot there is no top-level domain: most words end here.
    if !word.contains('.') {
        return false;
    }
    let host = word.split('/').next().unwrap_or(word);
    let host = host.trim_end_matches('.');
    let mut parts = host.rsplitn(2, '.');
    let (Some(tld), Some(rest)) = (parts.next(), parts.next()) else {
        return false;
    };
    !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
        && TLDS.contains(&tld)
}

/// The stateless part of every ingest path: size check, decode, verify the signature, validate.
/// What remains for the caller is authorisation (membership) and resolution (store).
pub fn check_record(bytes: Vec<u8>, ctx: &Context) -> Result<crate::envelope::Record, Error> {
    let record = crate::envelope::Record::decode(bytes)?;
    record.verify()?;
    validate(&record.content, ctx)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_data_is_found_in_free_text() {
        assert_eq!(
            contact_data_in("write to anna@firma.at"),
            Some("an e-mail address")
        );
        assert_eq!(contact_data_in("see https://firma.at"), Some("a web link"));
        assert_eq!(contact_data_in("see www.firma.at"), Some("a web link"));
        assert_eq!(contact_data_in("see firma.at/kontakt"), Some("a web link"));
        assert_eq!(
            contact_data_in("call +43 316 123 4567"),
            Some("a phone number")
        );
        assert_eq!(
            contact_data_in("call (0316) 12-34-56"),
            Some("a phone number")
        );
        assert_eq!(contact_data_in("founded 2019, 45 staff, ISO 9001"), None);
        assert_eq!(contact_data_in("e.g. sensors, i.e. MEMS"), None);
        assert_eq!(contact_data_in("NACE 62.10 and 26.11"), None);
        assert_eq!(contact_data_in("running 2019-2026, 2021 2022 2023"), None);
        assert_eq!(
            contact_data_in("tel. 0316 876 5432"),
            Some("a phone number")
        );
    }

    /// `contact_data_in` as it read before its separators became a `matches!` and
    /// `looks_like_domain` learnt to skip words without a dot: validation is a consensus
    /// rule, so the faster form must give the same verdict on every text.
    fn contact_data_in_as_before(value: &str) -> Option<&'static str> {
        fn domain(word: &str) -> bool {
            const TLDS: &[&str] = &[
                "com", "org", "net", "eu", "info", "biz", "io", "at", "de", "si", "it", "gr", "pl",
                "cz", "sk", "hu", "bg", "ro", "hr", "rs", "ba", "me", "mk", "al", "md", "ua", "fr",
                "es", "nl", "be", "ch", "uk",
            ];
            let host = word.split('/').next().unwrap_or(word);
            let host = host.trim_end_matches('.');
            let mut parts = host.rsplitn(2, '.');
            let (Some(tld), Some(rest)) = (parts.next(), parts.next()) else {
                return false;
            };
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
                && TLDS.contains(&tld)
        }
        let lower = value.to_lowercase();
        if lower.contains("http://") || lower.contains("https://") || lower.contains("www.") {
            return Some("a web link");
        }
        for word in lower.split(|c: char| c.is_whitespace() || "()<>[],;\"'".contains(c)) {
            if let Some((local, domain_part)) = word.split_once('@')
                && !local.is_empty()
                && domain_part.contains('.')
            {
                return Some("an e-mail address");
            }
            if domain(word) {
                return Some("a web link");
            }
        }
        let mut digits = 0;
        let mut dialled = false;
        let mut in_run = false;
        for c in value.chars() {
            if c.is_ascii_digit() {
                if !in_run {
                    in_run = true;
                    dialled = c == '0';
                    digits = 0;
                }
                digits += 1;
                if digits >= 7 && dialled {
                    return Some("a phone number");
                }
            } else if c == '+' || c == '(' {
                if !in_run || digits == 0 {
                    in_run = true;
                    dialled = true;
                    digits = 0;
                }
            } else if !matches!(c, ' ' | '-' | '/' | '.' | ')') {
                in_run = false;
                digits = 0;
            }
        }
        None
    }

    /// Text made of the pieces the rules look at: separators, '@', dots, top-level domains,
    /// digits, dial prefixes, control characters (C0 and C1), letters whose lower case is
    /// ASCII (the Kelvin sign) and other non-ASCII letters.
    fn tricky_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pieces = prop::sample::select(vec![
            " ",
            "\t",
            "\n",
            "\r",
            "\u{b}",
            "\u{85}",
            "\u{a0}",
            "(",
            ")",
            "<",
            ">",
            "[",
            "]",
            ",",
            ";",
            "\"",
            "'",
            "@",
            ".",
            "/",
            "-",
            "+",
            "0",
            "3",
            "7",
            "com",
            "at",
            "sk",
            "uk",
            "eu",
            "www",
            "http://",
            "HTTPS://",
            "WwW.",
            "firma",
            "Anna",
            "\u{212a}",
            "\u{130}",
            "č",
            "ß",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            "\u{80}",
            "\u{9f}",
            "\u{c2}",
            "\u{a0}",
            "\u{2028}",
            "e.g.",
            "x",
            "firma.at",
            "a.b.sk/x",
            "anna@firma.at",
            "0316 12",
            "+43",
            "www.x.eu",
            "\u{212a}.uk",
        ]);
        prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn the_byte_scan_finds_exactly_the_control_characters(
            value in proptest::prop_oneof![tricky_text(), proptest::prelude::any::<String>()]
        ) {
            let by_chars = value.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
            proptest::prop_assert_eq!(has_control_character(&value), by_chars);
        }

        #[test]
        fn contact_data_is_judged_as_before(
            value in proptest::prop_oneof![tricky_text(), proptest::prelude::any::<String>()]
        ) {
            proptest::prop_assert_eq!(contact_data_in(&value), contact_data_in_as_before(&value));
        }
    }

    #[test]
    fn every_control_character_but_tab_and_line_feed_is_refused() {
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let value = format!("a{c}b");
            let refused = text("title", &value, 100, true).is_err();
            assert_eq!(
                refused,
                c.is_control() && c != '\n' && c != '\t',
                "{:#x}",
                c as u32
            );
        }
    }

    #[test]
    fn item_keys_are_restricted() {
        assert!(item_key("offer-2026.01_a").is_ok());
        assert!(item_key("").is_err());
        assert!(item_key("Offer").is_err());
        assert!(item_key("a/b").is_err());
        assert!(item_key(&"a".repeat(65)).is_err());
    }
}
