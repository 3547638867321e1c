//! `mcp-sqlite --db PATH [--max-rows N] [--timeout-ms N] [--http ADDR]`: read-only
//! SQL over one SQLite file, over stdio (default) or streamable HTTP at `/mcp`.

use clap::Parser;
use mcp_sqlite::{Settings, Sqlite};
use std::path::PathBuf;
use std::time::Duration;

/// Read-only SQL over one SQLite file, over MCP.
#[derive(Parser)]
struct Cli {
    /// The SQLite file (opened read-only).
    #[arg(long)]
    db: PathBuf,
    /// Most rows returned by one query.
    #[arg(long, default_value_t = 200)]
    max_rows: usize,
    /// Longest a query may run, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(flatten)]
    listen: mcp_tool_kit::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let cli = Cli::parse();
    anyhow::ensure!(cli.db.is_file(), "{} does not exist", cli.db.display());
    let settings = Settings {
        db: cli.db,
        max_rows: cli.max_rows,
        timeout: Duration::from_millis(cli.timeout_ms),
    };
    mcp_tool_kit::serve(&cli.listen, move || Sqlite::new(settings.clone())).await
}
