//! Parsing HTML, DOCX and PDF documents, and refusing bad ones with a clear error.

#![allow(clippy::unwrap_used)]

mod common;

use cairn_retrieval::formats::{ParseError, ParseLimits, parse_bytes, parse_bytes_limited};
use common::{docx, one_page_pdf, pdf_of};
use std::io::Write;

fn block_texts(doc: &cairn_retrieval::chunk::ParsedDocument) -> Vec<(Vec<String>, String)> {
    doc.blocks
        .iter()
        .map(|b| (b.section_path.clone(), doc.text[b.range.clone()].to_owned()))
        .collect()
}

#[test]
fn html_sections_blocks_and_noise() {
    let html = r#"<!doctype html><html><head><title>Help center</title><style>p{}</style></head>
      <body><nav><a href="/">Home</a></nav>
      <h1>Refunds</h1><p>Refunds take   five days.</p>
      <h2>Exceptions</h2><ul><li><p>Gift cards</p></li><li>Software</li></ul>
      <script>alert('x')</script><div>Loose text in a div.</div></body></html>"#;
    let doc = parse_bytes("html", html.as_bytes(), "fallback").unwrap();
    assert_eq!(doc.title, "Refunds");
    let blocks = block_texts(&doc);
    assert_eq!(
        blocks[0],
        (
            vec!["Refunds".to_owned()],
            "Refunds take five days.".to_owned()
        )
    );
    assert_eq!(
        blocks[1],
        (
            vec!["Refunds".to_owned(), "Exceptions".to_owned()],
            "Gift cards".to_owned()
        )
    );
    assert_eq!(blocks[2].1, "Software");
    assert_eq!(blocks[3].1, "Loose text in a div.");
    assert!(
        !doc.text.contains("alert") && !doc.text.contains("Home"),
        "{}",
        doc.text
    );
}

#[test]
fn docx_headings_paragraphs_and_entities() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Invoices</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">Download it under </w:t></w:r><w:r><w:t>Orders &amp; Billing.</w:t></w:r></w:p>
<w:p><w:pPr><w:pStyle w:val="Heading2"/></w:pPr><w:r><w:t>VAT</w:t></w:r></w:p>
<w:p><w:r><w:t>Add your VAT number first.</w:t></w:r></w:p>
</w:body></w:document>"#;
    let doc = parse_bytes("docx", &docx(xml), "fallback").unwrap();
    assert_eq!(doc.title, "Invoices");
    let blocks = block_texts(&doc);
    assert_eq!(
        blocks[0],
        (
            vec!["Invoices".to_owned()],
            "Download it under Orders & Billing.".to_owned()
        )
    );
    assert_eq!(blocks[1].0, vec!["Invoices".to_owned(), "VAT".to_owned()]);
}

#[test]
fn bad_docx_files_get_clear_errors() {
    assert!(matches!(
        parse_bytes("docx", b"not a zip at all", "x"),
        Err(ParseError::Corrupt(_))
    ));
    // Password-protected Office documents are OLE containers.
    let mut ole = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    ole.extend_from_slice(&[0; 512]);
    assert_eq!(
        parse_bytes("docx", &ole, "x").unwrap_err(),
        ParseError::Encrypted
    );
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("other.xml", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"<x/>").unwrap();
        z.finish().unwrap();
    }
    let e = parse_bytes("docx", &buf.into_inner(), "x").unwrap_err();
    assert!(e.to_string().contains("word/document.xml"), "{e}");
    let empty = docx(r#"<w:document xmlns:w="w"><w:body><w:p/></w:body></w:document>"#);
    assert_eq!(
        parse_bytes("docx", &empty, "x").unwrap_err(),
        ParseError::Empty
    );
}

