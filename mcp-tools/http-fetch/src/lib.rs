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
//! is read up to `max_bytes` and the whole fetch has a timeout.

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

/// True for addresses that must not be reached from outside input.
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
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
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

/// Readable text of an HTML page: the title and the body's text, whitespace collapsed.
pub fn readable_text(html: &str) -> String {
    let doc = scraper::Html::parse_document(html);
    let skip = ["script", "style", "noscript", "template"];
    let mut out = String::new();
    if let Ok(sel) = scraper::Selector::parse("title")
        && let Some(t) = doc.select(&sel).next()
    {
        out.push_str(
            &t.text()
                .collect::<String>()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        );
        out.push_str("\n\n");
    }
    let body = scraper::Selector::parse("body")
        .ok()
        .and_then(|s| doc.select(&s).next());
    let root = body.map(|b| *b).unwrap_or_else(|| *doc.root_element());
    let mut words: Vec<String> = Vec::new();
    for node in root.descendants() {
        if let Some(text) = node.value().as_text() {
            let hidden = node.ancestors().any(|a| {
                a.value()
                    .as_element()
                    .is_some_and(|e| skip.contains(&e.name()))
            });
            if !hidden {
                words.extend(text.split_whitespace().map(str::to_owned));
            }
        }
    }
    out.push_str(&words.join(" "));
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
        let client = reqwest::Client::builder()
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
