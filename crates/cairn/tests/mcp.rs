//! MCP tools end to end: a scripted OpenAI-compatible model (its real wire format,
//! served by the test) calls the shipped `calculator` MCP server through the tool
//! host, gets the result and answers with it; the SSE stream shows the call.
//! Also `GET /v1/tools` and the admin reload.

#![allow(clippy::unwrap_used)]

mod common;

use axum::Json;
use axum::routing::post;
use cairn_core::config::{McpServerConfig, McpTransport, Provider};
use common::{Server, config};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The calculator binary, built with the workspace next to `cairn`.
fn calculator_bin() -> String {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap();
    let bin = dir.join("mcp-calculator");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace) before these tests",
        bin.display()
    );
    bin.display().to_string()
}

fn calculator(allowed_tenants: &[&str]) -> McpServerConfig {
    McpServerConfig {
        name: "calculator".into(),
        transport: McpTransport::Stdio,
        command: Some(calculator_bin()),
        args: vec![],
        env: Default::default(),
        cwd: None,
        url: None,
        headers: Default::default(),
        timeout: Duration::from_secs(10),
        allowed_tenants: allowed_tenants.iter().map(|t| (*t).to_owned()).collect(),
        allowed_tools: vec![],
        denied_tools: vec![],
    }
}

