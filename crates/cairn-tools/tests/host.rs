//! The tool host against a real MCP server process (`mcp-fixture`, stdio):
//! listing, namespacing, idempotency keys, argument validation, deadlines with
//! cancellation, progress, truncation, tool errors, restarts, the breaker and
//! tenant rules.

#![allow(clippy::unwrap_used)]

use cairn_actors::ToolProvider;
use cairn_core::config::{McpConfig, McpServerConfig, McpTransport};
use cairn_core::ports::{Tool, ToolContext, ToolError};
use cairn_core::{ConversationId, TenantId};
use cairn_tools::{Health, McpHost};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn server(name: &str, log: &std::path::Path, args: &[&str]) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        transport: McpTransport::Stdio,
        command: Some(env!("CARGO_BIN_EXE_mcp-fixture").into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: [("FIXTURE_LOG".to_owned(), log.display().to_string())].into(),
        cwd: None,
        url: None,
        headers: Default::default(),
        timeout: Duration::from_millis(400),
        allowed_tenants: vec!["*".into()],
        allowed_tools: vec![],
        denied_tools: vec![],
    }
}

fn settings(servers: Vec<McpServerConfig>) -> McpConfig {
    McpConfig {
        max_result_bytes: 1000,
        max_call_duration: Duration::from_millis(1500),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(60),
        servers,
    }
}

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

fn ctx(t: &str, key: &str) -> ToolContext {
    ToolContext {
        knowledge_tags: Vec::new(),
        traceparent: None,
        cancel: Default::default(),
        tenant_id: tenant(t),
        user_id: cairn_core::UserId::parse("ana").unwrap(),
        conversation_id: ConversationId::parse("c1").unwrap(),
        idempotency_key: key.into(),
        deadline: Duration::from_secs(5),
    }
}

fn tool(host: &McpHost, t: &str, name: &str) -> Arc<dyn Tool> {
    host.tools_for(&tenant(t))
        .into_iter()
        .find(|x| x.spec().name == name)
        .unwrap_or_else(|| panic!("{name} is not offered to {t}"))
}

async fn started(config: McpConfig) -> Arc<McpHost> {
    let host = McpHost::start(&config, &|_| None);
    assert!(
        host.wait_ready(Duration::from_secs(20)).await,
        "{:?}",
        host.status(&tenant("acme"))
    );
    host
}

