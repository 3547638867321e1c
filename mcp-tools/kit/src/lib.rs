//! What every MCP server in `mcp-tools/` shares: the `--http ADDR` option
//! ([`ListenArgs`], for streamable HTTP at `/mcp`; stdio otherwise) and logging to stderr (stdout
//! carries the protocol on stdio).
//!
//! Over HTTP every request needs `Authorization: Bearer <token>`, the token
//! being the value of the environment variable named by `--token-env`
//! (default `MCP_AUTH_TOKEN`); a server started with `--http` and no token
//! refuses to start. Cairn sends it through the server's `headers` table
//! (`headers = { Authorization = "ORDERS_MCP_AUTH" }`, that variable holding
//! `Bearer <token>`). `Host` is not checked unless `--allowed-host` names the
//! accepted ones: with a token required, a DNS-rebinding page cannot call the
//! server (it has no token), and behind a load balancer or a DNS name any
//! fixed loopback list would refuse every real request.

use axum::serve::ListenerExt;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, stdio};
use rmcp::{ServerHandler, ServiceExt};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// stdin/stdout (the default).
    Stdio,
    /// Streamable HTTP on this address, at `/mcp`.
    Http(String),
}

/// How the HTTP transport admits requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAccess {
    /// The bearer token every request must carry.
    pub token: String,
    /// Accepted `Host` values (empty: any).
    pub allowed_hosts: Vec<String>,
}

/// The command-line option every server has: `--http ADDR` for streamable HTTP,
/// stdio without it. Flatten it into a server's own `clap::Parser`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenArgs {
    /// Serve streamable HTTP at /mcp on this address (e.g. 127.0.0.1:7000)
    /// instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// With --http: the environment variable holding the bearer token that
    /// every request must send (`Authorization: Bearer <token>`).
    #[arg(long, value_name = "NAME", default_value = "MCP_AUTH_TOKEN")]
    pub token_env: String,
    /// With --http: a `Host` value to accept (repeatable); without any, every
    /// host is accepted (requests are authenticated by the token).
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
}

impl ListenArgs {
    /// Where to listen.
    pub fn listen(&self) -> Listen {
        match &self.http {
            Some(addr) => Listen::Http(addr.clone()),
            None => Listen::Stdio,
        }
    }

    /// The HTTP admission settings, reading the token from the environment;
    /// an error when `--http` is given without a token.
    pub fn access(&self) -> anyhow::Result<Option<HttpAccess>> {
        if self.http.is_none() {
            return Ok(None);
        }
        let token = std::env::var(&self.token_env)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--http needs a bearer token: set {} (clients send `Authorization: Bearer <token>`)",
                    self.token_env
                )
            })?;
        if token.len() < 16 {
            anyhow::bail!(
                "the token in {} must be at least 16 characters",
                self.token_env
            );
        }
        Ok(Some(HttpAccess {
            token,
            allowed_hosts: self.allowed_hosts.clone(),
        }))
    }
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guessed token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests without the bearer token (401, with `WWW-Authenticate`).
async fn require_token(
    axum::extract::State(token): axum::extract::State<std::sync::Arc<str>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let sent = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match sent {
        Some(t) if same_secret(t.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => (
            axum::http::StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required\n",
        )
            .into_response(),
    }
}

/// rmcp answers a successful session `DELETE` with 202; MCP clients (the
/// official Python SDK among them) expect 200 or 204.
async fn session_delete_ok(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let delete = request.method() == axum::http::Method::DELETE;
    let mut response = next.run(request).await;
    if delete && response.status() == axum::http::StatusCode::ACCEPTED {
        *response.status_mut() = axum::http::StatusCode::OK;
    }
    response
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Serves `make()` as the command line says: until stdin closes (stdio) or
/// Ctrl-C / SIGTERM (HTTP, with the bearer token; one server instance per
/// session).
pub async fn serve<S, F>(args: &ListenArgs, make: F) -> anyhow::Result<()>
where
    S: ServerHandler,
    F: Fn() -> S + Send + Sync + 'static,
{
    let access = args.access()?;
    match (args.listen(), access) {
        (Listen::Http(addr), Some(access)) => serve_http(&addr, access, make).await,
        _ => {
            let running = make().serve(stdio()).await?;
            running.waiting().await?;
            Ok(())
        }
    }
}

/// Serves streamable HTTP at `/mcp` on `addr`, admitting what `access` allows.
pub async fn serve_http<S, F>(addr: &str, access: HttpAccess, make: F) -> anyhow::Result<()>
where
    S: ServerHandler,
    F: Fn() -> S + Send + Sync + 'static,
{
    let config = if access.allowed_hosts.is_empty() {
        StreamableHttpServerConfig::default().disable_allowed_hosts()
    } else {
        StreamableHttpServerConfig::default().with_allowed_hosts(access.allowed_hosts)
    };
    let service: StreamableHttpService<S, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(make()), Default::default(), config);
    let token: std::sync::Arc<str> = access.token.into();
    let router = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(session_delete_ok))
        .layer(axum::middleware::from_fn_with_state(token, require_token));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving MCP over streamable HTTP at /mcp");
    // Responses are small SSE frames: without TCP_NODELAY each waits for the
    // peer's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
