//! HTML, DOCX and PDF into [`ParsedDocument`]s: the text a reader would see, in
//! blocks under their headings (pages for PDF). A corrupt, encrypted or empty
//! file is an error for that document, never a panic.
//!
//! Uploaded documents choose their own shape, so nothing here recurses over
//! their nesting (the HTML walk keeps an explicit stack) and compressed parts
//! are measured against [`ParseLimits::max_decompressed_bytes`] before they are
//! inflated. Third-party parsers (pdf-extract) can still overflow a stack or
//! loop on a crafted file; [`crate::isolation`] runs them in a child process.

use crate::chunk::{Block, ParsedDocument, parse_markdown, parse_text};
use std::io::Read;

/// Why a document could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    /// Compressed parts inflate beyond the limit (a decompression bomb, or just
    /// too much text).
    #[error("the document decompresses to more than {0} MB")]
    Decompressed(u64),
    /// The parser process crashed (stack overflow, out of memory, a bug in a
    /// parser): the file is not retried.
    #[error("the parser crashed on this document ({0})")]
    Crashed(String),
    /// The parser took longer than the limit.
    #[error("parsing took longer than {0} s")]
    TimedOut(u64),
    /// Elements are nested deeper than the limit (building the tree of such a
    /// page takes time quadratic in its depth).
    #[error("the document nests elements deeper than {0} levels")]
    TooDeep(usize),
}

/// Deepest element nesting accepted in HTML (real pages stay far below 100).
pub const MAX_HTML_DEPTH: usize = 512;

/// Bounds on what one document may cost to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest upload (`knowledge.max_document_bytes`).
    pub max_bytes: u64,
    /// Most bytes the compressed parts of one document (DOCX zip entries, PDF
    /// streams) may inflate to, in total (`knowledge.max_decompressed_bytes`).
    pub max_decompressed_bytes: u64,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_BYTES,
            max_decompressed_bytes: MAX_DECOMPRESSED_BYTES,
        }
    }
}

/// Default cap on decompressed bytes per document: 100 MB.
pub const MAX_DECOMPRESSED_BYTES: u64 = 100 * 1024 * 1024;

