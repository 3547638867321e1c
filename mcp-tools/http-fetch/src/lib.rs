//! The `http-fetch` MCP server: one tool, `fetch {url}`, that returns a page as
//! readable text.
//!
//! The SSRF guard is applied to every hop, after DNS resolution: the host name is
//! resolved, every address it resolves to must be public (not loopback, private,
//! link-local, CGNAT, unique-local, multicast or unspecified — IPv4-mapped IPv6
//! included) unless it is in the explicit `--allow-ip` list, and the request is
//! then sent to that checked address (pinned, so a second DNS answer cannot
//! differ). Redirects are followed by hand, at most `max_redirects`, and each
//! target goes through the same checks. Only `http`/`https`; an optional host
//! allow-list (`--allow-host example.com` also allows its subdomains); the body
//! is read up to `max_bytes` and the whole fetch has a timeout. Proxies from the
//! environment are never used (a proxy would resolve the name again).

use futures::StreamExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Hosts that may be fetched (and their subdomains); empty: any public host.
    pub allow_hosts: Vec<String>,
    /// Addresses allowed even though they are not public (e.g. an internal wiki).
    pub allow_ips: Vec<IpAddr>,
    /// Most bytes read from a response body.
    pub max_bytes: usize,
    /// Limit for the whole fetch, redirects included.
    pub timeout: Duration,
    /// Most redirects followed.
    pub max_redirects: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            allow_ips: Vec::new(),
            max_bytes: 512 * 1024,
            timeout: Duration::from_secs(10),
            max_redirects: 5,
        }
    }
}

/// True for addresses that must not be reached from outside input: loopback,
/// private, link-local, CGNAT, benchmarking (198.18.0.0/15), IETF protocol
/// assignments (192.0.0.0/24), reserved (240.0.0.0/4), documentation,
/// multicast, unspecified; in IPv6 also unique-local, site-local (fec0::/10),
/// and every form that carries an IPv4 address a gateway would reach
/// (IPv4-mapped and -compatible, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`,
/// 6to4 `2002::/16`), judged by that IPv4 address; Teredo (`2001::/32`) is
/// refused whole.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 (CGNAT)
                || o[0] == 0
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240 // 240.0.0.0/4 reserved (and broadcast)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // NAT64 (well-known and local-use prefixes): the last 32 bits.
            if s[0] == 0x0064 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 0x0001) {
                return is_internal(embedded(s[6], s[7]));
            }
            // 6to4: bits 16..48.
            if s[0] == 0x2002 {
                return is_internal(embedded(s[1], s[2]));
            }
            // IPv4-compatible (deprecated ::a.b.c.d, not :: or ::1).
            if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
                return is_internal(embedded(s[6], s[7]));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0000) // 2001::/32 Teredo
                || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
                || s[0] == 0x0100 && s[1..4] == [0, 0, 0] // 100::/64 discard
        }
    }
}

fn host_allowed(settings: &Settings, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    settings.allow_hosts.is_empty()
        || settings
            .allow_hosts
            .iter()
            .any(|h| host == *h || host.ends_with(&format!(".{h}")))
}

/// Checks one hop and returns the address to connect to.
async fn check(settings: &Settings, url: &reqwest::Url) -> Result<(String, SocketAddr), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "only http and https URLs can be fetched, not {}",
            url.scheme()
        ));
    }
    let host = url.host_str().ok_or("the URL has no host")?.to_owned();
    if !host_allowed(settings, &host) {
        return Err(format!("the host {host} is not on the allow-list"));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    // Every address must pass, so that no answer of a round-robin name slips through.
    for a in &addrs {
        if is_internal(a.ip()) && !settings.allow_ips.contains(&a.ip()) {
            return Err(format!(
                "refused: {host} resolves to {} , a private, loopback or link-local address",
                a.ip()
            ));
        }
    }
    Ok((bare, addrs[0]))
}

/// Collects the text of a page from the tokenizer's stream.
#[derive(Default)]
struct TextSink {
    state: std::cell::RefCell<TextState>,
}

#[derive(Default)]
struct TextState {
    title: String,
    in_title: bool,
    /// Open elements whose content is not shown (script, style, …).
    hidden: usize,
    text: String,
}

/// Elements whose content a reader never sees.
const HIDDEN: [&str; 4] = ["script", "style", "noscript", "template"];

impl html5ever::tokenizer::TokenSink for TextSink {
    type Handle = ();

