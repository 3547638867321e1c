//! `mcp-http-fetch [--allow-host H]... [--allow-ip IP]... [--max-bytes N]
//! [--timeout-ms N] [--http ADDR]`: fetch public pages as text, over stdio
//! (default) or streamable HTTP at `/mcp`.

use mcp_http_fetch::{HttpFetch, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (listen, rest) = mcp_tool_kit::split_listen(std::env::args().skip(1))?;
    let settings = Settings::from_args(&rest)?;
    mcp_tool_kit::serve(listen, move || HttpFetch::new(settings.clone())).await
}
