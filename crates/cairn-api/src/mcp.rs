//! Cairn as an MCP server: streamable HTTP at `/mcp`, so that MCP clients (IDEs,
//! desktop assistants) can use it. Every request needs the same Bearer JWT as
//! the `/v1` routes (checked before the MCP layer sees it, with the API's error
//! contract); each tool call acts as that token's tenant and user.
//!
//! Tools:
//! - `ask {question, conversation_id?}`: runs one turn (in the given conversation,
//!   created when missing, or a new one) and returns the answer with its
//!   citations; a failed turn is an `isError` result.
//! - `search_knowledge {query, limit?}`: ranked passages of the caller's knowledge
//!   base with document id, title, section and score.

use crate::auth::Caller;
use crate::conversations::{Access, check_conversation_quota, load_owned};
use crate::error::ApiError;
use crate::messages::{admit, turn_events, until_terminal};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::ports::{SearchFilter, SearchMode};
use cairn_core::{ConversationId, ConversationMeta, TurnEvent};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::json;

/// Arguments of `ask`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    /// Continue this conversation (created when it does not exist); a new one otherwise.
    #[serde(default)]
    pub conversation_id: Option<String>,
}

/// Arguments of `decide_approval`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct DecideArgs {
    /// The conversation the approval waits in.
    pub conversation_id: String,
    /// The approval (from `approval.requested`).
    pub approval_id: String,
    /// `approve`, `reject` or `edit`.
    pub decision: String,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
    /// For `edit`: the arguments to run the call with.
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
}

/// Arguments of `search_knowledge`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// What to look for.
    pub query: String,
    /// Passages wanted (1–20, default 5).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The MCP face of Cairn.
#[derive(Clone)]
pub struct CairnMcp {
    state: AppState,
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

fn error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

impl CairnMcp {
    /// The server over the API's state.
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// The caller of this MCP request, from its HTTP headers.
    async fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, String> {
        let parts = context
            .extensions
            .get::<http::request::Parts>()
            .ok_or("no HTTP request behind this call")?;
        self.state
            .auth
            .caller(&parts.headers)
            .await
            .map_err(|e| e.message)
    }

