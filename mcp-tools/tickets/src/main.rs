//! `mcp-tickets [--db PATH] [--http ADDR]`: the support tickets server, over
//! stdio (default) or streamable HTTP at `/mcp`. The store (default
//! `./tickets.db`) is created with sample tickets when missing.

use mcp_tickets::Tickets;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let (listen, rest) = mcp_tool_kit::split_listen(std::env::args().skip(1))?;
    let db = match rest.as_slice() {
        [] => PathBuf::from("tickets.db"),
        [flag, path] if flag == "--db" => PathBuf::from(path),
        _ => anyhow::bail!("usage: mcp-tickets [--db PATH] [--http ADDR]"),
    };
    mcp_tickets::open(&db)?;
    mcp_tool_kit::serve(listen, move || Tickets::new(db.clone())).await
}
