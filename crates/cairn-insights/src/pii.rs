//! PII recognisers: patterns that find candidates, validators that keep only
//! real values (Luhn for cards, mod-97 through `iban_validate` for IBANs,
//! `phonenumber` for phones, the SSA's ranges for US SSNs, `std::net` for IP
//! addresses), and context words that raise or lower a candidate's score the
//! way Presidio's context enhancer does (a card number after "order" or
//! "tracking" is a reference, not a card).
//!
//! Names and street addresses have no checksum: they are found by cue phrases
//! ("my name is", "Mr.", a signature line), a gazetteer of first names shipped in
//! `data/first_names.txt`, and address shapes (number, capitalised words, a
//! street suffix). Dates are personal only next to birth words.
//!
//! Offsets are in characters. Values never leave this module: an entity holds
//! `[REDACTED]` or, for cards, `****` and the last four digits.

use cairn_core::insights::PiiEntity;
use regex::Regex;
use std::collections::HashSet;
use std::sync::LazyLock;

const REDACTED: &str = "[REDACTED]";
/// Characters of context read before a candidate.
const BEFORE: usize = 48;
/// Characters of context read after a candidate.
const AFTER: usize = 24;

static FIRST_NAMES: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/first_names.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Capitalised words that start sentences or name things, never people.
static NOT_NAMES: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/not_names.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

fn re(p: &str) -> Regex {
    #[allow(clippy::unwrap_used)] // the patterns are constants, covered by tests
    Regex::new(p).unwrap()
}

struct Patterns {
    email: Regex,
    url: Regex,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
    date: Regex,
    api_key: Regex,
    generic_secret: Regex,
    person_cue: Regex,
    person_here: Regex,
    person_title: Regex,
    person_signoff: Regex,
    capitalised_pair: Regex,
    street: Regex,
}

