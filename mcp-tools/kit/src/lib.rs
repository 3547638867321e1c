//! What every MCP server in `mcp-tools/` shares: the command line (`--http ADDR`
//! for streamable HTTP at `/mcp`, stdio otherwise) and logging to stderr (stdout
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

/// Reads `--http ADDR` from the arguments (anything else is an error).
pub fn listen_from_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Listen> {
    let (listen, rest) = split_listen(args)?;
    if let Some(other) = rest.first() {
        anyhow::bail!("unknown argument `{other}` (usage: [--http ADDR])");
    }
    Ok(listen)
}

/// Takes `--http ADDR` out of the arguments and returns the others, for servers
/// with options of their own.
pub fn split_listen(
    args: impl IntoIterator<Item = String>,
) -> anyhow::Result<(Listen, Vec<String>)> {
    let mut args = args.into_iter();
    let mut listen = Listen::Stdio;
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--http" => {
                let addr = args.next().ok_or_else(|| {
                    anyhow::anyhow!("--http needs an address, e.g. 127.0.0.1:7000")
                })?;
                listen = Listen::Http(addr);
            }
            other if other.starts_with("--http=") => {
                listen = Listen::Http(other.trim_start_matches("--http=").to_owned());
            }
            _ => rest.push(a),
        }
    }
    Ok((listen, rest))
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
