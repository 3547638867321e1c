//! HTML, DOCX and PDF into [`ParsedDocument`]s: the text a reader would see, in
//! blocks under their headings (pages for PDF). A corrupt, encrypted or empty
//! file is an error for that document, never a panic.

use crate::chunk::{Block, ParsedDocument, parse_markdown, parse_text};
use std::io::Read;

/// Why a document could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The format is not supported.
    #[error("unsupported document type `{0}` (supported: md, txt, html, pdf, docx)")]
    Unsupported(String),
    /// The file is larger than the limit.
    #[error("the document is larger than the {0} MB limit")]
    TooLarge(u64),
    /// The file is damaged or not what its type says.
    #[error("the document is corrupt: {0}")]
    Corrupt(String),
    /// The file is password-protected.
    #[error("the document is encrypted; upload an unprotected copy")]
    Encrypted,
    /// The file has no text.
    #[error("the document has no text")]
    Empty,
}

/// Default size limit: 10 MB.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Builds a document's text and blocks as content is found.
struct DocBuilder {
    text: String,
    blocks: Vec<Block>,
    path: Vec<(usize, String)>,
    title: Option<String>,
}

impl DocBuilder {
    fn new() -> Self {
        Self {
            text: String::new(),
            blocks: Vec::new(),
            path: Vec::new(),
            title: None,
        }
    }

    fn heading(&mut self, level: usize, name: &str) {
        let name = collapse(name);
        if name.is_empty() {
            return;
        }
        if level == 1 && self.title.is_none() {
            self.title = Some(name.clone());
        }
        self.path.retain(|(l, _)| *l < level);
        self.path.push((level, name.clone()));
        // Headings are part of the text (offsets stay meaningful) but not blocks.
        self.text.push_str(&name);
        self.text.push_str("\n\n");
    }

    fn block(&mut self, content: &str, page: Option<u32>) {
        let content = content.trim();
        if content.is_empty() {
            return;
        }
        let start = self.text.len();
        self.text.push_str(content);
        let end = self.text.len();
        self.text.push_str("\n\n");
        self.blocks.push(Block {
            section_path: self.path.iter().map(|(_, n)| n.clone()).collect(),
            range: start..end,
            page,
        });
    }

    fn finish(self, fallback_title: &str) -> Result<ParsedDocument, ParseError> {
        if self.blocks.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(ParsedDocument {
            title: self.title.unwrap_or_else(|| fallback_title.to_owned()),
            text: self.text,
            blocks: self.blocks,
        })
    }
}

/// Whitespace runs become one space.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical format name (`markdown`, `text`, `html`, `pdf`, `docx`) for a
/// file extension or format name, case-insensitive.
pub fn format_of(kind: &str) -> Option<&'static str> {
    Some(match kind.to_ascii_lowercase().as_str() {
        "md" | "markdown" => "markdown",
        "txt" | "text" => "text",
        "html" | "htm" => "html",
        "pdf" => "pdf",
        "docx" => "docx",
        _ => return None,
    })
}

/// Parses a document by its type (`md`, `markdown`, `txt`, `html`, `htm`, `pdf`,
/// `docx`).
pub fn parse_bytes(
    kind: &str,
    bytes: &[u8],
    fallback_title: &str,
) -> Result<ParsedDocument, ParseError> {
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ParseError::TooLarge(MAX_BYTES / 1024 / 1024));
    }
    let utf8 = || {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ParseError::Corrupt("not valid UTF-8 text".into()))
    };
    let doc = match kind.to_ascii_lowercase().as_str() {
        "md" | "markdown" => parse_markdown(&utf8()?, fallback_title),
        "txt" | "text" => parse_text(&utf8()?, fallback_title),
        "html" | "htm" => parse_html(&utf8()?, fallback_title)?,
        "docx" => parse_docx(bytes, fallback_title)?,
        "pdf" => parse_pdf(bytes, fallback_title)?,
        other => return Err(ParseError::Unsupported(other.to_owned())),
    };
    if doc.blocks.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(doc)
}

