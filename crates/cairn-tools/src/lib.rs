//! The MCP tool host: one supervised client per configured MCP server (rmcp),
//! whose tools are offered to agents as `server.tool` through the
//! [`ToolProvider`] of the tool catalog.
//!
//! - [`McpHost::start`] runs one supervisor task per `[[mcp.servers]]` entry: it
//!   connects (stdio child process or streamable HTTP), lists the tools (all pages),
//!   re-lists them when the server says its list changed, and reconnects with
//!   exponential backoff when the server exits or the connection drops. After
//!   `mcp.breaker_failures` failures in a row the breaker opens: the server's tools
//!   are withheld from the model until a retry after `mcp.breaker_cooldown` works.
//! - [`McpTool`] is one server tool behind the `Tool` port. A call checks the
//!   tenant (`allowed_tenants`), validates the arguments against the tool's input
//!   schema before anything is sent, carries the idempotency key `turn_id:step` in
//!   the request's `_meta` (`idempotency_key`) beside the caller's `tenant_id`
//!   and `user_id` (and the call span's W3C `traceparent` when tracing is on),
//!   and has a deadline (the server's
//!   `timeout`): when it passes, the server is sent a cancellation and the agent
//!   gets a tool error. Progress notifications extend the deadline, up to
//!   `mcp.max_call_duration`. Results longer than `mcp.max_result_bytes` are cut
//!   with a note. `isError` results are observations; protocol errors are logged,
//!   count towards the breaker, and reach the agent as tool errors.
//! - [`McpHost::status`] is what `GET /v1/tools` shows: the health of each
//!   server the caller's tenant may use and its tools, with errors scrubbed of
//!   URLs and header values.
//! - stdio servers start with a cleared environment: [`INHERITED_ENV`] plus
//!   exactly what their `env` table names.

use async_trait::async_trait;
use cairn_actors::ToolProvider;
use cairn_core::TenantId;
use cairn_core::config::{McpConfig, McpServerConfig, McpTransport};
use cairn_core::ports::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};
use rmcp::model::{
    CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientRequest,
    Request, RequestMetaObject, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Key of the idempotency key in a call's `_meta`.
pub const IDEMPOTENCY_META_KEY: &str = "idempotency_key";
/// Key of the calling tenant in a call's `_meta`.
pub const TENANT_META_KEY: &str = "tenant_id";
/// Key of the calling user in a call's `_meta`.
pub const USER_META_KEY: &str = "user_id";
/// The variables a stdio server inherits from Cairn's environment; everything
/// else it gets comes from its `env` table. Cairn's own secrets (the JWT secret,
/// model, embeddings and Qdrant keys, the Kafka password) stay with Cairn.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG"];
/// First reconnect delay; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long connecting and listing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Health of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not connected yet.
    Starting,
    /// Connected; its tools are offered.
    Healthy,
    /// Lost; reconnecting with backoff (tools withheld).
    Reconnecting,
    /// Failed too often; tools withheld until the cooldown ends.
    BreakerOpen,
}

/// What the host knows about one server.
struct ServerState {
    health: Health,
    peer: Option<Peer<RoleClient>>,
    tools: Vec<Arc<McpTool>>,
    consecutive_failures: u32,
    last_error: Option<String>,
}

/// One configured server.
struct Server {
    config: McpServerConfig,
    /// Values that must never reach a tenant: header values and the URL.
    secrets: Vec<String>,
    state: RwLock<ServerState>,
    /// The server said its tool list changed.
    list_changed: Arc<Notify>,
}

impl Server {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ServerState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ServerState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn tenant_allowed(&self, tenant: &TenantId) -> bool {
        tenant_allowed(&self.config.allowed_tenants, tenant)
    }

    fn tool_allowed(&self, tool: &str) -> bool {
        (self.config.allowed_tools.is_empty()
            || self.config.allowed_tools.iter().any(|t| t == tool))
            && !self.config.denied_tools.iter().any(|t| t == tool)
    }

    /// Counts a failure; opens the breaker at the threshold.
    fn failed(&self, error: String, threshold: u32) {
        let mut s = self.write();
        s.consecutive_failures += 1;
        s.peer = None;
        s.health = if s.consecutive_failures >= threshold {
            Health::BreakerOpen
        } else {
            Health::Reconnecting
        };
        tracing::warn!(server = %self.config.name, failures = s.consecutive_failures, error = %error, health = ?s.health, "MCP server failed");
        s.last_error = Some(error);
    }
}