/// An OpenAI-compatible model: first it calls the calculator, then it answers
/// with the observation. It records the tool names it was offered.
async fn scripted_model() -> (String, Arc<Mutex<Vec<String>>>) {
    let offered: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = offered.clone();
    let app = axum::Router::new().route(
        "/chat/completions",
        post(move |Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                let names: Vec<String> = body["tools"]
                    .as_array()
                    .map(|ts| ts.iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                *seen.lock().unwrap() = names;
                let messages = body["messages"].as_array().cloned().unwrap_or_default();
                let observation = messages.iter().rev().take_while(|m| m["role"] != "user").find(|m| m["role"] == "tool").cloned();
                Json(match observation {
                    None => json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "calculator_evaluate", "arguments": "{\"expression\": \"(17.5 * 3) / 4\"}"}}
                    ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
                    Some(obs) => json!({"choices": [{"message": {"role": "assistant",
                        "content": format!("The result is {}.", obs["content"].as_str().unwrap_or("?"))}}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, offered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_calls_the_calculator_and_answers_with_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let (model_url, offered) = scripted_model().await;
    let mut cfg = config(dir.path(), None);
    cfg.llm.provider = Provider::Openai;
    cfg.llm.base_url = Some(model_url);
    cfg.llm.model = Some("test-model".into());
    cfg.llm.stream = false;
    cfg.mcp.servers = vec![calculator(&["acme"])];
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token("acme", "ana"));
    // The host connects in the background.
    for _ in 0..500 {
        let r = c.get("/v1/tools").await;
        if r.body["servers"][0]["health"] == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c.get("/v1/tools").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["servers"][0]["name"], "calculator");
    assert_eq!(r.body["servers"][0]["health"], "healthy", "{:?}", r.body);
    assert_eq!(
        r.body["servers"][0]["tools"],
        json!(["calculator.evaluate"])
    );
    let names: Vec<&str> = r.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"calculator.evaluate") && names.contains(&"current_time"),
        "{names:?}"
    );

    let conv = c.new_conversation().await;
    let answer = c.ask(&conv, "What is 17.5 times 3, divided by 4?").await;
    assert_eq!(
        answer["answer"]["content"], "The result is 13.125.",
        "{answer:?}"
    );
    assert!(
        offered
            .lock()
            .unwrap()
            .contains(&"calculator_evaluate".to_owned())
    );
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            None,
            Duration::from_secs(10),
            |evs| evs.iter().any(|(_, e, _)| e == "answer.completed"),
        )
        .await;
    let called = events.iter().find(|(_, e, _)| e == "tool.called").unwrap();
    assert_eq!(called.2["tool"], "calculator.evaluate");
    assert_eq!(called.2["arguments"]["expression"], "(17.5 * 3) / 4");
    let completed = events
        .iter()
        .find(|(_, e, _)| e == "tool.completed")
        .unwrap();
    assert_eq!(completed.2["tool"], "calculator.evaluate");
    assert_eq!(completed.2["output"], "13.125");
    assert_eq!(completed.2["is_error"], false);

    // Another tenant is not offered the server's tools.
    let other = s.client(&s.token("globex", "bo"));
    let r = other.get("/v1/tools").await;
    // ... nor told that it exists.
    assert_eq!(r.body["servers"], json!([]), "{:?}", r.body);
    let names: Vec<&str> = r.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"calculator.evaluate"));
    // Reloading restarts every tenant's servers: it needs the operator scope
    // (a tenant's admin is not enough), and a config file to reload from.
    let r = c.post("/v1/admin/tools/reload", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let tenant_admin = s.client(&s.token_with_scopes("acme", "root", &["admin"]));
    let r = tenant_admin.post("/v1/admin/tools/reload", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let admin = s.client(&s.token_with_scopes("acme", "root", &["operator"]));
    let r = admin.post("/v1/admin/tools/reload", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    s.stop().await;
}

/// An rmcp client on Cairn's `/mcp` with this bearer token.
async fn mcp_client(
    base: &str,
    token: &str,
) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ()>, String> {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    ().serve(transport).await.map_err(|e| e.to_string())
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_serves_ask_and_search_knowledge_over_mcp() {
    use rmcp::model::CallToolRequestParams;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), None);
    {
        let kb = cairn::app::open_knowledge(&cfg, &|_| None).await.unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kb");
        let tenant = cairn_core::TenantId::parse("acme").unwrap();
        cairn::ingest::ingest_paths(&kb, &tenant, &[root])
            .await
            .unwrap();
    }
    let mut s = Server::start(&cfg).await;
    // Without a valid token the MCP endpoint refuses, with the API's error contract.
    let r = reqwest::Client::new()
        .post(format!("{}/mcp", s.base))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_token");
    assert!(mcp_client(&s.base, "not-a-jwt").await.is_err());

    let client = mcp_client(&s.base, &s.token("acme", "ana")).await.unwrap();
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["ask", "decide_approval", "search_knowledge"]);
    let args = |v: Value| v.as_object().cloned().unwrap();
    let found = client
        .call_tool(
            CallToolRequestParams::new("search_knowledge")
                .with_arguments(args(json!({"query": "reset link expired", "limit": 3}))),
        )
        .await
        .unwrap();
    let found: Value =
        serde_json::from_str(&text(&found)).unwrap_or_else(|_| panic!("{}", text(&found)));
    assert_eq!(
        found["passages"][0]["document_id"],
        "account.password-reset.md"
    );
    let answer = client
        .call_tool(CallToolRequestParams::new("ask").with_arguments(args(
            json!({"question": "How long is the password reset link valid?"}),
        )))
        .await
        .unwrap();
    assert_eq!(answer.is_error, Some(false), "{}", text(&answer));
    let answer: Value = serde_json::from_str(&text(&answer)).unwrap();
    assert!(
        answer["answer"].as_str().unwrap().contains("30 minutes"),
        "{answer}"
    );
    assert_eq!(
        answer["citations"][0]["source"],
        "account.password-reset.md"
    );
    // The conversation belongs to the token's user: it is listed for them over the API.
    let conv = answer["conversation_id"].as_str().unwrap();
    let c = s.client(&s.token("acme", "ana"));
    assert_eq!(
        c.get(&format!("/v1/conversations/{conv}")).await.status,
        200
    );
    // Another tenant's token sees none of the knowledge base.
    let other = mcp_client(&s.base, &s.token("globex", "bo")).await.unwrap();
    let none = other
        .call_tool(
            CallToolRequestParams::new("search_knowledge")
                .with_arguments(args(json!({"query": "reset link expired"}))),
        )
        .await
        .unwrap();
    assert_eq!(text(&none), r#"{"passages":[]}"#);
    client.cancel().await.unwrap();
    other.cancel().await.unwrap();
    s.stop().await;
}
