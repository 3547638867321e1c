//! Property tests for the document path, which reads whatever users upload:
//! every parser takes any bytes (and near-valid inputs of its format) and
//! returns a document or an error, never a panic; the chunker's offsets always
//! fall on character boundaries, each chunk is exactly the text between its
//! offsets, and the chunks cover every word of every block.

#![allow(clippy::unwrap_used)]

mod common;

use cairn_retrieval::chunk::{ChunkSettings, chunk, parse_markdown, parse_text};
use cairn_retrieval::formats::{parse_bytes, parse_html};
use common::{docx, one_page_pdf};
use proptest::prelude::*;

/// Text with Markdown structure, whitespace of every kind and multi-byte
/// characters (accents, CJK, emoji, combining marks).
fn markdown() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("# ".to_owned()),
            Just("\n## ".to_owned()),
            Just("\n\n".to_owned()),
            Just("\n- ".to_owned()),
            Just("\n```\n".to_owned()),
            Just("\n> ".to_owned()),
            Just("| a | b |\n|---|---|\n".to_owned()),
            Just("\t".to_owned()),
            Just("\r\n".to_owned()),
            Just("\u{00a0}".to_owned()),
            "[a-zA-Z]{1,12}".prop_map(|w| format!("{w} ")),
            "[éüß日本語🙂\u{0301}]{1,4}".prop_map(|w| format!("{w} ")),
            "\\PC{1,6}",
        ],
        0..120,
    )
    .prop_map(|parts| parts.concat())
}

fn html() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "<(h[1-6]|p|div|li|ul|table|td|tr|pre|script|style|nav|title|br|img)( class=\"x\")?>",
            "</(h[1-6]|p|div|li|ul|table|td|tr|pre|script|style|nav|title)>",
            Just("&amp;".to_owned()),
            Just("&#x1F642;".to_owned()),
            Just("<!--".to_owned()),
            Just("<![CDATA[".to_owned()),
            "[a-zA-Z éü日]{1,12}",
            "\\PC{1,4}",
        ],
        0..100,
    )
    .prop_map(|parts| parts.concat())
}

fn docx_xml() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("<w:p>".to_owned()),
            Just("</w:p>".to_owned()),
            Just("<w:r><w:t>".to_owned()),
            Just("</w:t></w:r>".to_owned()),
            Just("<w:pPr><w:pStyle w:val=\"Heading1\"/></w:pPr>".to_owned()),
            Just("<w:tab/>".to_owned()),
            Just("&amp;".to_owned()),
            Just("&bogus;".to_owned()),
            "[a-zA-Z éü日<>/]{1,10}",
        ],
        0..60,
    )
    .prop_map(|parts| {
        format!(
            "<w:document xmlns:w=\"w\"><w:body>{}</w:body></w:document>",
            parts.concat()
        )
    })
}

fn pdf_content() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b"BT /F1 12 Tf 72 720 Td ".to_vec()),
            Just(b"(Refunds take five days.) Tj ".to_vec()),
            Just(b"[(A) -250 (B)] TJ ".to_vec()),
            Just(b"ET ".to_vec()),
            Just(b"q 1 0 0 1 0 0 cm Q ".to_vec()),
            Just(b"/F9 99999999 Tf ".to_vec()),
            Just(b"<48656c6c6f> Tj ".to_vec()),
            Just(b"T* ' \" ".to_vec()),
            prop::collection::vec(any::<u8>(), 1..8),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Applies random byte edits to `bytes` (flip, insert, delete, truncate).
fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..4), 0..12).prop_map(move |edits| {
        let mut b = bytes.clone();
        for (at, byte, op) in edits {
            if b.is_empty() {
                break;
            }
            let at = at % b.len();
            match op {
                0 => b[at] = byte,
                1 => b.insert(at, byte),
                2 => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
        }
        b
    })
}

fn check_chunks(
    doc: &cairn_retrieval::chunk::ParsedDocument,
    settings: ChunkSettings,
) -> Result<(), TestCaseError> {
    let chars: Vec<char> = doc.text.chars().collect();
    let chunks = chunk(doc, settings);
    for c in &chunks {
        prop_assert!(
            c.start < c.end && c.end <= chars.len(),
            "{c:?} in {} chars",
            chars.len()
        );
        let between: String = chars[c.start..c.end].iter().collect();
        prop_assert_eq!(&between, &c.text);
    }
    // Every word of every block is inside some chunk.
    let mut covered = vec![false; chars.len()];
    for c in &chunks {
        covered[c.start..c.end].iter_mut().for_each(|x| *x = true);
    }
    let byte_to_char: std::collections::HashMap<usize, usize> = doc
        .text
        .char_indices()
        .enumerate()
        .map(|(ci, (b, _))| (b, ci))
        .collect();
    for b in &doc.blocks {
        prop_assert!(
            doc.text.is_char_boundary(b.range.start) && doc.text.is_char_boundary(b.range.end)
        );
        for (off, ch) in doc.text[b.range.clone()].char_indices() {
            if !ch.is_whitespace() {
                let ci = byte_to_char[&(b.range.start + off)];
                prop_assert!(
                    covered[ci],
                    "char {ci} {ch:?} of block {:?} is in no chunk",
                    b.range
                );
            }
        }
    }
    Ok(())
}

fn settings() -> impl Strategy<Value = ChunkSettings> {
    (0usize..300, 0usize..120).prop_map(|(max_tokens, overlap_tokens)| ChunkSettings {
        max_tokens,
        overlap_tokens,
    })
}

proptest! {
    #[test]
    fn any_bytes_in_any_format_parse_or_fail_cleanly(
        kind in prop::sample::select(vec!["md", "txt", "html", "pdf", "docx", "bin"]),
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = parse_bytes(kind, &bytes, "t");
    }

    #[test]
    fn markdown_chunks_sit_on_char_boundaries_and_cover_the_text(text in markdown(), s in settings()) {
        check_chunks(&parse_markdown(&text, "t"), s)?;
    }

    #[test]
    fn plain_text_chunks_sit_on_char_boundaries_and_cover_the_text(text in markdown(), s in settings()) {
        check_chunks(&parse_text(&text, "t"), s)?;
    }

    #[test]
    fn html_parses_and_chunks_cleanly(text in html(), s in settings()) {
        if let Ok(doc) = parse_html(&text, "t") {
            check_chunks(&doc, s)?;
        }
    }

    #[test]
    fn docx_with_any_body_parses_or_fails_cleanly(xml in docx_xml(), s in settings()) {
        if let Ok(doc) = parse_bytes("docx", &docx(&xml), "t") {
            check_chunks(&doc, s)?;
        }
    }

    #[test]
    fn mutated_docx_files_parse_or_fail_cleanly(bytes in mutated(docx("<w:document xmlns:w=\"w\"><w:body><w:p><w:r><w:t>Refunds take five days.</w:t></w:r></w:p></w:body></w:document>"))) {
        let _ = parse_bytes("docx", &bytes, "t");
    }

    #[test]
    fn pdf_with_any_page_content_parses_or_fails_cleanly(content in pdf_content(), s in settings()) {
        if let Ok(doc) = parse_bytes("pdf", &one_page_pdf(&content), "t") {
            check_chunks(&doc, s)?;
        }
    }

    #[test]
    fn mutated_pdfs_parse_or_fail_cleanly(bytes in mutated(one_page_pdf(b"BT /F1 12 Tf 72 720 Td (Refunds take five days.) Tj ET"))) {
        let _ = parse_bytes("pdf", &bytes, "t");
    }
}