/// An error message fit for tenants: every URL (`scheme://…` up to the next
/// space) becomes `<url>` and every known secret `<redacted>`.
pub fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_owned();
    for secret in secrets {
        out = out.replace(secret.as_str(), "<redacted>");
    }
    let mut scrubbed = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("://") {
        // Back up over the scheme.
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .map_or(rest.len(), |i| at + i);
        scrubbed.push_str(&rest[..start]);
        scrubbed.push_str("<url>");
        rest = &rest[end..];
    }
    scrubbed.push_str(rest);
    scrubbed
}

/// True when `allowed` (a server's `allowed_tenants`) lets `tenant` in.
fn tenant_allowed(allowed: &[String], tenant: &TenantId) -> bool {
    allowed.iter().any(|t| t == "*" || t == tenant.as_str())
}

/// Receives server notifications for one connection.
#[derive(Clone)]
struct Handler {
    list_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }
}

/// The tool host.
pub struct McpHost {
    servers: Vec<Arc<Server>>,
    settings: Arc<McpConfig>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One server's status for `GET /v1/tools`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerStatus {
    /// Server name.
    pub name: String,
    /// Health.
    pub health: Health,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// Tools the caller may use (empty while unhealthy).
    pub tools: Vec<ToolSpec>,
}

impl McpHost {
    /// Starts a supervisor per server; `env` resolves header secrets. Returns at
    /// once: servers connect in the background (see [`McpHost::wait_ready`]).
    pub fn start(config: &McpConfig, env: &dyn Fn(&str) -> Option<String>) -> Arc<Self> {
        // The HTTP transport's TLS needs a process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = Arc::new(config.clone());
        let mut servers = Vec::new();
        let mut tasks = Vec::new();
        for c in &config.servers {
            let headers: Vec<(String, Option<String>)> = c
                .headers
                .iter()
                .map(|(h, var)| (h.clone(), env(var)))
                .collect();
            let secrets = headers
                .iter()
                .filter_map(|(_, v)| v.clone())
                .chain(c.url.clone())
                .chain(c.env.values().cloned())
                .filter(|v| v.len() >= 4)
                .collect();
            let server = Arc::new(Server {
                config: c.clone(),
                secrets,
                state: RwLock::new(ServerState {
                    health: Health::Starting,
                    peer: None,
                    tools: Vec::new(),
                    consecutive_failures: 0,
                    last_error: None,
                }),
                list_changed: Arc::new(Notify::new()),
            });
            tasks.push(tokio::spawn(supervise(
                server.clone(),
                settings.clone(),
                headers,
            )));
            servers.push(server);
        }
        Arc::new(Self {
            servers,
            settings,
            tasks,
        })
    }

    /// Waits (at most `timeout`) until every server is healthy or has failed at
    /// least once; true when all are healthy.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let states: Vec<Health> = self.servers.iter().map(|s| s.read().health).collect();
            if states.iter().all(|h| *h == Health::Healthy) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status of each server `tenant` may use, with its tools; errors are
    /// scrubbed of URLs and header values (they can hold credentials). Servers
    /// closed to the tenant are not listed at all.
    pub fn status(&self, tenant: &TenantId) -> Vec<ServerStatus> {
        self.servers
            .iter()
            .filter(|s| s.tenant_allowed(tenant))
            .map(|s| {
                let st = s.read();
                let tools = if st.health == Health::Healthy {
                    st.tools.iter().map(|t| t.spec.clone()).collect()
                } else {
                    Vec::new()
                };
                ServerStatus {
                    name: s.config.name.clone(),
                    health: st.health,
                    consecutive_failures: st.consecutive_failures,
                    last_error: st.last_error.as_deref().map(|e| scrub(e, &s.secrets)),
                    tools,
                }
            })
            .collect()
    }

    /// Each server's breaker: true while it is open, or while a server that
    /// opened it is being tried again and has not recovered (the
    /// `McpBreakerOpen` alert rule reads this).
    pub fn breakers(&self) -> Vec<(String, bool)> {
        let threshold = self.settings.breaker_failures.max(1);
        self.servers
            .iter()
            .map(|s| {
                let st = s.read();
                let open = st.health == Health::BreakerOpen
                    || (st.health != Health::Healthy && st.consecutive_failures >= threshold);
                (s.config.name.clone(), open)
            })
            .collect()
    }

