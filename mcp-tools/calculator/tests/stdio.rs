//! The calculator binary over real MCP: stdio and streamable HTTP, with an rmcp client.

#![allow(clippy::unwrap_used)]

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::json;

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

async fn exercise<S>(client: &rmcp::service::RunningService<rmcp::RoleClient, S>)
where
    S: rmcp::Service<rmcp::RoleClient>,
{
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "evaluate");
    assert_eq!(tools[0].input_schema["required"], json!(["expression"]));
    let args = |e: &str| json!({"expression": e}).as_object().cloned();
    let ok = client
        .call_tool(
            CallToolRequestParams::new("evaluate").with_arguments(args("(17.5 * 3) / 4").unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(ok.is_error, Some(false));
    assert_eq!(text(&ok), "13.125");
    let bad = client
        .call_tool(CallToolRequestParams::new("evaluate").with_arguments(args("2 +* 3").unwrap()))
        .await
        .unwrap();
    assert_eq!(
        bad.is_error,
        Some(true),
        "a malformed expression is a tool error"
    );
    assert!(text(&bad).contains("cannot parse"), "{}", text(&bad));
}

#[tokio::test]
async fn evaluates_over_stdio() {
    let transport = TokioChildProcess::new(tokio::process::Command::new(env!(
        "CARGO_BIN_EXE_mcp-calculator"
    )))
    .unwrap();
    let client = ().serve(transport).await.unwrap();
    exercise(&client).await;
    client.cancel().await.unwrap();
}

const TOKEN: &str = "calculator-test-token-0123456789";

/// Starts `mcp-calculator --http` with the token, and waits until it listens.
async fn http_server() -> (tokio::process::Child, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-calculator"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("MCP_AUTH_TOKEN", TOKEN)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait (bounded) until it listens.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (child, port)
}

#[tokio::test]
async fn evaluates_over_streamable_http() {
    let (mut child, port) = http_server().await;
    // The HTTP client's TLS stack needs a process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("http://127.0.0.1:{port}/mcp"),
        )
        .auth_header(TOKEN);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let client = ().serve(transport).await.unwrap();
    exercise(&client).await;
    client.cancel().await.unwrap();
    child.kill().await.unwrap();
}

#[tokio::test]
async fn http_needs_the_token_and_takes_any_host_name() {
    let (mut child, port) = http_server().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let http = reqwest::Client::new();
    let post = |auth: Option<&str>, host: &str| {
        let mut r = http
            .post(format!("http://127.0.0.1:{port}/mcp"))
            .header("host", host)
            .header("accept", "application/json, text/event-stream")
            .json(&init);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    // No token, a wrong one: 401.
    assert_eq!(post(None, "127.0.0.1").await.unwrap().status(), 401);
    let wrong = post(Some("Bearer not-the-token-at-all-000"), "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    // The token, behind a DNS name (a load balancer's Host): served.
    let ok = post(Some(&format!("Bearer {TOKEN}")), "tools.example.com")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn http_without_a_token_refuses_to_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-calculator"))
        .args(["--http", "127.0.0.1:0"])
        .env_remove("MCP_AUTH_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MCP_AUTH_TOKEN"), "{err}");
}