    async fn run_turn(&self, caller: &Caller, args: AskArgs) -> Result<serde_json::Value, String> {
        let state = &self.state;
        let id = match args.conversation_id {
            Some(c) => ConversationId::parse(c).map_err(|e| e.to_string())?,
            None => ConversationId::generate(),
        };
        match load_owned(state, caller, &id, Access::Write).await {
            Ok(_) => {}
            Err(_)
                if state
                    .memory
                    .get_conversation(&caller.tenant, &id)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_none() =>
            {
                check_conversation_quota(state, caller)
                    .await
                    .map_err(|e| e.message)?;
                let title = Some(args.question.chars().take(80).collect());
                let meta = ConversationMeta::new(
                    id.clone(),
                    caller.tenant.clone(),
                    caller.user.clone(),
                    title,
                );
                state
                    .memory
                    .create_conversation(&meta)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err(_) => return Err(format!("no conversation {id} for this caller")),
        }
        // The same limits as REST: length, queue room, open streams.
        admit(state, caller, &id, &args.question, "question")
            .await
            .map_err(|e| e.message)?;
        let _permit = state.streams.acquire(caller).map_err(|e| e.message)?;
        let after = state
            .events
            .last_event_id(&caller.tenant, &id)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            crate::messages::new_request(state, &caller.tenant, &id, &caller.user, args.question);
        state
            .runtime
            .submit(&request, Some(&crate::request_id::traceparent()))
            .await
            .map_err(|e| format!("the event bus is unavailable: {e}"))?;
        let events = until_terminal(state, turn_events(state, &request, after))
            .await
            .map_err(|e| e.message)?
            .ok_or_else(|| {
                format!(
                    "no answer within {:?}; the turn goes on in conversation {id}",
                    state.settings.wait_timeout
                )
            })?;
        match events.into_iter().last().map(|e| e.event) {
            Some(TurnEvent::AnswerCompleted {
                content, citations, ..
            }) => Ok(json!({"conversation_id": id, "answer": content, "citations": citations})),
            Some(TurnEvent::TurnFailed { code, reason, .. }) => {
                Err(format!("the turn failed ({code:?}): {reason}"))
            }
            Some(TurnEvent::TurnCancelled { reason, .. }) => {
                Err(format!("the turn was cancelled: {reason}"))
            }
            _ => Err("the event stream ended before the turn did".to_owned()),
        }
    }
}

#[tool_router]
impl CairnMcp {
    /// Runs one turn and returns the answer with its citations.
    #[tool(
        description = "Ask Cairn a question; it answers from its knowledge base and tools, with citations. Pass conversation_id to continue a conversation."
    )]
    async fn ask(
        &self,
        Parameters(args): Parameters<AskArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let caller = match self.caller(&context).await {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        match self.run_turn(&caller, args).await {
            Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
            Err(e) => error(e),
        }
    }

    /// Decides an approval a turn waits for (needs the `approve` scope).
    #[tool(
        description = "Approve, reject or edit a tool call that waits for a person's approval in a Cairn conversation (needs the `approve` scope). decision: approve, reject or edit (then pass arguments)."
    )]
    async fn decide_approval(
        &self,
        Parameters(args): Parameters<DecideArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let caller = match self.caller(&context).await {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        let id = match ConversationId::parse(&args.conversation_id) {
            Ok(id) => id,
            Err(e) => return error(e.to_string()),
        };
        let body = crate::approvals::Decide {
            decision: args.decision,
            comment: args.comment,
            arguments: args.arguments,
        };
        match crate::approvals::decide(&self.state, &caller, &id, &args.approval_id, body).await {
            Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
            Err(e) => error(format!("{}: {}", e.code.as_str(), e.message)),
        }
    }

    /// Searches the caller's knowledge base.
    #[tool(
        description = "Search Cairn's knowledge base and return the most relevant passages with document id, title, section and score."
    )]
    async fn search_knowledge(
        &self,
        Parameters(args): Parameters<SearchArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let caller = match self.caller(&context).await {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        let Some(kb) = self.state.knowledge.as_ref() else {
            return error("the knowledge base is disabled on this server");
        };
        let limit = args.limit.unwrap_or(5).clamp(1, 20);
        match kb
            .search(
                &caller.tenant,
                &args.query,
                SearchMode::Hybrid,
                SearchFilter::default(),
                limit,
            )
            .await
        {
            Ok(hits) => {
                let passages: Vec<serde_json::Value> = hits
                    .iter()
                    .map(|h| json!({"document_id": h.chunk.document_id, "title": h.chunk.title, "section": h.chunk.section_path.join(" > "), "text": h.chunk.text, "score": h.score}))
                    .collect();
                CallToolResult::success(vec![ContentBlock::text(
                    json!({"passages": passages}).to_string(),
                )])
            }
            Err(e) => error(e.to_string()),
        }
    }
}

#[tool_handler]
impl ServerHandler for CairnMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("cairn", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Cairn answers questions from its knowledge base and tools, with citations.",
            )
    }
}

/// The `/mcp` service. Its sessions end when the server shuts down.
pub fn service(state: AppState) -> StreamableHttpService<CairnMcp, LocalSessionManager> {
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let (closed, stop) = (state.closed(), stop.clone());
        async move {
            closed.await;
            stop.cancel();
        }
    });
    // rmcp defaults to loopback hosts only (DNS-rebinding protection for
    // servers without auth); behind a load balancer or a DNS name that refuses
    // every real request. Every /mcp request carries a token, so any host is
    // accepted unless `server.allowed_hosts` names them.
    let hosts = state.settings.allowed_hosts.clone();
    let config = if hosts.is_empty() {
        StreamableHttpServerConfig::default().disable_allowed_hosts()
    } else {
        StreamableHttpServerConfig::default().with_allowed_hosts(hosts)
    };
    StreamableHttpService::new(
        move || Ok(CairnMcp::new(state.clone())),
        Default::default(),
        config.with_cancellation_token(stop),
    )
}

/// Answers a successful session `DELETE` with 200 instead of rmcp's 202: the
/// MCP clients (the official Python SDK among them) expect 200 or 204 and report
/// "Session termination failed: 202" otherwise.
pub async fn session_delete_ok(request: Request, next: Next) -> Response {
    let delete = request.method() == http::Method::DELETE;
    let mut response = next.run(request).await;
    if delete && response.status() == http::StatusCode::ACCEPTED {
        *response.status_mut() = http::StatusCode::OK;
    }
    response
}

/// Refuses `/mcp` requests without a valid token, with the API's error contract.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.auth.caller(request.headers()).await {
        Ok(_) => next.run(request).await,
        Err(e) => ApiError::into_response(e),
    }
}