    /// The settings the host runs with.
    pub fn settings(&self) -> &McpConfig {
        &self.settings
    }

    /// Stops the supervisors (child processes are killed when dropped).
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        for s in &self.servers {
            let mut st = s.write();
            st.peer = None;
            st.tools.clear();
        }
    }
}

impl Drop for McpHost {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ToolProvider for McpHost {
    fn tools_for(&self, tenant: &TenantId) -> Vec<Arc<dyn Tool>> {
        self.servers
            .iter()
            .filter(|s| s.tenant_allowed(tenant))
            .flat_map(|s| {
                let st = s.read();
                if st.health == Health::Healthy {
                    st.tools
                        .iter()
                        .map(|t| t.clone() as Arc<dyn Tool>)
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect()
    }
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(10)))
        .min(MAX_BACKOFF)
}

/// Connects, lists, watches; reconnects with backoff; opens the breaker.
async fn supervise(
    server: Arc<Server>,
    settings: Arc<McpConfig>,
    headers: Vec<(String, Option<String>)>,
) {
    let name = server.config.name.clone();
    loop {
        // In its own task, so that a panic in a transport is a failed attempt,
        // not the end of the supervisor.
        let attempt = tokio::spawn({
            let (server, headers) = (server.clone(), headers.clone());
            async move { connect(&server, &headers).await }
        });
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
        let running = match connected {
            Ok(Ok(Ok(r))) => r,
            Ok(Err(e)) => {
                server.failed(
                    format!("the connection attempt crashed: {e}"),
                    settings.breaker_failures,
                );
                pause(&server, &settings).await;
                continue;
            }
            Ok(Ok(Err(e))) => {
                server.failed(format!("cannot connect: {e}"), settings.breaker_failures);
                pause(&server, &settings).await;
                continue;
            }
            Err(_) => {
                server.failed("connecting timed out".into(), settings.breaker_failures);
                pause(&server, &settings).await;
                continue;
            }
        };
        let peer = running.peer().clone();
        if let Err(e) = refresh(&server, &settings, &peer).await {
            server.failed(format!("cannot list tools: {e}"), settings.breaker_failures);
            let _ = running.cancel().await;
            pause(&server, &settings).await;
            continue;
        }
        {
            let mut st = server.write();
            st.health = Health::Healthy;
            st.peer = Some(peer.clone());
            st.consecutive_failures = 0;
        }
        tracing::info!(server = %name, tools = server.read().tools.len(), "MCP server connected");
        let mut waiting = Box::pin(running.waiting());
        let reason = loop {
            tokio::select! {
                r = &mut waiting => break format!("{r:?}"),
                () = server.list_changed.notified() => {
                    if let Err(e) = refresh(&server, &settings, &peer).await {
                        tracing::warn!(server = %name, error = %e, "cannot re-list tools");
                    } else {
                        tracing::info!(server = %name, tools = server.read().tools.len(), "MCP tool list changed");
                    }
                }
            }
        };
        server.failed(
            format!("the connection ended ({reason})"),
            settings.breaker_failures,
        );
        pause(&server, &settings).await;
    }
}

/// Waits before the next attempt: backoff, or the cooldown when the breaker is open.
async fn pause(server: &Server, settings: &McpConfig) {
    let (health, failures) = {
        let st = server.read();
        (st.health, st.consecutive_failures)
    };
    let wait = if health == Health::BreakerOpen {
        settings.breaker_cooldown
    } else {
        backoff(failures)
    };
    tokio::time::sleep(wait).await;
}

async fn connect(
    server: &Server,
    headers: &[(String, Option<String>)],
) -> Result<RunningService<RoleClient, Handler>, String> {
    let c = &server.config;
    let handler = Handler {
        list_changed: server.list_changed.clone(),
    };
    match c.transport {
        McpTransport::Stdio => {
            let mut cmd = tokio::process::Command::new(c.command.as_deref().unwrap_or_default());
            cmd.args(&c.args).env_clear().kill_on_drop(true);
            for var in INHERITED_ENV {
                if let Some(value) = std::env::var_os(var) {
                    cmd.env(var, value);
                }
            }
            cmd.envs(&c.env);
            if let Some(dir) = &c.cwd {
                cmd.current_dir(dir);
            }
            let transport = TokioChildProcess::new(cmd).map_err(|e| {
                format!(
                    "cannot start `{}`: {e}",
                    c.command.as_deref().unwrap_or_default()
                )
            })?;
            handler.serve(transport).await.map_err(|e| e.to_string())
        }
        McpTransport::Http => {
            let mut config =
                StreamableHttpClientTransportConfig::with_uri(c.url.clone().unwrap_or_default());
            for (name, value) in headers {
                let value = value.as_deref().ok_or_else(|| {
                    format!("the environment variable for header `{name}` is not set")
                })?;
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("bad header name `{name}`: {e}"))?;
                let value = http::HeaderValue::from_str(value).map_err(|_| {
                    format!("the value of header `{name}` is not a valid header value")
                })?;
                config.custom_headers.insert(name, value);
            }
            let transport =
                StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
            handler.serve(transport).await.map_err(|e| e.to_string())
        }
    }
}

/// Lists every page of tools and replaces the server's tool set.
async fn refresh(
    server: &Server,
    settings: &Arc<McpConfig>,
    peer: &Peer<RoleClient>,
) -> Result<(), ServiceError> {
    let listed = peer.list_all_tools().await?;
    let mut tools = Vec::new();
    for t in listed {
        if !server.tool_allowed(&t.name) {
            continue;
        }
        let schema = Value::Object((*t.input_schema).clone());
        let validator = match jsonschema::validator_for(&schema) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(server = %server.config.name, tool = %t.name, error = %e, "the tool's input schema does not compile; arguments go unchecked");
                None
            }
        };
        tools.push(Arc::new(McpTool {
            spec: ToolSpec {
                name: format!("{}.{}", server.config.name, t.name),
                description: t.description.as_deref().unwrap_or_default().to_owned(),
                input_schema: schema,
            },
            tool: t.name.to_string(),
            server: server.config.name.clone(),
            timeout: server.config.timeout,
            settings: settings.clone(),
            validator,
            peer: peer.clone(),
            allowed_tenants: server.config.allowed_tenants.clone(),
        }));
    }
    server.write().tools = tools;
    Ok(())
}

