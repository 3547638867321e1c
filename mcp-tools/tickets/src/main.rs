//! `mcp-tickets [--db PATH] [--http ADDR]`: the support tickets server, over
//! stdio (default) or streamable HTTP at `/mcp`. The store (default
//! `./tickets.db`) is created with sample tickets when missing.

use clap::Parser;
use mcp_tickets::Tickets;
use std::path::PathBuf;

/// Support tickets over MCP: look up, list, update.
#[derive(Parser)]
struct Cli {
    /// The SQLite store (created with sample tickets when missing).
    #[arg(long, default_value = "tickets.db")]
    db: PathBuf,
    #[command(flatten)]
    listen: mcp_tool_kit::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let cli = Cli::parse();
    mcp_tickets::open(&cli.db)?;
    let db = cli.db;
    mcp_tool_kit::serve(&cli.listen, move || Tickets::new(db.clone())).await
}