static P: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    email: re(
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)+[A-Za-z]{2,24}",
    ),
    url: re(r#"\b(?:https?://|www\.)[^\s<>"'()\[\]{}]+[^\s<>"'()\[\]{}.,;:!?]"#),
    card: re(r"\b\d(?:[ \-]?\d){12,18}\b"),
    iban: re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    ssn: re(r"\b(\d{3})([- ]?)(\d{2})([- ]?)(\d{4})\b"),
    ipv4: re(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
    ipv6: re(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"),
    phone: re(r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{1,5}(?:[ .\-]?\d{1,5}){1,5}\b"),
    date: re(
        r"(?i)\b(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:19|20)?\d{2}|(?:19|20)\d{2}-\d{2}-\d{2}|(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.? \d{1,2}(?:st|nd|rd|th)?,? (?:19|20)\d{2}|\d{1,2}(?:st|nd|rd|th)? (?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?),? (?:19|20)\d{2})\b",
    ),
    api_key: re(
        r"\b(?:sk-(?:proj-)?[A-Za-z0-9_\-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}|pk_(?:live|test)_[A-Za-z0-9]{16,}|rk_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35}|glpat-[A-Za-z0-9_\-]{20,}|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})",
    ),
    generic_secret: re(r"\b[A-Za-z0-9_\-]{24,}\b"),
    person_cue: re(
        r"(?:\b(?:[Aa]gent|[Rr]ep|[Rr]epresentative|[Tt]echnician|[Dd]river|[Cc]ourier|[Aa]dvisor)|\b[Mm]y name,|\b[Mm]y name is|\b[Nn]ame:|\b[Tt]his is|\b[Ii] am|\b[Ii]'m|\b[Cc]all me|\b[Ss]peak(?:ing)? (?:to|with)|\b[Aa]sk for|\b[Dd]ear|\b[Hh]i|\b[Hh]ello|\b[Hh]ey|\b[Cc]ardholder:?|\b[Aa]ccount holder:?|\b[Ss]igned,?|\b[Ss]poke (?:to|with)|\b[Tt]alked to|\b[Cc]olleague|\b[Mm]y (?:husband|wife|son|daughter|manager|boss|partner|colleague)) (\p{Lu}\p{Ll}+(?:[\-']\p{Lu}\p{Ll}+)?(?: \p{Lu}\p{Ll}+(?:[\-']\p{Lu}\p{Ll}+)?)?)",
    ),
    person_here: re(
        r"(?:^|[.!?,] |\b[Hh]ey,? |\b[Hh]i,? )(\p{Lu}\p{Ll}+) here\b|\b(\p{Lu}\p{Ll}+) from (?:your|the) (?:support|service|sales|billing|help|customer)",
    ),
    person_title: re(
        r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.? ([A-Z][a-z]+(?:[\-'][A-Z][a-z]+)?(?: [A-Z][a-z]+)?)",
    ),
    person_signoff: re(
        r"(?:[Rr]egards|[Tt]hanks|[Tt]hank you|[Cc]heers|[Bb]est|[Ss]incerely|[Tt]hx)[,!.]?\s*[\-–—]?\s*([A-Z][a-z]+(?: [A-Z][a-z]+)?)\s*$",
    ),
    capitalised_pair: re(r"\b([A-Z][a-z]+) ([A-Z][a-z]+(?:[\-'][A-Z][a-z]+)?)\b"),
    street: re(
        r"\b\d{1,6}[A-Za-z]? (?:[A-Z][a-z]+\.? ){0,3}[A-Z][a-z]+ (?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|Parkway|Pkwy|Circle|Cir|Square|Sq|Highway|Hwy|Close|Crescent|Row|Loop|Trail|Plaza|Alley|Walk|Gardens)\b\.?(?:,? (?:Apt|Apartment|Suite|Ste|Unit|Flat|#) ?[A-Za-z0-9\-]+)?(?:, [A-Z][a-z]+(?: [A-Z][a-z]+)?(?:, [A-Z]{2})?(?: \d{5}(?:-\d{4})?)?)?",
    ),
});

/// Regions a national number (without `+`) is tried in.
const NATIONAL_REGIONS: &[phonenumber::country::Id] = &[
    phonenumber::country::Id::US,
    phonenumber::country::Id::GB,
    phonenumber::country::Id::CA,
    phonenumber::country::Id::AU,
    phonenumber::country::Id::IN,
    phonenumber::country::Id::DE,
    phonenumber::country::Id::FR,
];

/// Words that, shortly before a number, make it a reference rather than PII.
const REFERENCE_WORDS: &[&str] = &[
    "order",
    "tracking",
    "invoice",
    "ticket",
    "ref",
    "reference",
    "case",
    "confirmation",
    "booking",
    "shipment",
    "parcel",
    "package",
    "serial",
    "sku",
    "part",
    "model",
    "transaction",
    "txn",
    "receipt",
    "item",
    "po",
    "build",
    "version",
    "release",
    "request id",
    "error code",
    "promo code",
];

fn lower_window(chars: &[char], start: usize, end: usize) -> (String, String) {
    let b = start.saturating_sub(BEFORE);
    let a = (end + AFTER).min(chars.len());
    let before: String = chars[b..start].iter().collect::<String>().to_lowercase();
    let after: String = chars[end..a].iter().collect::<String>().to_lowercase();
    (before, after)
}

/// Words that, shortly before a number, make it a phone number.
const PHONE_WORDS: &[&str] = &[
    "phone",
    "call",
    "mobile",
    "cell",
    "tel",
    "telephone",
    "number",
    "reach me",
    "text",
    "whatsapp",
    "contact",
    "sms",
    "fax",
];

/// Where the last of `words` (as a whole word) starts in `hay`.
fn last_word_at(hay: &str, words: &[&str]) -> Option<usize> {
    words
        .iter()
        .flat_map(|w| {
            hay.match_indices(w).filter_map(move |(i, _)| {
                let pre = hay[..i].chars().next_back();
                let post = hay[i + w.len()..].chars().next();
                (!pre.is_some_and(char::is_alphanumeric)
                    && !post.is_some_and(char::is_alphanumeric))
                .then_some(i)
            })
        })
        .max()
}

fn has_word(hay: &str, words: &[&str]) -> bool {
    words.iter().any(|w| {
        hay.match_indices(w).any(|(i, _)| {
            let pre = hay[..i].chars().next_back();
            let post = hay[i + w.len()..].chars().next();
            !pre.is_some_and(char::is_alphanumeric) && !post.is_some_and(char::is_alphanumeric)
        })
    })
}

/// The Luhn checksum (cards).
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover,
/// JCB, Diners, UnionPay, Maestro).
fn card_prefix(d: &str) -> bool {
    let p2: u32 = d.get(..2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let p4: u32 = d.get(..4).and_then(|s| s.parse().ok()).unwrap_or(0);
    d.starts_with('4')
        || (51..=55).contains(&p2)
        || (2221..=2720).contains(&p4)
        || p2 == 34
        || p2 == 37
        || d.starts_with("6011")
        || d.starts_with("65")
        || (644..=649).contains(&(p4 / 10))
        || p2 == 35
        || p2 == 36
        || p2 == 38
        || p2 == 30
        || p2 == 62
        || p2 == 50
        || (56..=69).contains(&p2)
}

/// A valid US SSN: area not 000, 666 or 900–999; group not 00; serial not 0000.
pub fn valid_ssn(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// A candidate found in a text.
#[derive(Debug, Clone)]
struct Found {
    kind: &'static str,
    start: usize,
    end: usize,
    score: f32,
    detector: &'static str,
    value: String,
}

/// The offline PII recogniser.
#[derive(Debug, Clone)]
pub struct PiiRecognizer {
    threshold: f32,
}

impl Default for PiiRecognizer {
    fn default() -> Self {
        Self::new(0.5)
    }
}

impl cairn_core::insights::PiiScanner for PiiRecognizer {
    fn scan(&self, text: &str) -> Vec<PiiEntity> {
        self.find(text)
    }
}

impl PiiRecognizer {
    /// A recogniser that reports entities scoring at least `threshold`.
    pub fn new(threshold: f32) -> Self {
        LazyLock::force(&P);
        LazyLock::force(&FIRST_NAMES);
        Self { threshold }
    }

    /// The PII in `text`, in text order, non-overlapping.
    pub fn find(&self, text: &str) -> Vec<PiiEntity> {
        let chars: Vec<char> = text.chars().collect();
        // Byte offset → char offset.
        let mut char_of = vec![0usize; text.len() + 1];
        let mut ci = 0;
        for (b, _) in text.char_indices() {
            char_of[b] = ci;
            ci += 1;
        }
        char_of[text.len()] = ci;
        // Fill the gaps inside multi-byte characters (never match starts).
        for b in 1..text.len() {
            if !text.is_char_boundary(b) {
                char_of[b] = char_of[b - 1];
            }
        }
        let span = |s: usize, e: usize| (char_of[s], char_of[e]);
        let mut found: Vec<Found> = Vec::new();
        let mut push = |kind, (start, end): (usize, usize), score: f32, detector, value: String| {
            found.push(Found {
                kind,
                start,
                end,
                score: score.clamp(0.0, 1.0),
                detector,
                value,
            })
        };

        for m in P.email.find_iter(text) {
            push(
                "email",
                span(m.start(), m.end()),
                0.95,
                "email_pattern",
                REDACTED.into(),
            );
        }
        for m in P.url.find_iter(text) {
            push(
                "url",
                span(m.start(), m.end()),
                0.6,
                "url_pattern",
                REDACTED.into(),
            );
        }
        for m in P.api_key.find_iter(text) {
            push(
                "api_key",
                span(m.start(), m.end()),
                0.95,
                "secret_prefix",
                REDACTED.into(),
            );
        }
        for m in P.generic_secret.find_iter(text) {
            let s = m.as_str();
            let (digits, upper, lower) = s.chars().fold((0, 0, 0), |(d, u, l), c| {
                (
                    d + usize::from(c.is_ascii_digit()),
                    u + usize::from(c.is_ascii_uppercase()),
                    l + usize::from(c.is_ascii_lowercase()),
                )
            });
            if digits < 3 || (upper + lower) < 6 || digits == s.len() {
                continue;
            }
            let sp = span(m.start(), m.end());
            let (before, _) = lower_window(&chars, sp.0, sp.1);
            let secret_ctx = has_word(
                &before,
                &[
                    "key",
                    "token",
                    "secret",
                    "password",
                    "api key",
                    "apikey",
                    "credential",
                    "bearer",
                ],
            );
            if secret_ctx {
                push("api_key", sp, 0.8, "secret_context", REDACTED.into());
            }
        }
        for m in P.card.find_iter(text) {
            let digits: Vec<u8> = m
                .as_str()
                .bytes()
                .filter(u8::is_ascii_digit)
                .map(|b| b - b'0')
                .collect();
            if !(13..=19).contains(&digits.len()) || !luhn(&digits) {
                continue;
            }
            let ds: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            if !card_prefix(&ds) {
                continue;
            }
            let sp = span(m.start(), m.end());
            let (before, _) = lower_window(&chars, sp.0, sp.1);
            let mut score: f32 = 0.9;
            if has_word(
                &before,
                &[
                    "card",
                    "visa",
                    "mastercard",
                    "amex",
                    "credit",
                    "debit",
                    "cc",
                    "charged",
                ],
            ) {
                score += 0.1;
            }
            if has_word(&before, REFERENCE_WORDS) && !has_word(&before, &["card"]) {
                score -= 0.5;
            }
            let last4: String = ds[ds.len() - 4..].to_owned();
            push("credit_card", sp, score, "luhn", format!("****{last4}"));
        }
        for m in P.iban.find_iter(text) {
            let compact: String = m.as_str().chars().filter(|c| !c.is_whitespace()).collect();
            if iban::Iban::try_from(compact.as_str()).is_ok() {
                push(
                    "iban",
                    span(m.start(), m.end()),
                    0.95,
                    "iban_mod97",
                    REDACTED.into(),
                );
            }
        }
        for c in P.ssn.captures_iter(text) {
            let Some(m) = c.get(0) else { continue };
            let num = |i| {
                c.get(i)
                    .and_then(|g| g.as_str().parse::<u32>().ok())
                    .unwrap_or(0)
            };
            let (sep1, sep2) = (
                c.get(2).map_or("", |g| g.as_str()),
                c.get(4).map_or("", |g| g.as_str()),
            );
            if sep1 != sep2 || !valid_ssn(num(1), num(3), num(5)) {
                continue;
            }
            let sp = span(m.start(), m.end());
            let (before, _) = lower_window(&chars, sp.0, sp.1);
            let ctx = has_word(
                &before,
                &[
                    "ssn",
                    "social security",
                    "social",
                    "ss#",
                    "ss #",
                    "tax id",
                    "taxpayer",
                ],
            );
            let mut score: f32 = if sep1.is_empty() { 0.3 } else { 0.6 };
            if ctx {
                score += 0.35;
            }
            if has_word(&before, REFERENCE_WORDS) && !ctx {
                score -= 0.4;
            }
            push("us_ssn", sp, score, "ssn_ranges", REDACTED.into());
        }
        for m in P.ipv4.find_iter(text) {
            if m.as_str().parse::<std::net::Ipv4Addr>().is_err() {
                continue;
            }
            let sp = span(m.start(), m.end());
            let (before, _) = lower_window(&chars, sp.0, sp.1);
            let pre = chars[..sp.0].iter().rev().take(2).collect::<String>();
            let versiony = pre.starts_with('v')
                || pre.starts_with('V')
                || has_word(
                    &before,
                    &[
                        "version", "release", "build", "firmware", "app", "update", "upgrade",
                        "ver",
                    ],
                );
            let mut score: f32 = 0.85;
            if has_word(
                &before,
                &["ip", "address", "server", "from", "login", "logged"],
            ) {
                score += 0.1;
            }
            if versiony {
                score -= 0.6;
            }
            push("ip_address", sp, score, "ip_parse", REDACTED.into());
        }
        for m in P.ipv6.find_iter(text) {
            let s = m.as_str().trim_end_matches('.');
            let before = text[..m.start()].chars().next_back();
            if before.is_some_and(char::is_alphanumeric) || s.parse::<std::net::Ipv6Addr>().is_err()
            {
                continue;
            }
            let m_end = m.start() + s.len();
            // A clock time like 10:30:00 parses too; require a hex letter or `::`.
            if !s.contains("::") && !s.chars().any(|c| c.is_ascii_alphabetic()) {
                continue;
            }
            push(
                "ip_address",
                span(m.start(), m_end),
                0.85,
                "ip_parse",
                REDACTED.into(),
            );
        }
        for m in P.phone.find_iter(text) {
            let s = m.as_str();
            let digits = s.bytes().filter(u8::is_ascii_digit).count();
            if !(7..=15).contains(&digits) {
                continue;
            }
            // Dates and dotted versions or addresses are not phones.
            if P.date.is_match(s)
                || s.parse::<std::net::Ipv4Addr>().is_ok()
                || s.matches('.').count() >= 3
            {
                continue;
            }
            let sp = span(m.start(), m.end());
            // The match may start inside a longer run of digits or a word.
            if sp.0 > 0 && chars[sp.0 - 1].is_alphanumeric() {
                continue;
            }
            // International numbers carry their country; national ones are
            // tried in the regions most support traffic comes from.
            let valid = if s.trim_start().starts_with('+') {
                phonenumber::parse(None, s).is_ok_and(|n| phonenumber::is_valid(&n))
            } else {
                NATIONAL_REGIONS.iter().any(|r| {
                    phonenumber::parse(Some(*r), s).is_ok_and(|n| phonenumber::is_valid(&n))
                })
            };
            let (before, _) = lower_window(&chars, sp.0, sp.1);
            let ctx = has_word(&before, PHONE_WORDS);
            let separated = s.contains(['-', ' ', '.', '(', '+']);
            let mut score: f32 = match (valid, separated) {
                (true, true) => 0.75,
                (true, false) => 0.45,
                (false, _) => continue,
            };
            if ctx {
                score += 0.2;
            }
            // A reference word counts against unless a phone word is nearer.
            let reference = last_word_at(&before, REFERENCE_WORDS);
            if reference.is_some() && reference > last_word_at(&before, PHONE_WORDS) {
                score -= 0.5;
            }
            push("phone", sp, score, "phonenumber", REDACTED.into());
        }
        for m in P.date.find_iter(text) {
            let sp = span(m.start(), m.end());
            let (before, after) = lower_window(&chars, sp.0, sp.1);
            let birth = ["born", "birth", "dob", "d.o.b", "birthday", "birthdate"];
            if has_word(&before, &birth) || has_word(&after, &["birthday"]) {
                push("date_of_birth", sp, 0.85, "date_context", REDACTED.into());
            }
        }
        for m in P.street.find_iter(text) {
            push(
                "street_address",
                span(m.start(), m.end()),
                0.85,
                "address_pattern",
                REDACTED.into(),
            );
        }
        self.people(text, &chars, &span, &mut found);
        resolve(found, self.threshold)
    }

    fn people(
        &self,
        text: &str,
        chars: &[char],
        span: &dyn Fn(usize, usize) -> (usize, usize),
        found: &mut Vec<Found>,
    ) {
        let mut add = |s: usize, e: usize, score: f32, detector: &'static str| {
            let (cs, ce) = span(s, e);
            let name: String = chars[cs..ce].iter().collect();
            let first = name.split([' ', '-', '\'']).next().unwrap_or("");
            if NOT_NAMES.contains(first) {
                return;
            }
            // A single word after a weak cue ("Hi", "I'm") needs the gazetteer.
            let known = FIRST_NAMES.contains(first);
            let score = if known { score } else { score - 0.3 };
            found.push(Found {
                kind: "person",
                start: cs,
                end: ce,
                score,
                detector,
                value: REDACTED.into(),
            });
        };
        for c in P.person_cue.captures_iter(text) {
            if let Some(g) = c.get(1) {
                let strong = c.get(0).is_some_and(|m| {
                    let s = m.as_str().to_lowercase();
                    s.starts_with("my name") || s.starts_with("name:") || s.contains("holder")
                });
                add(
                    g.start(),
                    g.end(),
                    if strong { 0.95 } else { 0.75 },
                    "name_cue",
                );
            }
        }
        for c in P.person_here.captures_iter(text) {
            if let Some(g) = c.get(1).or_else(|| c.get(2)) {
                // Weak cues: only names the gazetteer knows get through.
                add(g.start(), g.end(), 0.75, "name_cue");
            }
        }
        for c in P.person_title.captures_iter(text) {
            if let Some(g) = c.get(0) {
                add(g.start(), g.end(), 0.9, "name_title");
            }
        }
        for line in text.lines().rev().take(2) {
            if let Some(c) = P.person_signoff.captures(line)
                && let Some(g) = c.get(1)
            {
                let off = line.as_ptr() as usize - text.as_ptr() as usize;
                add(off + g.start(), off + g.end(), 0.8, "signature");
            }
        }
        for c in P.capitalised_pair.captures_iter(text) {
            let (Some(f), Some(l)) = (c.get(1), c.get(2)) else {
                continue;
            };
            if FIRST_NAMES.contains(f.as_str()) && !NOT_NAMES.contains(l.as_str()) {
                add(f.start(), l.end(), 0.8, "name_gazetteer");
            }
        }
    }
}

/// Keeps the best of overlapping candidates (higher score, then longer), drops
/// those under `threshold`, and returns them in text order.
fn resolve(mut found: Vec<Found>, threshold: f32) -> Vec<PiiEntity> {
    found.retain(|f| f.score >= threshold && f.end > f.start);
    found.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then((b.end - b.start).cmp(&(a.end - a.start)))
    });
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|k| k.start);
    kept.into_iter()
        .map(|f| PiiEntity {
            kind: f.kind.to_owned(),
            start: f.start,
            end: f.end,
            score: (f.score * 100.0).round() / 100.0,
            detector: f.detector.to_owned(),
            value: f.value,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, String)> {
        let chars: Vec<char> = text.chars().collect();
        PiiRecognizer::default()
            .find(text)
            .into_iter()
            .map(|e| (e.kind, chars[e.start..e.end].iter().collect()))
            .collect()
    }

    fn has(text: &str, kind: &str, value: &str) -> bool {
        kinds(text).iter().any(|(k, v)| k == kind && v == value)
    }

    fn none_of(text: &str, kind: &str) -> bool {
        kinds(text).iter().all(|(k, _)| k != kind)
    }

    #[test]
    fn cards_need_luhn_and_a_network_prefix() {
        assert!(has(
            "my card is 4111 1111 1111 1111",
            "credit_card",
            "4111 1111 1111 1111"
        ));
        assert!(has(
            "charged on 5500-0000-0000-0004 twice",
            "credit_card",
            "5500-0000-0000-0004"
        ));
        assert!(has(
            "amex 378282246310005",
            "credit_card",
            "378282246310005"
        ));
        // Fails Luhn.
        assert!(none_of("my card is 4111 1111 1111 1112", "credit_card"));
        // A 16-digit reference that fails Luhn.
        assert!(none_of("reference 1234567890123456 please", "credit_card"));
        let e = PiiRecognizer::default().find("card 4111111111111111");
        assert_eq!(e[0].value, "****1111");
    }

    #[test]
    fn a_luhn_valid_order_number_is_a_reference() {
        assert!(none_of(
            "order number 4111111111111111 has not arrived",
            "credit_card"
        ));
    }

    #[test]
    fn ibans_are_checked_with_mod_97() {
        assert!(has(
            "IBAN DE89 3704 0044 0532 0130 00 please",
            "iban",
            "DE89 3704 0044 0532 0130 00"
        ));
        assert!(has(
            "send to GB82WEST12345698765432",
            "iban",
            "GB82WEST12345698765432"
        ));
        assert!(none_of("send to GB82WEST12345698765433", "iban"));
    }

    #[test]
    fn ssns_need_valid_ranges_and_context_for_bare_digits() {
        assert!(has("my SSN is 123-45-6789", "us_ssn", "123-45-6789"));
        assert!(none_of("my SSN is 666-45-6789", "us_ssn"));
        assert!(none_of("ssn 000-12-3456", "us_ssn"));
        assert!(none_of("ssn 923-12-3456", "us_ssn"));
        assert!(has(
            "social security number 123456789",
            "us_ssn",
            "123456789"
        ));
        assert!(none_of("ticket 123-45-6789 is still open", "us_ssn"));
    }

    #[test]
    fn phones_are_parsed_and_validated() {
        assert!(has("call me at (415) 555-2671", "phone", "(415) 555-2671"));
        assert!(has(
            "my mobile: +44 20 7946 0958",
            "phone",
            "+44 20 7946 0958"
        ));
        assert!(none_of("tracking 1Z999AA10123456784", "phone"));
        assert!(none_of("order 555-1234-999-01 is late", "phone"));
    }

    #[test]
    fn ip_addresses_but_not_versions() {
        assert!(has(
            "login from 203.0.113.7 was not me",
            "ip_address",
            "203.0.113.7"
        ));
        assert!(has(
            "from 2001:db8::8a2e:370:7334 today",
            "ip_address",
            "2001:db8::8a2e:370:7334"
        ));
        assert!(none_of(
            "after updating to version 2.4.1.3 it crashes",
            "ip_address"
        ));
        assert!(none_of("it broke at 10:30:00 today", "ip_address"));
        assert!(none_of("bad address 300.1.1.1", "ip_address"));
    }

    #[test]
    fn dates_are_personal_only_as_birth_dates() {
        assert!(has(
            "my date of birth is 04/12/1985",
            "date_of_birth",
            "04/12/1985"
        ));
        assert!(has(
            "I was born on March 3, 1990",
            "date_of_birth",
            "March 3, 1990"
        ));
        assert!(none_of(
            "the invoice dated 04/12/2024 is wrong",
            "date_of_birth"
        ));
    }

    #[test]
    fn emails_urls_and_secrets() {
        assert!(has(
            "write to jane.doe+x@example.co.uk now",
            "email",
            "jane.doe+x@example.co.uk"
        ));
        assert!(has(
            "see https://example.com/a?b=1.",
            "url",
            "https://example.com/a?b=1"
        ));
        assert!(has(
            "my key sk-proj-abcdefghijklmnopqrstuvwx123",
            "api_key",
            "sk-proj-abcdefghijklmnopqrstuvwx123"
        ));
        assert!(has(
            "token: a8F3kd92LmQp0zXy7Rt5Vb1Nc4We6Hs2",
            "api_key",
            "a8F3kd92LmQp0zXy7Rt5Vb1Nc4We6Hs2"
        ));
        assert!(has(
            "AWS AKIAIOSFODNN7EXAMPLE leaked",
            "api_key",
            "AKIAIOSFODNN7EXAMPLE"
        ));
    }

    #[test]
    fn names_and_addresses() {
        assert!(has(
            "Hello, my name is Maria Gonzalez and I need help",
            "person",
            "Maria Gonzalez"
        ));
        assert!(has("Please ask Dr. Patel to call", "person", "Dr. Patel"));
        assert!(has("It still fails.\nThanks, Robert", "person", "Robert"));
        assert!(has(
            "ship it to 742 Evergreen Terrace, Springfield",
            "street_address",
            "742 Evergreen Terrace, Springfield"
        ));
        assert!(has(
            "I live at 1600 Pennsylvania Avenue",
            "street_address",
            "1600 Pennsylvania Avenue"
        ));
        assert!(none_of("Hi Support, the Dashboard is broken", "person"));
        assert!(none_of("I'm Unable to log in", "person"));
    }

    #[test]
    fn offsets_count_characters() {
        let t = "café ☕ mail: zoe@example.com";
        let e = PiiRecognizer::default().find(t);
        let chars: Vec<char> = t.chars().collect();
        let v: String = chars[e[0].start..e[0].end].iter().collect();
        assert_eq!(v, "zoe@example.com");
    }
}