/// One server tool behind the `Tool` port.
pub struct McpTool {
    spec: ToolSpec,
    tool: String,
    server: String,
    timeout: Duration,
    settings: Arc<McpConfig>,
    validator: Option<jsonschema::Validator>,
    peer: Peer<RoleClient>,
    allowed_tenants: Vec<String>,
}

/// Cuts `text` to at most `max` bytes (on a character boundary) with a note.
pub fn truncate_result(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n[result truncated: {} of {} bytes shown]",
        &text[..cut],
        cut,
        text.len()
    )
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn max_duration(&self, _deadline: Duration) -> Duration {
        self.settings.max_call_duration
    }

    async fn call(&self, arguments: Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        if !tenant_allowed(&self.allowed_tenants, &ctx.tenant_id) {
            return Err(ToolError::Unknown(self.spec.name.clone()));
        }
        let arguments = match arguments {
            Value::Null => json!({}),
            other => other,
        };
        if let Some(v) = &self.validator {
            let problems: Vec<String> = v
                .iter_errors(&arguments)
                .take(5)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            if !problems.is_empty() {
                return Err(ToolError::InvalidArguments(problems.join("; ")));
            }
        }
        let Value::Object(args) = arguments else {
            return Err(ToolError::InvalidArguments(
                "arguments must be a JSON object".into(),
            ));
        };
        let mut meta = RequestMetaObject::new();
        meta.insert(IDEMPOTENCY_META_KEY.into(), json!(ctx.idempotency_key));
        meta.insert(TENANT_META_KEY.into(), json!(ctx.tenant_id.as_str()));
        meta.insert(USER_META_KEY.into(), json!(ctx.user_id.as_str()));
        if let Some(tp) = &ctx.traceparent {
            // W3C trace context, as the MCP tracing convention carries it.
            meta.insert("traceparent".into(), json!(tp));
        }
        let options = PeerRequestOptions::with_timeout(self.timeout)
            .reset_timeout_on_progress()
            .with_max_total_timeout(self.settings.max_call_duration)
            .with_meta(meta);
        let params = CallToolRequestParams::new(self.tool.clone()).with_arguments(args);
        let started = Instant::now();
        let response = async {
            let handle = self
                .peer
                .send_request_with_option(
                    ClientRequest::CallToolRequest(Request::new(params)),
                    options,
                )
                .await?;
            let id = handle.id.clone();
            tokio::select! {
                r = handle.await_response() => r.map(Some),
                () = ctx.cancel.cancelled() => {
                    // The turn was cancelled: tell the server to stop, stop waiting.
                    let note = CancelledNotification::new(CancelledNotificationParam::new(
                        Some(id),
                        Some("the turn was cancelled".into()),
                    ));
                    if let Err(e) = self.peer.send_notification(note.into()).await {
                        tracing::warn!(server = %self.server, tool = %self.tool, error = %e, "cannot send the cancellation");
                    }
                    Ok(None)
                }
            }
        }
        .await;
        let response = match response {
            Ok(None) => {
                tracing::info!(server = %self.server, tool = %self.tool, "MCP call cancelled with its turn");
                return Err(ToolError::Cancelled);
            }
            Ok(Some(r)) => Ok(r),
            Err(e) => Err(e),
        };
        match response {
            Ok(ServerResult::CallToolResult(r)) => {
                let mut parts: Vec<String> = Vec::new();
                for c in &r.content {
                    match c.as_text() {
                        Some(t) => parts.push(t.text.clone()),
                        None => parts.push(serde_json::to_string(c).unwrap_or_default()),
                    }
                }
                if parts.is_empty()
                    && let Some(s) = &r.structured_content
                {
                    parts.push(s.to_string());
                }
                Ok(ToolOutput {
                    content: truncate_result(parts.join("\n"), self.settings.max_result_bytes),
                    is_error: r.is_error.unwrap_or(false),
                })
            }
            Ok(other) => {
                tracing::warn!(server = %self.server, tool = %self.tool, "unexpected response to tools/call: {other:?}");
                Err(ToolError::Failed(format!(
                    "{} answered tools/call with something else",
                    self.server
                )))
            }
            Err(ServiceError::Timeout { .. }) => {
                tracing::warn!(server = %self.server, tool = %self.tool, after_ms = started.elapsed().as_millis() as u64, "MCP call timed out; cancellation sent");
                Err(ToolError::Timeout(started.elapsed()))
            }
            Err(ServiceError::McpError(e)) => {
                // A JSON-RPC error from the server: report it to the model.
                tracing::warn!(server = %self.server, tool = %self.tool, code = ?e.code, message = %e.message, "MCP server returned a protocol error");
                Err(ToolError::Failed(format!("{}: {}", self.server, e.message)))
            }
            Err(e) => {
                tracing::warn!(server = %self.server, tool = %self.tool, error = %e, "MCP call failed");
                // The observation lands in the tenant's transcript: no URLs.
                Err(ToolError::Failed(format!(
                    "{} is unavailable: {}",
                    self.server,
                    scrub(&e.to_string(), &[])
                )))
            }
        }
    }
}