/// Polls `f` (bounded) until it holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_namespaced_and_called_with_the_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let host = started(settings(vec![server("fx", &dir.path().join("log"), &[])])).await;
    let mut names: Vec<String> = host
        .tools_for(&tenant("acme"))
        .iter()
        .map(|t| t.spec().name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "fx.add",
            "fx.crash",
            "fx.echo",
            "fx.env",
            "fx.fail",
            "fx.huge",
            "fx.key",
            "fx.meta",
            "fx.progress",
            "fx.reveal",
            "fx.sleep"
        ]
    );
    let add = tool(&host, "acme", "fx.add");
    assert_eq!(add.spec().input_schema["properties"]["a"]["type"], "number");
    let out = add
        .call(json!({"a": 2, "b": 40.5}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert_eq!((out.content.as_str(), out.is_error), ("42.5", false));
    let out = tool(&host, "acme", "fx.key")
        .call(json!({}), &ctx("acme", "turn-7:2"))
        .await
        .unwrap();
    assert_eq!(out.content, "turn-7:2", "the key travels in _meta");
    let out = tool(&host, "acme", "fx.fail")
        .call(json!({}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert!(out.is_error, "isError is an observation, not a failure");
    assert_eq!(out.content, "the order does not exist");
    let status = host.status(&tenant("acme"));
    assert_eq!(status[0].health, Health::Healthy);
    assert_eq!(status[0].tools.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_are_rejected_before_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let host = started(settings(vec![server("fx", &dir.path().join("log"), &[])])).await;
    let add = tool(&host, "acme", "fx.add");
    match add
        .call(json!({"a": "two", "b": 1}), &ctx("acme", "k"))
        .await
    {
        Err(ToolError::InvalidArguments(m)) => assert!(m.contains("/a"), "{m}"),
        other => panic!("{other:?}"),
    }
    match add.call(json!({"a": 1}), &ctx("acme", "k")).await {
        Err(ToolError::InvalidArguments(m)) => assert!(m.contains("\"b\""), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_times_out_and_is_cancelled_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let host = started(settings(vec![server("fx", &log, &[])])).await;
    let started = Instant::now();
    let r = tool(&host, "acme", "fx.sleep")
        .call(json!({"ms": 30000}), &ctx("acme", "k"))
        .await;
    assert!(matches!(r, Err(ToolError::Timeout(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("the server logs the cancellation", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("cancelled")
    })
    .await;
    // The server is still usable afterwards.
    let out = tool(&host, "acme", "fx.echo")
        .call(json!({"text": "still here"}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert_eq!(out.content, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_extends_the_deadline_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let host = started(settings(vec![server("fx", &dir.path().join("log"), &[])])).await;
    let progress = tool(&host, "acme", "fx.progress");
    // 6 × 150 ms = 900 ms, past the 400 ms timeout but with progress in between.
    let out = progress
        .call(json!({"steps": 6, "ms": 150}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert_eq!(out.content, "done");
    // 20 × 150 ms = 3 s is past the 1.5 s hard cap, progress or not.
    let r = progress
        .call(json!({"steps": 20, "ms": 150}), &ctx("acme", "k"))
        .await;
    assert!(matches!(r, Err(ToolError::Timeout(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_results_are_truncated_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let host = started(settings(vec![server("fx", &dir.path().join("log"), &[])])).await;
    let out = tool(&host, "acme", "fx.huge")
        .call(json!({"bytes": 50000}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert!(out.content.len() < 1100, "{}", out.content.len());
    assert!(
        out.content
            .ends_with("[result truncated: 1000 of 50000 bytes shown]"),
        "{}",
        &out.content[990..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let host = started(settings(vec![server("fx", &log, &[])])).await;
    let r = tool(&host, "acme", "fx.crash")
        .call(json!({}), &ctx("acme", "k"))
        .await;
    assert!(r.is_err(), "{r:?}");
    eventually("the server is started again", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("started")
            .count()
            >= 2
    })
    .await;
    assert!(host.wait_ready(Duration::from_secs(20)).await);
    let out = tool(&host, "acme", "fx.echo")
        .call(json!({"text": "back"}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert_eq!(out.content, "back");
    assert_eq!(host.status(&tenant("acme"))[0].consecutive_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_failing_opens_the_breaker_and_its_tools_are_withheld() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = settings(vec![
        server("fx", &dir.path().join("ok-log"), &[]),
        server("broken", &log, &["--exit-at-start"]),
    ]);
    config.breaker_failures = 3;
    let host = McpHost::start(&config, &|_| None);
    eventually("the breaker opens", || {
        host.status(&tenant("acme"))
            .iter()
            .any(|s| s.name == "broken" && s.health == Health::BreakerOpen)
    })
    .await;
    let broken = host
        .status(&tenant("acme"))
        .into_iter()
        .find(|s| s.name == "broken")
        .unwrap();
    assert_eq!(broken.consecutive_failures, 3);
    assert!(broken.last_error.is_some());
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("started")
            .count(),
        3,
        "no retry while open"
    );
    eventually("the healthy server's tools stay offered", || {
        host.tools_for(&tenant("acme"))
            .iter()
            .any(|t| t.spec().name == "fx.echo")
    })
    .await;
    assert!(
        host.tools_for(&tenant("acme"))
            .iter()
            .all(|t| !t.spec().name.starts_with("broken."))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_tool_lists_restrict_what_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let mut only_acme = server("fx", &dir.path().join("log"), &[]);
    only_acme.allowed_tenants = vec!["acme".into()];
    only_acme.allowed_tools = vec!["echo".into(), "add".into(), "crash".into()];
    only_acme.denied_tools = vec!["crash".into()];
    let host = started(settings(vec![only_acme])).await;
    let mut names: Vec<String> = host
        .tools_for(&tenant("acme"))
        .iter()
        .map(|t| t.spec().name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["fx.add", "fx.echo"]);
    assert!(host.tools_for(&tenant("globex")).is_empty());
    // A tenant does not even see that a server closed to it exists.
    assert!(host.status(&tenant("globex")).is_empty());
    assert_eq!(host.status(&tenant("acme")).len(), 1);
    // Even holding the tool, another tenant's call is refused.
    let echo = tool(&host, "acme", "fx.echo");
    let r = echo.call(json!({"text": "hi"}), &ctx("globex", "k")).await;
    assert!(matches!(r, Err(ToolError::Unknown(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_list_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let host = started(settings(vec![server("fx", &dir.path().join("log"), &[])])).await;
    let offered = |name: &str| {
        host.tools_for(&tenant("acme"))
            .iter()
            .any(|t| t.spec().name == name)
    };
    assert!(!offered("fx.secret"));
    let out = tool(&host, "acme", "fx.reveal")
        .call(json!({}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert_eq!(out.content, "revealed");
    eventually(
        "the new tool is offered after notifications/tools/list_changed",
        || offered("fx.secret"),
    )
    .await;
    let out = tool(&host, "acme", "fx.secret")
        .call(json!({}), &ctx("acme", "k"))
        .await
        .unwrap();
    assert_eq!(out.content, "found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_travels_in_meta_and_the_environment_stays_home() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server("fx", &dir.path().join("log"), &[]);
    s.env.insert("TOOL_SETTING".into(), "on".into());
    let host = started(settings(vec![s])).await;
    let out = tool(&host, "acme", "fx.meta")
        .call(json!({}), &ctx("acme", "turn-9:1"))
        .await
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&out.content).unwrap();
    assert_eq!(meta["tenant_id"], "acme");
    assert_eq!(meta["user_id"], "ana");
    assert_eq!(meta["idempotency_key"], "turn-9:1");
    // The server sees PATH, HOME, LANG (when Cairn has them) and its env table:
    // none of the test process's other variables (cargo's, CAIRN_*, secrets).
    let out = tool(&host, "acme", "fx.env")
        .call(json!({}), &ctx("acme", "k"))
        .await
        .unwrap();
    let names: Vec<&str> = out.content.split(',').collect();
    assert!(
        names.contains(&"TOOL_SETTING") && names.contains(&"FIXTURE_LOG"),
        "{names:?}"
    );
    assert!(names.contains(&"PATH"), "{names:?}");
    for name in &names {
        assert!(
            ["PATH", "HOME", "LANG", "TOOL_SETTING", "FIXTURE_LOG"].contains(name),
            "the server inherited {name}"
        );
    }
    assert!(!names.iter().any(|n| n.starts_with("CARGO")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_closed_until_tenants_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut closed = server("fx", &dir.path().join("log"), &[]);
    closed.allowed_tenants = Vec::new();
    let host = started(settings(vec![closed])).await;
    assert!(host.tools_for(&tenant("acme")).is_empty());
    assert!(host.status(&tenant("acme")).is_empty());
    // The config default is that empty list, and validation says so.
    let file = dir.path().join("cairn.toml");
    std::fs::write(&file, "[[mcp.servers]]\nname = \"fx\"\ncommand = \"x\"\n").unwrap();
    let cfg =
        cairn_core::config::Config::load(Some(&file), Vec::<(String, String)>::new()).unwrap();
    assert!(cfg.mcp.servers[0].allowed_tenants.is_empty());
    assert!(
        cfg.warnings()[0].contains("no allowed_tenants"),
        "{:?}",
        cfg.warnings()
    );
}

#[test]
fn errors_shown_to_tenants_carry_no_urls_or_secrets() {
    let e = "cannot connect: error sending request for url (https://user:pa55@tools.internal:8443/mcp?key=abc): Bearer s3cr3t-token refused";
    let shown = cairn_tools::scrub(e, &["s3cr3t-token".to_owned()]);
    assert!(
        !shown.contains("pa55") && !shown.contains("tools.internal"),
        "{shown}"
    );
    assert!(!shown.contains("s3cr3t-token"), "{shown}");
    assert!(
        shown.contains("<url>") && shown.contains("cannot connect"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_servers_status_hides_its_url_from_tenants() {
    let mut s = server("remote", std::path::Path::new("/dev/null"), &[]);
    s.transport = McpTransport::Http;
    s.url = Some("http://admin:hunter22@127.0.0.1:9/mcp".into());
    s.headers = [("Authorization".to_owned(), "REMOTE_AUTH".to_owned())].into();
    let host = McpHost::start(&settings(vec![s]), &|name| {
        (name == "REMOTE_AUTH").then(|| "Bearer very-secret-value".to_owned())
    });
    eventually("the server fails", || {
        host.status(&tenant("acme"))[0].last_error.is_some()
    })
    .await;
    let shown = host.status(&tenant("acme"))[0].last_error.clone().unwrap();
    assert!(
        !shown.contains("hunter22") && !shown.contains("127.0.0.1:9"),
        "{shown}"
    );
    assert!(!shown.contains("very-secret-value"), "{shown}");
}
