//! The template over real MCP (stdio): the tool is listed with its schema, a call
//! answers, and bad input is a tool error. Keep a test like this for your server.

#![allow(clippy::unwrap_used)]

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

#[tokio::test]
async fn greets_over_stdio() {
    let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-template"));
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools[0].name, "greet");
    assert_eq!(tools[0].input_schema["required"], json!(["name"]));
    let call = |name: &str| {
        CallToolRequestParams::new("greet")
            .with_arguments(json!({"name": name}).as_object().cloned().unwrap())
    };
    let ok = client.call_tool(call("Ada")).await.unwrap();
    assert_eq!(ok.content[0].as_text().unwrap().text, "Hello, Ada!");
    let bad = client.call_tool(call("  ")).await.unwrap();
    assert_eq!(bad.is_error, Some(true));
    client.cancel().await.unwrap();
}