/// Looks environment variables up (header secrets).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The host behind a lock, so that a reload (new `[mcp]` settings) swaps every
/// server at once; what the catalog and the API hold.
pub struct ToolHub {
    host: RwLock<Arc<McpHost>>,
    env: Env,
}

impl ToolHub {
    /// Starts the servers of `config`; `env` resolves header secrets (now and on reload).
    pub fn start(config: &McpConfig, env: Env) -> Arc<Self> {
        let host = McpHost::start(config, env.as_ref());
        Arc::new(Self {
            host: RwLock::new(host),
            env,
        })
    }

    /// The current host.
    pub fn host(&self) -> Arc<McpHost> {
        self.host.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces every server with those of `config` (calls in flight on the old
    /// connections finish or fail on their own; the old processes stop).
    pub fn reload(&self, config: &McpConfig) {
        let new = McpHost::start(config, self.env.as_ref());
        let old = std::mem::replace(
            &mut *self.host.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        old.shutdown();
        tracing::info!(servers = config.servers.len(), "MCP servers reloaded");
    }

    /// Stops every server.
    pub fn shutdown(&self) {
        self.host().shutdown();
    }
}

impl ToolProvider for ToolHub {
    fn tools_for(&self, tenant: &TenantId) -> Vec<Arc<dyn Tool>> {
        self.host().tools_for(tenant)
    }
}