/// A one-page PDF showing `text`.
fn pdf(text: &str) -> Vec<u8> {
    one_page_pdf(format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET").as_bytes())
}

#[test]
fn pdf_text_with_page_numbers() {
    let doc = parse_bytes(
        "pdf",
        &pdf("Express delivery arrives the next day."),
        "Shipping",
    )
    .unwrap();
    assert_eq!(doc.title, "Shipping");
    assert!(
        doc.text.contains("Express delivery arrives the next day."),
        "{:?}",
        doc.text
    );
    assert_eq!(doc.blocks[0].page, Some(1));
}

#[test]
fn bad_pdfs_and_other_limits() {
    assert!(matches!(
        parse_bytes("pdf", b"%PDF-1.4 garbage", "x"),
        Err(ParseError::Corrupt(_))
    ));
    assert_eq!(
        parse_bytes("pdf", &pdf(""), "x").unwrap_err(),
        ParseError::Empty
    );
    assert!(matches!(
        parse_bytes("exe", b"MZ", "x"),
        Err(ParseError::Unsupported(_))
    ));
    let big = vec![b'a'; 10 * 1024 * 1024 + 1];
    assert_eq!(
        parse_bytes("txt", &big, "x").unwrap_err(),
        ParseError::TooLarge(10)
    );
    assert!(matches!(
        parse_bytes("txt", &[0xff, 0xfe, 0x00], "x"),
        Err(ParseError::Corrupt(_))
    ));
    assert_eq!(
        parse_bytes("md", b"   \n\n", "x").unwrap_err(),
        ParseError::Empty
    );
}

#[test]
fn deeply_nested_html_fails_fast_instead_of_crashing() {
    // 200,000 nested divs overflowed the stack of the recursive walk and
    // aborted the process; the tree builder alone is quadratic in the depth.
    let deep = format!(
        "<html><body>{}x{}</body></html>",
        "<div>".repeat(200_000),
        "</div>".repeat(200_000)
    );
    let started = std::time::Instant::now();
    assert_eq!(
        parse_bytes("html", deep.as_bytes(), "x").unwrap_err(),
        ParseError::TooDeep(cairn_retrieval::formats::MAX_HTML_DEPTH)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Unclosed paragraphs and list items are not depth.
    let flat = format!(
        "<html><body><ul>{}</ul></body></html>",
        "<li><p>item ".repeat(5_000)
    );
    assert!(parse_bytes("html", flat.as_bytes(), "x").is_ok());
}

#[test]
fn nesting_within_the_limit_needs_no_deep_stack() {
    // 500 levels (under the cap) walked on a thread with a 64 KiB stack: the
    // walk keeps its own stack, so the thread's depth does not grow with the page.
    let html = format!(
        "<html><body>{}<p>deep text</p>{}</body></html>",
        "<div><section>".repeat(250),
        "</section></div>".repeat(250)
    );
    let doc = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || cairn_retrieval::formats::parse_html(&html, "t"))
        .unwrap()
        .join()
        .expect("no stack overflow")
        .unwrap();
    assert!(doc.text.contains("deep text"));
}

#[test]
fn decompression_bombs_are_refused() {
    let limits = ParseLimits {
        max_decompressed_bytes: 1024 * 1024,
        ..ParseLimits::default()
    };
    // DOCX: 8 MB of XML that zips to a few KB.
    let para = "<w:p><w:r><w:t>aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa</w:t></w:r></w:p>";
    let xml = format!(
        r#"<w:document xmlns:w="w"><w:body>{}</w:body></w:document>"#,
        para.repeat(8 * 1024 * 1024 / para.len())
    );
    let bomb = docx(&xml);
    assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
    assert_eq!(
        parse_bytes_limited("docx", &bomb, "x", limits).unwrap_err(),
        ParseError::Decompressed(1)
    );
    // PDF: a Flate content stream of 8 MB of spaces.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![b' '; 8 * 1024 * 1024]).unwrap();
    let stream = z.finish().unwrap();
    let mut content = format!(
        "<< /Length {} /Filter /FlateDecode >>\nstream\n",
        stream.len()
    )
    .into_bytes();
    content.extend_from_slice(&stream);
    content.extend_from_slice(b"\nendstream");
    let bomb = pdf_of(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
        content,
    ]);
    assert_eq!(
        parse_bytes_limited("pdf", &bomb, "x", limits).unwrap_err(),
        ParseError::Decompressed(1)
    );
    // Under the default cap (100 MB) the same DOCX is fine.
    assert!(parse_bytes("docx", &bomb_docx_ok(), "x").is_ok());
}

fn bomb_docx_ok() -> Vec<u8> {
    let para = "<w:p><w:r><w:t>aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa</w:t></w:r></w:p>";
    docx(&format!(
        r#"<w:document xmlns:w="w"><w:body>{}</w:body></w:document>"#,
        para.repeat(2 * 1024 * 1024 / para.len())
    ))
}

/// A PDF whose form XObject draws itself (`tests/fixtures/self-invoking-xobject.pdf`):
/// pdf-extract recurses until the stack overflows. The crate's child-process
/// parser is proved against it in `crates/cairn/tests/hardening.rs`.
#[test]
fn the_self_invoking_pdf_fixture_is_well_formed() {
    // The file itself is valid: it is the parser's recursion that breaks on it.
    let bytes = include_bytes!("fixtures/self-invoking-xobject.pdf");
    let doc = pdf_extract::Document::load_mem(bytes).unwrap();
    assert_eq!(doc.get_pages().len(), 1);
}
