//! SPEC.md stays in step with the code: every limit appears in the limits table (§7) with the
//! value the crate uses, every error code appears in the error-code tables (§6), and the
//! reconciliation fingerprint vectors (§11.3) hold.
//!
//! The tables are parsed by constant name and code, not by position, so rows may be reordered,
//! reworded or added without touching this test. A limit added to `limits.rs` fails the test until
//! it is listed both here and in SPEC.md.

use std::collections::{BTreeMap, BTreeSet};

use kim_protocol::Error;
use kim_protocol::limits::*;
use kim_protocol::membership::TRANSITION_SUBSETS_CHANGES_MAX;
use kim_protocol::reconcile::{
    Fingerprint, RECONCILE_MESSAGE_BYTES_MAX, RECONCILE_RANGE_IDS_MAX,
    RECONCILE_RANGE_SHORT_IDS_MAX, RECONCILE_ROUNDS_MAX, ReconcileError,
};
use kim_protocol::types::PartnershipType;

const SPEC: &str = include_str!("../SPEC.md");
const LIMITS_RS: &str = include_str!("../src/limits.rs");

type TestResult = Result<(), String>;

/// Every limit SPEC.md §7 must list, with the value the crate uses.
fn limits() -> Vec<(&'static str, u128)> {
    macro_rules! limits {
        ($($name:expr),* $(,)?) => {
            vec![$((stringify!($name), $name as u128)),*]
        };
    }
    limits![
        // limits.rs
        RECORD_BYTES_MAX,
        CONTENT_BYTES_MAX,
        CHARTER_BYTES_MAX,
        CREATED_AT_FUTURE_SKEW_MS_MAX,
        ITEM_KEY_CHARS_MAX,
        REVISION_MAX,
        NAME_CHARS_MAX,
        TITLE_CHARS_MAX,
        SUMMARY_CHARS_MAX,
        DESCRIPTION_CHARS_MAX,
        KEYWORD_CHARS_MAX,
        REFERENCE_CHARS_MAX,
        LIST_ITEMS_MAX,
        CODES_MAX,
        PARTICIPANTS_MAX,
        ATTACHMENTS_MAX,
        ATTACHMENT_BYTES_MAX,
        FOUNDERS_MAX,
        REGION_NODES_MAX,
        NODE_ADDRS_MAX,
        INVITATION_BOOTSTRAP_MAX,
        INVITATION_TOKEN_CHARS_MAX,
        INVITATION_VALIDITY_MS_MAX,
        JOIN_REQUEST_TTL_MS,
        JOIN_SUBMIT_AGE_MS_MAX,
        JOIN_PENDING_MAX,
        JOIN_PENDING_PER_INVITER,
        // defined beside the code that enforces them
        PartnershipType::COUNT,
        TRANSITION_SUBSETS_CHANGES_MAX,
        RECONCILE_MESSAGE_BYTES_MAX,
        RECONCILE_ROUNDS_MAX,
        RECONCILE_RANGE_IDS_MAX,
        RECONCILE_RANGE_SHORT_IDS_MAX,
    ]
}

/// The text of the top-level section `## <title>`, up to the next top-level heading.
fn section(title: &str) -> Result<&'static str, String> {
    let heading = format!("## {title}");
    let start = SPEC
        .lines()
        .scan(0usize, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| line.trim_end() == heading)
        .map(|(at, line)| at + line.len() + 1)
        .ok_or_else(|| format!("SPEC.md has no heading {heading:?}"))?;
    let rest = SPEC.get(start..).unwrap_or_default();
    let end = rest.find("\n## ").unwrap_or(rest.len());
    Ok(rest.get(..end).unwrap_or_default())
}

/// The cells of every markdown table row in `text` (header rows included, separators skipped).
fn table_rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|') && line.ends_with('|') && line.len() > 1)
        .map(|line| {
            line.get(1..line.len() - 1)
                .unwrap_or_default()
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .filter(|cells| {
            !cells
                .iter()
                .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        })
}

/// `` `name` `` → `name`; anything else is not a name cell.
fn code_cell(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.strip_suffix('`')
}

/// The leading number of a value cell, with digit-group spaces: `9 007 199 254 740 992 (2^53)`.
fn leading_number(cell: &str) -> Option<u128> {
    let digits: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || c.is_whitespace() || *c == '\u{202f}')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Constant name → value, from the first two columns of the tables of SPEC.md §7.
fn spec_limits() -> Result<BTreeMap<&'static str, u128>, String> {
    let mut out = BTreeMap::new();
    for cells in table_rows(section("7. Limits")?) {
        let (Some(name), Some(value)) = (cells.first().and_then(|c| code_cell(c)), cells.get(1))
        else {
            continue;
        };
        let value = leading_number(value)
            .ok_or_else(|| format!("§7: the value of {name} is not a number: {value:?}"))?;
        if out.insert(name, value).is_some() {
            return Err(format!("§7 lists {name} twice"));
        }
    }
    Ok(out)
}

/// Every code in the first column of the tables of SPEC.md §6.
fn spec_codes() -> Result<BTreeSet<&'static str>, String> {
    Ok(table_rows(section("6. Error codes")?)
        .filter_map(|cells| cells.first().and_then(|c| code_cell(c)))
        .collect())
}