    fn process_token(
        &self,
        token: html5ever::tokenizer::Token,
        _line: u64,
    ) -> html5ever::tokenizer::TokenSinkResult<()> {
        use html5ever::tokenizer::states::RawKind;
        use html5ever::tokenizer::{TagKind, Token, TokenSinkResult};
        let mut st = self.state.borrow_mut();
        match token {
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                let start = tag.kind == TagKind::StartTag;
                if HIDDEN.contains(&name) && !tag.self_closing {
                    if start {
                        st.hidden += 1;
                    } else {
                        st.hidden = st.hidden.saturating_sub(1);
                    }
                }
                if name == "title" {
                    st.in_title = start && !tag.self_closing;
                }
                // What the tree builder would tell the tokenizer: the content of
                // these elements is raw text, not markup.
                if start && !tag.self_closing {
                    match name {
                        "script" => return TokenSinkResult::RawData(RawKind::ScriptData),
                        "style" | "xmp" | "iframe" | "noembed" | "noframes" => {
                            return TokenSinkResult::RawData(RawKind::Rawtext);
                        }
                        "title" | "textarea" => return TokenSinkResult::RawData(RawKind::Rcdata),
                        "plaintext" => return TokenSinkResult::Plaintext,
                        _ => {}
                    }
                }
            }
            Token::CharacterTokens(t) => {
                if st.in_title {
                    st.title.push_str(&t);
                } else if st.hidden == 0 {
                    st.text.push_str(&t);
                    st.text.push(' ');
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

/// Readable text of an HTML page: the title and the text outside scripts,
/// styles and templates, whitespace collapsed. It runs the HTML tokenizer
/// only (no tree), so it is linear in the page size whatever the nesting.
pub fn readable_text(html: &str) -> String {
    use html5ever::tendril::StrTendril;
    use html5ever::tokenizer::{BufferQueue, Tokenizer};
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let tokenizer = Tokenizer::new(TextSink::default(), Default::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let st = tokenizer.sink.state.into_inner();
    let collapse = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let title = collapse(&st.title);
    if !title.is_empty() {
        out.push_str(&title);
        out.push_str("\n\n");
    }
    out.push_str(&collapse(&st.text));
    out
}

/// Fetches `url` as readable text, or says why not.
pub async fn fetch(settings: &Settings, url: &str) -> Result<String, String> {
    // HTTPS needs a process-wide TLS crypto provider; installing twice is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::time::timeout(settings.timeout, fetch_inner(settings, url))
        .await
        .map_err(|_| {
            format!(
                "the fetch took longer than {} ms",
                settings.timeout.as_millis()
            )
        })?
}

async fn fetch_inner(settings: &Settings, url: &str) -> Result<String, String> {
    let mut url = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    for _ in 0..=settings.max_redirects {
        let (host, addr) = check(settings, &url).await?;
        // No proxy: a proxy from HTTP(S)_PROXY would resolve the host again
        // and reach whatever it likes, defeating the checked, pinned address.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addr)
            .user_agent("cairn-http-fetch/0.1")
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("the request failed: {e}"))?;
        if resp.status().is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or("a redirect without a Location header")?;
            url = url
                .join(location)
                .map_err(|e| format!("a bad redirect target: {e}"))?;
            continue;
        }
        let status = resp.status();
        let is_html = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("html"));
        let mut body = Vec::new();
        let mut truncated = false;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("reading the body failed: {e}"))?;
            let room = settings.max_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        let mut out = if is_html {
            readable_text(&text)
        } else {
            text.into_owned()
        };
        if !status.is_success() {
            out = format!("HTTP {status}\n{out}");
        }
        if truncated {
            out.push_str(&format!("\n[truncated at {} bytes]", settings.max_bytes));
        }
        return Ok(out);
    }
    Err(format!("more than {} redirects", settings.max_redirects))
}

/// Arguments of `fetch`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct FetchArgs {
    /// The `http` or `https` URL.
    pub url: String,
}

/// The server.
#[derive(Clone)]
pub struct HttpFetch {
    settings: std::sync::Arc<Settings>,
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

impl HttpFetch {
    /// A server with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: std::sync::Arc::new(settings),
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl HttpFetch {
    /// Fetches a URL as readable text.
    #[tool(
        description = "Fetch a public web page (http/https) and return its readable text. Private and internal addresses are refused."
    )]
    async fn fetch(&self, Parameters(a): Parameters<FetchArgs>) -> CallToolResult {
        match fetch(&self.settings, &a.url).await {
            Ok(t) => CallToolResult::success(vec![ContentBlock::text(t)]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e)]),
        }
    }
}

#[tool_handler]
impl ServerHandler for HttpFetch {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Fetches public web pages as text.")
    }
}
