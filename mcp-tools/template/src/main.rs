//! `mcp-template [--http ADDR]`: the template server over stdio or streamable HTTP.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mcp_tool_kit::init_logging();
    let listen = mcp_tool_kit::listen_from_args(std::env::args().skip(1))?;
    mcp_tool_kit::serve(listen, mcp_template::Template::default).await
}
