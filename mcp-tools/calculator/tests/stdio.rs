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

#[tokio::test]
async fn evaluates_over_streamable_http() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-calculator"))
        .args(["--http", &format!("127.0.0.1:{port}")])
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
    // The HTTP client's TLS stack needs a process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://127.0.0.1:{port}/mcp"));
    let client = ().serve(transport).await.unwrap();
    exercise(&client).await;
    client.cancel().await.unwrap();
    child.kill().await.unwrap();
}
