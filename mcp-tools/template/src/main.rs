//! `mcp-template [--http ADDR]`: the template server over stdio or streamable HTTP.

use clap::Parser;

/// The template MCP server (rename me).
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    listen: mcp_tool_kit::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let cli = Cli::parse();
    mcp_tool_kit::serve(&cli.listen, mcp_template::Template::default).await
}
