//! `mcp-calculator [--http ADDR]`: the calculator MCP server over stdio (default)
//! or streamable HTTP at `/mcp`.

use clap::Parser;
use mcp_calculator::Calculator;

/// Evaluates arithmetic and mathematical expressions over MCP.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    listen: mcp_tool_kit::ListenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let cli = Cli::parse();
    mcp_tool_kit::serve(&cli.listen, Calculator::default).await
}
