//! `mcp-http-fetch [--allow-host H]... [--allow-ip IP]... [--max-bytes N]
//! [--timeout-ms N] [--http ADDR]`: fetch public pages as text, over stdio
//! (default) or streamable HTTP at `/mcp`.

use clap::Parser;
use mcp_http_fetch::{HttpFetch, Settings};
use std::net::IpAddr;
use std::time::Duration;

/// Fetches public web pages as readable text, over MCP.
#[derive(Parser)]
struct Cli {
    /// Only this host and its subdomains (repeatable); none: any public host.
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    /// An internal address that may be reached anyway (repeatable).
    #[arg(long = "allow-ip")]
    allow_ips: Vec<IpAddr>,
    /// Most bytes read from a response body.
    #[arg(long, default_value_t = Settings::default().max_bytes)]
    max_bytes: usize,
    /// Limit for a whole fetch, redirects included, in milliseconds.
    #[arg(long, default_value_t = Settings::default().timeout.as_millis() as u64)]
    timeout_ms: u64,
    #[command(flatten)]
    listen: mcp_tool_kit::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let settings = Settings {
        allow_hosts: cli
            .allow_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        allow_ips: cli.allow_ips,
        max_bytes: cli.max_bytes,
        timeout: Duration::from_millis(cli.timeout_ms),
        ..Settings::default()
    };
    mcp_tool_kit::serve(&cli.listen, move || HttpFetch::new(settings.clone())).await
}
