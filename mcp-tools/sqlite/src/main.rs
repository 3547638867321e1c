//! `mcp-sqlite --db PATH [--max-rows N] [--timeout-ms N] [--http ADDR]`: read-only
//! SQL over one SQLite file, over stdio (default) or streamable HTTP at `/mcp`.

use mcp_sqlite::{Settings, Sqlite};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let (listen, rest) = mcp_tool_kit::split_listen(std::env::args().skip(1))?;
    let settings = Settings::from_args(&rest)?;
    mcp_tool_kit::serve(listen, move || Sqlite::new(settings.clone())).await
}
