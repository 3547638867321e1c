//! `mcp-fixture`: an MCP server (stdio) with tools that misbehave on purpose, for
//! the tool host's tests and benchmark: `echo`, `add` (a typed schema), `key`
//! (returns the idempotency key it received), `sleep` (hangs; writes `cancelled`
//! to `$FIXTURE_LOG` when the host cancels it), `progress` (reports progress while
//! it works), `huge` (a very large result), `fail` (an `isError` result) and
//! `crash` (the process exits), `reveal` (lists `secret` from then on and sends
//! `notifications/tools/list_changed`), `meta` (the call's whole `_meta`), `env`
//! (the names of its environment variables). With `--exit-at-start` it exits
//! before serving; with `--http ADDR` it serves streamable HTTP at `/mcp` instead
//! of stdio, with the bearer token from `$MCP_AUTH_TOKEN` (default
//! `fixture-token-0123456789`).

use rmcp::ErrorData;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, RequestMetaObject, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer, ServerHandler, ServiceExt, schemars, tool, tool_router};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Text {
    text: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Pair {
    a: f64,
    b: f64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Millis {
    ms: u64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Steps {
    steps: u32,
    ms: u64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Size {
    bytes: usize,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Nothing {}

/// Writes `line` to `$FIXTURE_LOG`, when set.
fn log(line: &str) {
    if let Ok(path) = std::env::var("FIXTURE_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[derive(Clone)]
struct Fixture {
    tool_router: ToolRouter<Self>,
    /// `secret` is listed only once `reveal` was called.
    revealed: Arc<AtomicBool>,
}

#[tool_router]
impl Fixture {
    #[tool(description = "Echo the text.")]
    fn echo(&self, Parameters(t): Parameters<Text>) -> String {
        t.text
    }

    #[tool(description = "Add two numbers.")]
    fn add(&self, Parameters(p): Parameters<Pair>) -> String {
        (p.a + p.b).to_string()
    }

    #[tool(description = "Return the idempotency key of this call.")]
    fn key(&self, Parameters(_): Parameters<Nothing>, meta: RequestMetaObject) -> String {
        meta.get("idempotency_key")
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_owned()
    }

    #[tool(description = "Return the whole `_meta` of this call (tenant, user, key).")]
    fn meta(&self, Parameters(_): Parameters<Nothing>, meta: RequestMetaObject) -> String {
        serde_json::to_string(&meta).unwrap_or_default()
    }

    #[tool(description = "Return the names of the environment variables this process sees.")]
    fn env(&self, Parameters(_): Parameters<Nothing>) -> String {
        let mut names: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.join(",")
    }

    #[tool(description = "Sleep for ms milliseconds.")]
    async fn sleep(
        &self,
        Parameters(m): Parameters<Millis>,
        context: RequestContext<RoleServer>,
    ) -> String {
        log("sleeping");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(m.ms)) => "woke up".into(),
            () = context.ct.cancelled() => {
                // The client sent notifications/cancelled.
                log("cancelled");
                "cancelled".into()
            }
        }
    }

    #[tool(description = "Work in steps, reporting progress after each.")]
    async fn progress(
        &self,
        Parameters(s): Parameters<Steps>,
        meta: RequestMetaObject,
        client: Peer<RoleServer>,
    ) -> String {
        for step in 0..s.steps {
            tokio::time::sleep(Duration::from_millis(s.ms)).await;
            if let Some(token) = meta.get_progress_token() {
                let _ = client
                    .notify_progress(
                        ProgressNotificationParam::new(token, f64::from(step + 1))
                            .with_total(f64::from(s.steps)),
                    )
                    .await;
            }
        }
        "done".into()
    }

    #[tool(description = "Return bytes bytes of text.")]
    fn huge(&self, Parameters(s): Parameters<Size>) -> String {
        "x".repeat(s.bytes)
    }

    #[tool(description = "Fail as a tool (isError).")]
    fn fail(&self, Parameters(_): Parameters<Nothing>) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text("the order does not exist")])
    }

    #[tool(description = "List the `secret` tool from now on, and tell the client.")]
    async fn reveal(&self, Parameters(_): Parameters<Nothing>, client: Peer<RoleServer>) -> String {
        self.revealed.store(true, Ordering::SeqCst);
        let _ = client.notify_tool_list_changed().await;
        "revealed".into()
    }

    #[tool(description = "Only listed after `reveal`.")]
    fn secret(&self, Parameters(_): Parameters<Nothing>) -> String {
        "found".into()
    }

    #[tool(description = "Exit the server process.")]
    fn crash(&self, Parameters(_): Parameters<Nothing>) -> String {
        std::process::exit(3);
    }
}

impl Fixture {
    fn listed(&self, name: &str) -> bool {
        name != "secret" || self.revealed.load(Ordering::SeqCst)
    }
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.listed(&request.name) {
            return Err(ErrorData::invalid_params(
                format!("no tool {}", request.name),
                None,
            ));
        }
        self.tool_router
            .call(ToolCallContext::new(self, request, context))
            .await
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult {
            tools: self
                .tool_router
                .list_all()
                .into_iter()
                .filter(|t| self.listed(&t.name))
                .collect(),
            ..Default::default()
        })
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router
            .get(name)
            .filter(|_| self.listed(name))
            .cloned()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--exit-at-start") {
        log("started");
        std::process::exit(4);
    }
    log("started");
    let make = || Fixture {
        tool_router: Fixture::tool_router(),
        revealed: Arc::default(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--http") {
        let addr = args.get(i + 1).cloned().unwrap_or_default();
        let token = std::env::var("MCP_AUTH_TOKEN")
            .unwrap_or_else(|_| "fixture-token-0123456789".to_owned());
        let access = mcp_tool_kit::HttpAccess {
            token,
            allowed_hosts: Vec::new(),
        };
        mcp_tool_kit::serve_http(&addr, access, make).await?;
        return Ok(());
    }
    let running = make().serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
