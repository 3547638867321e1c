//! `mcp-bench`: the tool host's overhead for one call to a no-op tool (`echo` of
//! `mcp-fixture`, built next to this binary), over stdio and streamable HTTP;
//! sequential calls, p50/p99/max after a warm-up.
//!
//! ```text
//! cargo build --release -p cairn-tools --bins
//! target/release/mcp-bench --calls 5000
//! ```

use cairn_actors::ToolProvider;
use cairn_core::config::{McpConfig, McpServerConfig, McpTransport};
use cairn_core::ports::ToolContext;
use cairn_core::{ConversationId, TenantId};
use cairn_tools::McpHost;
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::{Duration, Instant};

fn server(
    name: &str,
    transport: McpTransport,
    fixture: &str,
    url: Option<String>,
) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        transport,
        command: Some(fixture.into()),
        args: vec![],
        env: Default::default(),
        cwd: None,
        url,
        // The fixture's default bearer token (`Bearer fixture-token-…`), named here
        // and resolved by the environment lookup below.
        headers: [("Authorization".to_owned(), "FIXTURE_AUTH".to_owned())].into(),
        timeout: Duration::from_secs(10),
        allowed_tenants: vec!["*".into()],
        allowed_tools: vec![],
        denied_tools: vec![],
    }
}

async fn measure(
    label: &str,
    s: McpServerConfig,
    calls: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = McpConfig {
        servers: vec![s],
        ..McpConfig::default()
    };
    let host = McpHost::start(&config, &|name| {
        (name == "FIXTURE_AUTH").then(|| "Bearer fixture-token-0123456789".to_owned())
    });
    if !host.wait_ready(Duration::from_secs(20)).await {
        return Err(format!("{label}: the server did not come up").into());
    }
    let tenant = TenantId::parse("bench")?;
    let echo = host
        .tools_for(&tenant)
        .into_iter()
        .find(|t| t.spec().name.ends_with(".echo"))
        .ok_or("no echo tool")?;
    let ctx = ToolContext {
        knowledge_tags: Vec::new(),
        traceparent: None,
        cancel: Default::default(),
        tenant_id: tenant,
        user_id: cairn_core::UserId::parse("ana")?,
        conversation_id: ConversationId::parse("bench")?,
        idempotency_key: "bench:1".into(),
        deadline: Duration::from_secs(10),
    };
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..calls + 200 {
        let t = Instant::now();
        let out = echo.call(json!({"text": "x"}), &ctx).await?;
        let us = t.elapsed().as_micros() as u64;
        if out.content != "x" {
            return Err("unexpected echo".into());
        }
        if i >= 200 {
            h.record(us.max(1))?;
        }
    }
    println!(
        "transport={label} calls={calls} p50={:.3}ms p99={:.3}ms max={:.3}ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    host.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: usize = std::env::args()
        .skip_while(|a| a != "--calls")
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5000);
    let fixture = std::env::current_exe()?
        .parent()
        .ok_or("no bin dir")?
        .join("mcp-fixture")
        .display()
        .to_string();
    measure(
        "stdio",
        server("fx", McpTransport::Stdio, &fixture, None),
        calls,
    )
    .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(&fixture)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    measure(
        "streamable-http",
        server("fxh", McpTransport::Http, &fixture, Some(url)),
        calls,
    )
    .await?;
    child.kill().await?;
    Ok(())
}
