//! Interop with a server nobody here wrote: the official reference server
//! `@modelcontextprotocol/server-everything` (npm; `scripts/test.sh` installs it
//! and sets `CAIRN_TEST_MCP_EVERYTHING`), over stdio and streamable HTTP: list its
//! tools, call `echo` and `get-sum`, and a long-running tool whose progress
//! notifications keep the call alive past its deadline.

#![allow(clippy::unwrap_used)]

use cairn_actors::ToolProvider;
use cairn_core::config::{McpConfig, McpServerConfig, McpTransport};
use cairn_core::ports::{Tool, ToolContext};
use cairn_core::{ConversationId, TenantId};
use cairn_tools::McpHost;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn everything() -> String {
    let path = std::env::var("CAIRN_TEST_MCP_EVERYTHING").expect(
        "CAIRN_TEST_MCP_EVERYTHING is not set: run scripts/test.sh, which installs @modelcontextprotocol/server-everything",
    );
    assert!(std::path::Path::new(&path).is_file(), "{path} is missing");
    path
}

fn base(name: &str) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        transport: McpTransport::Stdio,
        command: None,
        args: vec![],
        env: Default::default(),
        cwd: None,
        url: None,
        headers: Default::default(),
        // Shorter than the long-running call: only its progress keeps it alive.
        timeout: Duration::from_millis(1500),
        allowed_tenants: vec!["*".into()],
        allowed_tools: vec![],
        denied_tools: vec![],
    }
}

fn settings(server: McpServerConfig) -> McpConfig {
    McpConfig {
        max_result_bytes: 16 * 1024,
        max_call_duration: Duration::from_secs(30),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(30),
        servers: vec![server],
    }
}

fn ctx() -> ToolContext {
    ToolContext {
        knowledge_tags: Vec::new(),
        traceparent: None,
        cancel: Default::default(),
        tenant_id: TenantId::parse("acme").unwrap(),
        user_id: cairn_core::UserId::parse("ana").unwrap(),
        conversation_id: ConversationId::parse("c1").unwrap(),
        idempotency_key: "t:1".into(),
        deadline: Duration::from_secs(30),
    }
}

async fn exercise(host: Arc<McpHost>, server: &str) {
    assert!(
        host.wait_ready(Duration::from_secs(30)).await,
        "{:?}",
        host.status(&TenantId::parse("acme").unwrap())
    );
    let tools = host.tools_for(&TenantId::parse("acme").unwrap());
    let find = |n: &str| -> Arc<dyn Tool> {
        let full = format!("{server}.{n}");
        tools
            .iter()
            .find(|t| t.spec().name == full)
            .cloned()
            .unwrap_or_else(|| panic!("{full} not listed"))
    };
    assert!(tools.len() >= 5, "{} tools", tools.len());
    let echo = find("echo");
    assert!(echo.spec().input_schema["properties"]["message"].is_object());
    let out = echo
        .call(json!({"message": "hello interop"}), &ctx())
        .await
        .unwrap();
    assert!(!out.is_error);
    assert!(out.content.contains("hello interop"), "{}", out.content);
    let out = find("get-sum")
        .call(json!({"a": 19, "b": 23}), &ctx())
        .await
        .unwrap();
    assert!(out.content.contains("42"), "{}", out.content);
    // 3 s in 6 steps: past the 1.5 s deadline, kept alive by progress.
    let started = Instant::now();
    let out = find("trigger-long-running-operation")
        .call(json!({"duration": 3, "steps": 6}), &ctx())
        .await
        .unwrap();
    assert!(out.content.contains("completed"), "{}", out.content);
    assert!(started.elapsed() >= Duration::from_millis(2900));
    host.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_over_stdio() {
    let mut s = base("everything");
    s.command = Some("node".into());
    s.args = vec![everything(), "stdio".into()];
    exercise(McpHost::start(&settings(s), &|_| None), "everything").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_over_streamable_http() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new("node")
        .args([everything(), "streamableHttp".into()])
        .env("PORT", port.to_string())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = base("everything_http");
    s.transport = McpTransport::Http;
    s.url = Some(format!("http://127.0.0.1:{port}/mcp"));
    exercise(McpHost::start(&settings(s), &|_| None), "everything_http").await;
    child.kill().await.unwrap();
}
