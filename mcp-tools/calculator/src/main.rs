//! `mcp-calculator [--http ADDR]`: the calculator MCP server over stdio (default)
//! or streamable HTTP at `/mcp`.

use mcp_calculator::Calculator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let listen = mcp_tool_kit::listen_from_args(std::env::args().skip(1))?;
    mcp_tool_kit::serve(listen, Calculator::default).await
}