#[test]
fn every_limit_is_in_the_limits_table_with_its_value() -> TestResult {
    let spec = spec_limits()?;
    let mut wrong = Vec::new();
    for (name, value) in limits() {
        match spec.get(name) {
            None => wrong.push(format!("{name} = {value} is missing from §7")),
            Some(listed) if *listed != value => {
                wrong.push(format!("{name}: §7 says {listed}, the code says {value}"));
            }
            Some(_) => {}
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("\n"))
    }
}

#[test]
fn every_constant_of_limits_rs_is_checked_here() -> TestResult {
    let known: BTreeSet<&str> = limits().into_iter().map(|(name, _)| name).collect();
    let declared: Vec<&str> = LIMITS_RS
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("pub const "))
        .filter_map(|rest| rest.split(':').next())
        .map(str::trim)
        .collect();
    if declared.len() < 10 {
        return Err(format!(
            "found only {} constants in limits.rs",
            declared.len()
        ));
    }
    let missing: Vec<&str> = declared
        .into_iter()
        .filter(|name| !known.contains(name))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "limits.rs declares {missing:?}: add them to `limits()` here and to SPEC.md §7"
        ))
    }
}

#[test]
fn every_error_code_is_in_the_error_code_table() -> TestResult {
    let spec = spec_codes()?;
    let missing: Vec<&str> = Error::ALL_CODES
        .iter()
        .copied()
        .filter(|code| !spec.contains(code))
        .collect();
    if !missing.is_empty() {
        return Err(format!("§6 does not list {missing:?}"));
    }
    let distinct: BTreeSet<&str> = Error::ALL_CODES.iter().copied().collect();
    if distinct.len() != Error::ALL_CODES.len() {
        return Err("Error::ALL_CODES repeats a code".into());
    }
    // Nor may SPEC.md list record codes that the crate cannot produce.
    let unknown: Vec<&str> = spec
        .iter()
        .copied()
        .filter(|code| !code.starts_with("reconcile.") && !distinct.contains(code))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "§6 lists {unknown:?}, which are not in Error::ALL_CODES"
        ))
    }
}

#[test]
fn every_reconcile_error_code_is_in_the_error_code_table() -> TestResult {
    let errors = [
        ReconcileError::MessageTooLarge { bytes: 0, max: 0 },
        ReconcileError::Malformed {
            reason: String::new(),
        },
        ReconcileError::TrailingBytes { bytes: 0 },
        ReconcileError::NonCanonical,
        ReconcileError::NoRanges,
        ReconcileError::MalformedBound {
            index: 0,
            reason: "",
        },
        ReconcileError::MalformedRange {
            index: 0,
            reason: "",
        },
        ReconcileError::TooManyIds {
            index: 0,
            count: 0,
            max: 0,
        },
        ReconcileError::MalformedIdList { index: 0 },
        ReconcileError::UnexpectedMode { index: 0, mode: "" },
        ReconcileError::TooManyRounds { max: 0 },
        ReconcileError::Finished,
    ];
    let spec = spec_codes()?;
    let codes: BTreeSet<&str> = errors.iter().map(ReconcileError::code).collect();
    if codes.len() != errors.len() {
        return Err("two ReconcileError variants share a code".into());
    }
    let missing: Vec<&str> = codes
        .iter()
        .copied()
        .filter(|code| !spec.contains(code))
        .collect();
    let listed: BTreeSet<&str> = spec
        .iter()
        .copied()
        .filter(|code| code.starts_with("reconcile."))
        .collect();
    let unknown: Vec<&str> = listed.difference(&codes).copied().collect();
    if missing.is_empty() && unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "§6 does not list {missing:?}; §6 lists {unknown:?}, which no ReconcileError has"
        ))
    }
}

#[test]
fn the_fingerprint_vectors_of_section_11_hold() -> TestResult {
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut two = [0u8; 32];
    two[0] = 2;
    let cases: [(&str, Vec<[u8; 32]>); 2] =
        [("{}", Vec::new()), ("{01 00…00, 02 00…00}", vec![one, two])];
    let text = section("11. Set reconciliation")?;
    for (set, ids) in cases {
        let prefix = format!("`fingerprint({set})` = `");
        let listed = text
            .lines()
            .find_map(|line| line.split_once(&prefix).map(|(_, rest)| rest))
            .and_then(|rest| rest.split('`').next())
            .ok_or_else(|| format!("§11 has no vector for fingerprint({set})"))?;
        let actual: String = Fingerprint::of_ids(&ids)
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if listed != actual {
            return Err(format!(
                "fingerprint({set}): §11 says {listed}, the code gives {actual}"
            ));
        }
    }
    Ok(())
}

#[test]
fn the_table_parser_reads_grouped_numbers_and_skips_separators() {
    assert_eq!(leading_number("65 536"), Some(65_536));
    assert_eq!(
        leading_number("9 007 199 254 740 992 (2^53)"),
        Some(1 << 53)
    );
    assert_eq!(leading_number("4 294 967 296 (4 GiB)"), Some(1 << 32));
    assert_eq!(leading_number("bytes"), None);
    let rows: Vec<Vec<&str>> = table_rows("| a | b |\n| --- | ---: |\n| `X` | 1 |\n").collect();
    assert_eq!(rows, vec![vec!["a", "b"], vec!["`X`", "1"]]);
}
