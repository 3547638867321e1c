//! A template MCP server to copy: one tool, `greet`, that shows the three things
//! every Cairn tool does — typed arguments with a JSON Schema, a result for the
//! model, and a tool error (`isError`) for input the model should correct.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};

/// Arguments of `greet` (the doc comments become the schema's descriptions).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct GreetArgs {
    /// Who to greet.
    pub name: String,
}

/// The server.
#[derive(Clone)]
pub struct Template {
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

impl Default for Template {
    fn default() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl Template {
    /// Greets someone by name.
    #[tool(description = "Greet someone by name.")]
    fn greet(&self, Parameters(a): Parameters<GreetArgs>) -> CallToolResult {
        let name = a.name.trim();
        if name.is_empty() {
            return CallToolResult::error(vec![ContentBlock::text("`name` must not be empty")]);
        }
        CallToolResult::success(vec![ContentBlock::text(format!("Hello, {name}!"))])
    }
}

#[tool_handler]
impl ServerHandler for Template {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}
