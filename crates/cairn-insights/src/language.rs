//! Language of a text with `whatlang` (trigram profiles, offline), reported as
//! ISO 639-1 where the language has such a code. Short or unreliable texts in
//! Latin script fall back to English, the language of most support traffic;
//! `und` when nothing can be said.

/// Characters of a message that language detection looks at.
const DETECT_CHARS: usize = 1000;

/// The language code of `text`.
pub fn detect(text: &str) -> String {
    // The language shows in the first sentences; whatlang's cost grows with
    // the text, so a long message is judged on its first DETECT_CHARS.
    let text = match text.char_indices().nth(DETECT_CHARS) {
        Some((cut, _)) => &text[..cut],
        None => text,
    };
    let info = whatlang::detect(text);
    let words = text.split_whitespace().count();
    match info {
        Some(i) if i.is_reliable() || (words >= 4 && i.confidence() > 0.3) => {
            to_639_1(i.lang().code()).to_owned()
        }
        _ if text.chars().any(char::is_alphabetic)
            && text
                .chars()
                .filter(|c| c.is_alphabetic())
                .all(|c| c.is_ascii()) =>
        {
            "en".to_owned()
        }
        Some(i) => to_639_1(i.lang().code()).to_owned(),
        None => "und".to_owned(),
    }
}

fn to_639_1(code: &'static str) -> &'static str {
    match code {
        "eng" => "en",
        "spa" => "es",
        "fra" => "fr",
        "deu" => "de",
        "ita" => "it",
        "por" => "pt",
        "nld" => "nl",
        "rus" => "ru",
        "ukr" => "uk",
        "pol" => "pl",
        "ces" => "cs",
        "swe" => "sv",
        "dan" => "da",
        "nob" => "nb",
        "fin" => "fi",
        "tur" => "tr",
        "ell" => "el",
        "heb" => "he",
        "ara" => "ar",
        "hin" => "hi",
        "ben" => "bn",
        "jpn" => "ja",
        "kor" => "ko",
        "cmn" => "zh",
        "vie" => "vi",
        "tha" => "th",
        "ind" => "id",
        "ron" => "ro",
        "hun" => "hu",
        "bul" => "bg",
        "hrv" => "hr",
        "srp" => "sr",
        "slk" => "sk",
        "slv" => "sl",
        "cat" => "ca",
        "lit" => "lt",
        "lav" => "lv",
        "est" => "et",
        "pes" => "fa",
        "urd" => "ur",
        "tam" => "ta",
        "tel" => "te",
        "mar" => "mr",
        "afr" => "af",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn common_languages() {
        assert_eq!(
            super::detect("My order has not arrived and I need it for tomorrow"),
            "en"
        );
        assert_eq!(
            super::detect("Mi pedido no ha llegado y lo necesito para mañana"),
            "es"
        );
        assert_eq!(
            super::detect("Ma commande n'est pas arrivée et j'en ai besoin demain"),
            "fr"
        );
        assert_eq!(
            super::detect("Meine Bestellung ist nicht angekommen, ich brauche sie morgen"),
            "de"
        );
        assert_eq!(super::detect("ok"), "en");
        assert_eq!(super::detect("1234"), "und");
    }

    #[test]
    fn a_long_message_is_judged_on_its_beginning() {
        // Spanish filling the first DETECT_CHARS, then far more German: only
        // the beginning is read, so the answer is Spanish (and the cost of a
        // 200 KB message is that of 1,000 characters).
        let spanish = "Mi pedido no ha llegado y lo necesito para mañana. ".repeat(25);
        let german = "Meine Bestellung ist nicht angekommen, ich brauche sie morgen. ".repeat(3000);
        assert!(spanish.chars().count() >= super::DETECT_CHARS);
        assert_eq!(super::detect(&format!("{spanish}{german}")), "es");
        assert_eq!(super::detect(&german), "de");
    }
}
