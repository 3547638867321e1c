//! What every MCP server in `mcp-tools/` shares: the `--http ADDR` option
//! ([`ListenArgs`], for streamable HTTP at `/mcp`; stdio otherwise) and logging to stderr (stdout
//! carries the protocol on stdio).

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

/// The command-line option every server has: `--http ADDR` for streamable HTTP,
/// stdio without it. Flatten it into a server's own `clap::Parser`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenArgs {
    /// Serve streamable HTTP at /mcp on this address (e.g. 127.0.0.1:7000)
    /// instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
}

impl ListenArgs {
    /// Where to listen.
    pub fn listen(&self) -> Listen {
        match &self.http {
            Some(addr) => Listen::Http(addr.clone()),
            None => Listen::Stdio,
        }
    }
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

/// Serves `make()` until stdin closes (stdio) or Ctrl-C / SIGTERM (HTTP; one
/// server instance per session).
pub async fn serve<S, F>(listen: Listen, make: F) -> anyhow::Result<()>
where
    S: ServerHandler,
    F: Fn() -> S + Send + Sync + 'static,
{
    match listen {
        Listen::Stdio => {
            let running = make().serve(stdio()).await?;
            running.waiting().await?;
        }
        Listen::Http(addr) => {
            let service: StreamableHttpService<S, LocalSessionManager> = StreamableHttpService::new(
                move || Ok(make()),
                Default::default(),
                StreamableHttpServerConfig::default(),
            );
            let router = axum::Router::new().nest_service("/mcp", service);
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving MCP over streamable HTTP at /mcp");
            // Responses are small SSE frames: without TCP_NODELAY each waits for
            // the peer's delayed ACK (~40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
    }
    Ok(())
}