/// HTML: headings h1–h6 make sections; paragraphs, list items, preformatted
/// text, quotes and table cells are blocks; scripts, styles and navigation are
/// left out.
pub fn parse_html(html: &str, fallback_title: &str) -> Result<ParsedDocument, ParseError> {
    use scraper::{ElementRef, Html, Node};
    let page = Html::parse_document(html);
    let mut b = DocBuilder::new();
    const BLOCKS: &[&str] = &[
        "p",
        "li",
        "pre",
        "blockquote",
        "td",
        "th",
        "dt",
        "dd",
        "figcaption",
    ];
    const SKIP: &[&str] = &[
        "script", "style", "nav", "header", "footer", "noscript", "template",
    ];
    fn walk(el: ElementRef<'_>, b: &mut DocBuilder) {
        let name = el.value().name();
        if SKIP.contains(&name) {
            return;
        }
        if let Some(level) = name
            .strip_prefix('h')
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| (1..=6).contains(l))
        {
            b.heading(level, &el.text().collect::<String>());
            return;
        }
        if BLOCKS.contains(&name) {
            let text: String = el.text().collect();
            let text = if name == "pre" { text } else { collapse(&text) };
            b.block(&text, None);
            return;
        }
        // Loose text directly inside containers (e.g. a div with text) is a block too.
        let mut loose = String::new();
        for child in el.children() {
            match child.value() {
                Node::Element(_) => {
                    if !loose.trim().is_empty() {
                        b.block(&collapse(&loose), None);
                    }
                    loose.clear();
                    if let Some(c) = ElementRef::wrap(child) {
                        walk(c, b);
                    }
                }
                Node::Text(t) => loose.push_str(t),
                _ => {}
            }
        }
        if !loose.trim().is_empty() && name != "html" && name != "head" {
            b.block(&collapse(&loose), None);
        }
    }
    let title = scraper::Selector::parse("title")
        .ok()
        .and_then(|s| page.select(&s).next())
        .map(|t| collapse(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());
    if let Some(body) = scraper::Selector::parse("body")
        .ok()
        .and_then(|s| page.select(&s).next())
    {
        walk(body, &mut b);
    }
    if b.title.is_none() {
        b.title = title;
    }
    b.finish(fallback_title)
}

/// DOCX: paragraphs of `word/document.xml`; `Heading N` / `Title` styles make
/// sections.
pub fn parse_docx(bytes: &[u8], fallback_title: &str) -> Result<ParsedDocument, ParseError> {
    use quick_xml::events::Event;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        // Password-protected Office files are OLE containers, not zip archives.
        if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
            ParseError::Encrypted
        } else {
            ParseError::Corrupt(format!("not a DOCX archive: {e}"))
        }
    })?;
    let mut xml = String::new();
    archive
        .by_name("word/document.xml")
        .map_err(|_| ParseError::Corrupt("no word/document.xml in the archive".into()))?
        .take(MAX_BYTES * 4)
        .read_to_string(&mut xml)
        .map_err(|e| ParseError::Corrupt(e.to_string()))?;
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut b = DocBuilder::new();
    let mut para = String::new();
    let mut style: Option<String> = None;
    let mut in_text = false;
    loop {
        match reader
            .read_event()
            .map_err(|e| ParseError::Corrupt(e.to_string()))?
        {
            Event::Start(e) | Event::Empty(e) => match e.local_name().into_inner() {
                "p" => {
                    para.clear();
                    style = None;
                }
                "pStyle" => {
                    style = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().into_inner() == "val")
                        .map(|a| a.value.to_string());
                }
                "t" => in_text = true,
                "tab" => para.push('\t'),
                "br" | "cr" => para.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => {
                para.push_str(&t);
            }
            Event::GeneralRef(r) if in_text => {
                // Entities like &amp; inside text runs.
                let name: &str = &r;
                para.push_str(match name {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Event::End(e) => match e.local_name().into_inner() {
                "t" => in_text = false,
                "p" => {
                    let level = style.as_deref().and_then(|s| {
                        let s = s.to_ascii_lowercase();
                        if s == "title" {
                            Some(1)
                        } else {
                            s.strip_prefix("heading")
                                .and_then(|n| n.trim().parse::<usize>().ok())
                        }
                    });
                    match level {
                        Some(l) => b.heading(l.clamp(1, 6), &para),
                        None => b.block(&para, None),
                    }
                    para.clear();
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    b.finish(fallback_title)
}

/// PDF: the text of each page, in paragraphs, with page numbers. Encrypted files
/// are refused.
pub fn parse_pdf(bytes: &[u8], fallback_title: &str) -> Result<ParsedDocument, ParseError> {
    let doc = pdf_extract::Document::load_mem(bytes)
        .map_err(|e| ParseError::Corrupt(format!("not a readable PDF: {e}")))?;
    if doc.is_encrypted() {
        return Err(ParseError::Encrypted);
    }
    let pages = pdf_extract::extract_text_from_mem_by_pages(bytes)
        .map_err(|e| ParseError::Corrupt(format!("cannot extract text: {e}")))?;
    let mut b = DocBuilder::new();
    for (i, page) in pages.iter().enumerate() {
        let number = i as u32 + 1;
        for para in page.split("\n\n") {
            b.block(&collapse(para), Some(number));
        }
    }
    b.finish(fallback_title)
}