fn mb(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
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
/// `docx`) with the default limits.
pub fn parse_bytes(
    kind: &str,
    bytes: &[u8],
    fallback_title: &str,
) -> Result<ParsedDocument, ParseError> {
    parse_bytes_limited(kind, bytes, fallback_title, ParseLimits::default())
}

/// Parses a document by its type within `limits`, in this process. Prefer
/// [`crate::isolation::DocumentParser`] for untrusted PDFs.
pub fn parse_bytes_limited(
    kind: &str,
    bytes: &[u8],
    fallback_title: &str,
    limits: ParseLimits,
) -> Result<ParsedDocument, ParseError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ParseError::TooLarge(mb(limits.max_bytes)));
    }
    let utf8 = || {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ParseError::Corrupt("not valid UTF-8 text".into()))
    };
    let doc = match kind.to_ascii_lowercase().as_str() {
        "md" | "markdown" => parse_markdown(&utf8()?, fallback_title),
        "txt" | "text" => parse_text(&utf8()?, fallback_title),
        "html" | "htm" => parse_html(&utf8()?, fallback_title)?,
        "docx" => parse_docx(bytes, fallback_title, limits)?,
        "pdf" => parse_pdf(bytes, fallback_title, limits)?,
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
    html_depth_within(html, MAX_HTML_DEPTH)?;
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
    /// One step of the walk: enter an element, or flush the loose text gathered
    /// in a container when its children are done.
    enum Step<'a> {
        Enter(ElementRef<'a>),
        Text(&'a str),
        Flush { loose: bool },
    }
    // An explicit stack instead of recursion: the nesting depth of an uploaded
    // page is the uploader's choice, the depth of a thread's stack is not.
    // `loose` holds one text buffer per open container.
    fn walk(root: ElementRef<'_>, b: &mut DocBuilder) {
        let mut stack = vec![Step::Enter(root)];
        let mut loose: Vec<String> = Vec::new();
        while let Some(step) = stack.pop() {
            let el = match step {
                Step::Flush { loose: emit } => {
                    let text = loose.pop().unwrap_or_default();
                    if emit && !text.trim().is_empty() {
                        b.block(&collapse(&text), None);
                    }
                    continue;
                }
                Step::Text(t) => {
                    if let Some(pending) = loose.last_mut() {
                        pending.push_str(t);
                    }
                    continue;
                }
                Step::Enter(el) => el,
            };
            // Text that came before this element in its container is a block.
            if let Some(pending) = loose.last_mut() {
                if !pending.trim().is_empty() {
                    b.block(&collapse(pending), None);
                }
                pending.clear();
            }
            let name = el.value().name();
            if SKIP.contains(&name) {
                continue;
            }
            if let Some(level) = name
                .strip_prefix('h')
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| (1..=6).contains(l))
            {
                b.heading(level, &el.text().collect::<String>());
                continue;
            }
            if BLOCKS.contains(&name) {
                let text: String = el.text().collect();
                let text = if name == "pre" { text } else { collapse(&text) };
                b.block(&text, None);
                continue;
            }
            // Loose text directly inside containers (e.g. a div with text) is a
            // block too. Children are pushed in reverse so they pop in order;
            // text nodes between elements are gathered by `Text` steps.
            loose.push(String::new());
            stack.push(Step::Flush {
                loose: name != "html" && name != "head",
            });
            let mut children: Vec<Step<'_>> = Vec::new();
            for child in el.children() {
                match child.value() {
                    Node::Element(_) => {
                        if let Some(c) = ElementRef::wrap(child) {
                            children.push(Step::Enter(c));
                        }
                    }
                    Node::Text(t) => children.push(Step::Text(&t.text)),
                    _ => {}
                }
            }
            stack.extend(children.into_iter().rev());
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
pub fn parse_docx(
    bytes: &[u8],
    fallback_title: &str,
    limits: ParseLimits,
) -> Result<ParsedDocument, ParseError> {
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
    // Read one byte past the cap: the declared size in the zip directory is the
    // uploader's claim, the inflated stream is the truth.
    let cap = limits.max_decompressed_bytes;
    archive
        .by_name("word/document.xml")
        .map_err(|_| ParseError::Corrupt("no word/document.xml in the archive".into()))?
        .take(cap.saturating_add(1))
        .read_to_string(&mut xml)
        .map_err(|e| ParseError::Corrupt(e.to_string()))?;
    if xml.len() as u64 > cap {
        return Err(ParseError::Decompressed(mb(cap)));
    }
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
pub fn parse_pdf(
    bytes: &[u8],
    fallback_title: &str,
    limits: ParseLimits,
) -> Result<ParsedDocument, ParseError> {
    let doc = pdf_extract::Document::load_mem(bytes)
        .map_err(|e| ParseError::Corrupt(format!("not a readable PDF: {e}")))?;
    if doc.is_encrypted() {
        return Err(ParseError::Encrypted);
    }
    check_pdf_streams(&doc, limits.max_decompressed_bytes)?;
    // pdf-extract unwraps on some malformed content streams (text shown before
    // any font is set, found by the property tests): its panic is this
    // document's failure, not the process's.
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| ParseError::Corrupt("the PDF's content streams are malformed".into()))?
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

/// Measures what the Flate streams of a PDF inflate to, in total, without
/// keeping them, and refuses the document past `cap`. pdf-extract inflates
/// every content stream it draws with no bound of its own.
fn check_pdf_streams(doc: &pdf_extract::Document, cap: u64) -> Result<(), ParseError> {
    use pdf_extract::Object;
    let mut total: u64 = 0;
    for object in doc.objects.values() {
        let Object::Stream(stream) = object else {
            continue;
        };
        let flate = match stream.dict.get(b"Filter") {
            Ok(Object::Name(name)) => name.as_slice() == b"FlateDecode",
            Ok(Object::Array(filters)) => filters
                .iter()
                .any(|f| matches!(f, Object::Name(n) if n.as_slice() == b"FlateDecode")),
            _ => false,
        };
        if !flate {
            total = total.saturating_add(stream.content.len() as u64);
        } else {
            let left = cap.saturating_sub(total).saturating_add(1);
            let mut inflater = flate2::read::ZlibDecoder::new(stream.content.as_slice()).take(left);
            // A corrupt stream stops counting where it breaks; pdf-extract decides
            // what to make of it.
            let n = std::io::copy(&mut inflater, &mut std::io::sink()).unwrap_or(0);
            total = total.saturating_add(n);
        }
        if total > cap {
            return Err(ParseError::Decompressed(mb(cap)));
        }
    }
    Ok(())
}

/// Refuses HTML nested deeper than `max`, in one linear pass of the tokenizer
/// (before the tree builder, whose scope checks make deep nesting quadratic).
/// Depth counts elements that must be closed; void elements and those whose
/// end tag is optional (`p`, `li`, `td`, …) are left out, so pages that never
/// close their paragraphs are not mistaken for deep ones.
fn html_depth_within(html: &str, max: usize) -> Result<(), ParseError> {
    use html5ever::tendril::StrTendril;
    use html5ever::tokenizer::states::RawKind;
    use html5ever::tokenizer::{
        BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer,
    };
    use std::cell::Cell;
    const UNCOUNTED: &[&str] = &[
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr", "p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "thead",
        "tbody", "tfoot", "colgroup", "rb", "rt", "rtc", "rp", "html", "head", "body",
    ];
    struct Depth {
        now: Cell<usize>,
        deepest: Cell<usize>,
    }
    impl TokenSink for Depth {
        type Handle = ();
        fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
            if let Token::TagToken(tag) = token {
                let name: &str = &tag.name;
                if tag.self_closing || UNCOUNTED.contains(&name) {
                    return TokenSinkResult::Continue;
                }
                if tag.kind == TagKind::StartTag {
                    self.now.set(self.now.get() + 1);
                    self.deepest.set(self.deepest.get().max(self.now.get()));
                    match name {
                        "script" => return TokenSinkResult::RawData(RawKind::ScriptData),
                        "style" | "xmp" | "iframe" | "noembed" | "noframes" => {
                            return TokenSinkResult::RawData(RawKind::Rawtext);
                        }
                        "title" | "textarea" => return TokenSinkResult::RawData(RawKind::Rcdata),
                        "plaintext" => return TokenSinkResult::Plaintext,
                        _ => {}
                    }
                } else {
                    self.now.set(self.now.get().saturating_sub(1));
                }
            }
            TokenSinkResult::Continue
        }
    }
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let tokenizer = Tokenizer::new(
        Depth {
            now: Cell::new(0),
            deepest: Cell::new(0),
        },
        Default::default(),
    );
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    if tokenizer.sink.deepest.get() > max {
        return Err(ParseError::TooDeep(max));
    }
    Ok(())
}
