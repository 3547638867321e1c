//! Shared state of the handlers.

use crate::auth::Authenticator;
use cairn_actors::Runtime;
use cairn_core::ports::{DocumentStore, EventStream, MemoryStore};
use std::sync::Arc;
use std::time::Duration;

/// API settings (from `[server]`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// How long `?wait=true` waits.
    pub wait_timeout: Duration,
    /// SSE keep-alive interval.
    pub sse_keepalive: Duration,
    /// Largest document upload (`knowledge.max_document_bytes`).
    pub max_document_bytes: usize,
    /// Scope needed to add or delete documents; `None` means any caller may.
    pub ingest_scope: Option<String>,
    /// Scope needed for tickets and analytics (`auth.desk_scope`); `None`
    /// means any caller may.
    pub desk_scope: Option<String>,
    /// Longest user message in characters (`agent.max_message_chars`).
    pub max_message_chars: usize,
    /// Queued messages per conversation (`agent.max_queued_messages`).
    pub max_queued_messages: u32,
    /// Messages a fork copies at most (`agent.max_fork_messages`).
    pub max_fork_messages: u64,
    /// Scheduled turns (`[schedules]`).
    pub schedules: cairn_core::schedules::SchedulesConfig,
    /// Which webhook URLs a message may name (`[turn_webhooks]`).
    pub turn_webhooks: cairn_core::config::TurnWebhooksConfig,
    /// Conversations per user (`agent.max_conversations_per_user`).
    pub max_conversations_per_user: u64,
    /// How often an open stream re-checks that its conversation still exists
    /// (`server.stream_recheck`).
    pub stream_recheck: Duration,
    /// `Host` names `/mcp` answers (`server.allowed_hosts`; empty: any).
    pub allowed_hosts: Vec<String>,
    /// Serve `/metrics` (`metrics.enabled`).
    pub metrics: bool,
    /// Bearer token `/metrics` requires (from `metrics.bearer_token_env`).
    pub metrics_token: Option<String>,
    /// Agent profiles (`[[agents]]`): name and description, the models of
    /// `GET /v1/models`.
    pub agent_profiles: Vec<(String, String)>,
    /// Browser origins allowed (`cors.*`).
    pub cors: cairn_core::gateway_config::CorsConfig,
}

/// Re-reads the `[mcp]` settings (from the config file and the environment).
pub type ToolsSource = Arc<dyn Fn() -> Result<cairn_core::config::McpConfig, String> + Send + Sync>;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The agent runtime (supervisor, bridges, bus).
    pub runtime: Arc<Runtime>,
    /// Conversation memory.
    pub memory: Arc<dyn MemoryStore>,
    /// Event streams.
    pub events: Arc<dyn EventStream>,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Settings.
    pub settings: Arc<ApiSettings>,
    /// Document records and ingestion jobs, when the knowledge base is enabled.
    pub documents: Option<Arc<dyn DocumentStore>>,
    /// The MCP tool host.
    pub tools: Option<Arc<cairn_tools::ToolHub>>,
    /// Reads the `[mcp]` section again, for reloads (absent without a config file).
    pub tools_source: Option<ToolsSource>,
    /// The knowledge base, when enabled.
    pub knowledge: Option<cairn_retrieval::knowledge::KnowledgeBase>,
    /// Status of components the API does not own (e.g. the knowledge base),
    /// merged into `/health` under `components`.
    pub extra_health: Arc<serde_json::Map<String, serde_json::Value>>,
    /// Open streams per user and process.
    pub streams: Arc<crate::streams::StreamLimiter>,
    /// Deletions announced to this process's open streams.
    pub deleted: tokio::sync::broadcast::Sender<(cairn_core::TenantId, cairn_core::ConversationId)>,
    /// The alert surfaces (`/v1/alerts`, `/v1/silences`), when `alerts.enabled`.
    pub alerts: Option<Arc<crate::alerts::AlertsApi>>,
    /// The support-intelligence surfaces, when `insights.enabled`.
    pub insights: Option<Arc<crate::insights::InsightsApi>>,
    /// The support desk (tickets, feedback, analytics).
    pub desk: Option<Arc<crate::desk::DeskApi>>,
    /// Small keyed records shared by the replicas (WebSocket tickets).
    pub records: Arc<dyn cairn_core::ports::RecordStore>,
    /// Request rate limits (`None`: unlimited).
    pub limits: Option<Arc<crate::limits::RequestLimits>>,
    /// Token budgets and usage (`None`: not recorded).
    pub budget: Option<Arc<crate::limits::Budget>>,
    /// Flips to true when the server shuts down; open streams end then, so a
    /// graceful shutdown does not wait on them forever.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Flips to true when a shutdown's turn drain is over: requests still
    /// waiting for a turn (`?wait=true`) answer 503 then, as the turn goes on
    /// elsewhere or after the restart.
    pub drained: tokio::sync::watch::Receiver<bool>,
    /// The development token the console pre-fills (development mode only).
    pub console_token: Option<String>,
}

impl AppState {
    /// Resolves when a shutdown's turn drain is over (see [`Self::drained`]).
    pub fn drain_over(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.drained.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Resolves when the server starts shutting down.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.closing.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}
