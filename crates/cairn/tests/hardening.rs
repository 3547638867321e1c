//! The hardening review's triggers, end to end through the real `cairn serve`
//! binary (one test per section of the review), plus the child-process parser
//! against a PDF that crashes pdf-extract.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap()
        .to_owned()
}

fn self_invoking_pdf() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../cairn-retrieval/tests/fixtures/self-invoking-xobject.pdf"),
    )
    .unwrap()
}

/// A `cairn serve` process on a free port with `config` (TOML) and `env`.
/// The answer (or failure) of one `/tool …` turn, with its tool output.
async fn tool_turn(c: &Client, text: &str) -> (String, bool) {
    let conv = c.new_conversation().await;
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/messages?wait=true"),
            json!({"content": text}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let step = r.body["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["type"] == "tool.completed"))
        .cloned()
        .unwrap_or_else(|| panic!("no tool step: {:?}", r.body));
    (
        step["output"].as_str().unwrap_or_default().to_owned(),
        step["is_error"].as_bool().unwrap_or(false),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_crashes_or_stalls_its_parser_fails_alone_and_stays_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Binary::start(dir.path(), "", &[]).await;
    let c = s.client("acme", "ana", &["admin", "ingest"]);
    // 200,000 nested divs: the recursive walk aborted the whole process.
    let deep = format!(
        "<html><body>{}x{}</body></html>",
        "<div>".repeat(200_000),
        "</div>".repeat(200_000)
    );
    let r = c
        .post(
            "/v1/documents",
            json!({"document_id": "deep", "text": deep, "format": "html"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // A PDF whose form XObject invokes itself: pdf-extract overflows its stack.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(self_invoking_pdf()).file_name("loop.pdf"),
    );
    let r = c
        .send(
            c.req(reqwest::Method::POST, "/v1/documents")
                .multipart(form),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let deep = finished(&c, "deep").await;
    assert_eq!(deep["job"]["status"], "failed");
    assert!(
        deep["job"]["error"].as_str().unwrap().contains("deeper"),
        "{deep:?}"
    );
    let pdf = finished(&c, "loop.pdf").await;
    assert_eq!(pdf["job"]["status"], "failed", "{pdf:?}");
    assert!(
        pdf["job"]["error"]
            .as_str()
            .unwrap()
            .contains("parser crashed"),
        "{pdf:?}"
    );
    assert!(s.alive().await, "the service outlived both documents");
    // The next document is ingested as usual.
    let r = c
        .post(
            "/v1/documents",
            json!({"document_id": "ok", "text": "# Returns\n\nSend it back within 30 days.", "format": "markdown"}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(finished(&c, "ok").await["job"]["status"], "done");
    // After a restart nothing is retried and nothing crashes.
    s.restart().await;
    let c = s.client("acme", "ana", &["admin", "ingest"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.alive().await);
    let pdf = c.get("/v1/documents/loop.pdf").await;
    assert_eq!(pdf.body["job"]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_home_and_tenants_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = bin_dir().join("mcp-fixture");
    let tickets = bin_dir().join("mcp-tickets");
    assert!(
        fixture.exists() && tickets.exists(),
        "build the workspace first"
    );
    let db = dir.path().join("tickets.db");
    let config = format!(
        "[[mcp.servers]]\nname = \"fx\"\ncommand = \"{}\"\nallowed_tenants = [\"acme\"]\n\n\
         [[mcp.servers]]\nname = \"tickets\"\ncommand = \"{}\"\nargs = [\"--db\", \"{}\"]\nallowed_tenants = [\"acme\", \"default\"]\n\n\
         [[mcp.servers]]\nname = \"closed\"\ncommand = \"{}\"\n",
        fixture.display(),
        tickets.display(),
        db.display(),
        fixture.display()
    );
    let s = Binary::start(
        dir.path(),
        &config,
        &[("MODEL_API_KEY", "sk-live-do-not-share")],
    )
    .await;
    // The data dir and its files are Cairn's alone.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.dir), 0o700);
    assert_eq!(mode(&s.dir.join("memory.redb")), 0o600);

    let acme = s.client("acme", "ana", &[]);
    for _ in 0..500 {
        let r = acme.get("/v1/tools").await;
        if r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["health"] == "healthy")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Tenants see only the servers opened to them; `closed` names no tenant.
    let names = |r: &Reply| -> Vec<String> {
        r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&acme.get("/v1/tools").await), ["fx", "tickets"]);
    assert!(names(&s.client("globex", "bo", &[]).get("/v1/tools").await).is_empty());

    // A stdio server sees PATH, HOME, LANG and its env table: no Cairn secret.
    let (env, is_error) = tool_turn(&acme, "/tool fx.env {}").await;
    assert!(!is_error, "{env}");
    assert!(env.contains("PATH"), "{env}");
    assert!(
        !env.contains("CAIRN_JWT_SECRET") && !env.contains("MODEL_API_KEY"),
        "{env}"
    );

    // Tickets are scoped by the caller's tenant, through the agent ...
    let (out, is_error) = tool_turn(&acme, r#"/tool tickets.get_ticket {"id": 1}"#).await;
    assert!(is_error && out.contains("no ticket 1"), "{out}");
    let (out, is_error) = tool_turn(
        &acme,
        r#"/tool tickets.update_ticket {"id": 1, "status": "closed"}"#,
    )
    .await;
    assert!(is_error && out.contains("no ticket 1"), "{out}");
    let owner = s.client("default", "dev", &[]);
    let (out, is_error) = tool_turn(&owner, r#"/tool tickets.get_ticket {"id": 1}"#).await;
    assert!(!is_error, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["status"],
        "open"
    );
    // ... and through `cairn tools call`.
    let call = |tenant: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "tools",
                "call",
                "tickets.get_ticket",
                r#"{"id": 1}"#,
                "--tenant",
                tenant,
                "--config",
            ])
            .arg(&s.config)
            .arg("--data-dir")
            .arg(dir.path().join("cli"))
            .env("CAIRN_JWT_SECRET", SECRET)
            .env("CAIRN_LOG", "warn")
            .output()
            .unwrap()
    };
    let theirs = call("acme");
    assert_eq!(
        theirs.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert!(String::from_utf8_lossy(&theirs.stderr).contains("no ticket 1"));
    let own = call("default");
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );

    // Identity providers' user ids work.
    let idp = s.client("acme", "auth0|abc123", &[]);
    let conv = idp.new_conversation().await;
    assert_eq!(
        idp.get(&format!("/v1/conversations/{conv}")).await.status,
        200
    );

    // admin reads the tenant's conversations, but neither posts into nor
    // deletes another user's; reloading the shared servers needs `operator`.
    let admin = s.client("acme", "boss", &["admin"]);
    assert_eq!(
        admin.get(&format!("/v1/conversations/{conv}")).await.status,
        200
    );
    assert_eq!(
        admin
            .get(&format!("/v1/conversations/{conv}/messages"))
            .await
            .status,
        200
    );
    let r = admin
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"content": "hi"}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(
        admin
            .delete(&format!("/v1/conversations/{conv}"))
            .await
            .status,
        404
    );
    assert_eq!(
        admin.post("/v1/admin/tools/reload", json!({})).await.status,
        403
    );
    let operator = s.client("acme", "ops", &["operator"]);
    assert_eq!(
        operator
            .post("/v1/admin/tools/reload", json!({}))
            .await
            .status,
        200
    );
}

/// An MCP `initialize` over raw HTTP (as a load balancer forwards it).
async fn mcp_initialize(base: &str, host: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .header("host", host)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "lb-test", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_endpoint_works_behind_a_dns_name_and_speaks_to_the_python_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let s = Binary::start(dir.path(), "", &[]).await;
    let token = s.token("acme", "ana", &[]);
    let r = mcp_initialize(&s.base, "cairn.example.com", &token).await;
    assert_eq!(r.status(), 200);
    let session = r
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.text().await.unwrap();
    assert!(body.contains(r#""name":"cairn""#), "{body}");
    assert!(body.contains(env!("CARGO_PKG_VERSION")), "{body}");
    // Session termination answers 200, as MCP clients expect.
    if let Some(id) = session {
        let r = reqwest::Client::new()
            .delete(format!("{}/mcp", s.base))
            .header("host", "cairn.example.com")
            .header("authorization", format!("Bearer {token}"))
            .header("mcp-session-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // With server.allowed_hosts set, other names are refused.
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = Binary::start(
        dir2.path(),
        "[server]\nallowed_hosts = [\"cairn.example.com\"]\n",
        &[],
    )
    .await;
    let t2 = s2.token("acme", "ana", &[]);
    assert_eq!(
        mcp_initialize(&s2.base, "cairn.example.com", &t2)
            .await
            .status(),
        200
    );
    assert_eq!(
        mcp_initialize(&s2.base, "evil.example.net", &t2)
            .await
            .status(),
        403
    );

    // The official Python SDK (installed by scripts/test.sh) lists the tools,
    // calls one, sees the server's name and ends its session cleanly.
    let python = std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
        "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs the `mcp` Python SDK",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("{}/mcp", s.base))
        .arg(&token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("server cairn"), "{stdout}");
    assert!(
        stdout.contains("tools ask,decide_approval,search_knowledge"),
        "{stdout}"
    );
    assert!(stdout.contains("ask ok"), "{stdout}");
    assert!(!stderr.contains("Session termination failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_input_cannot_hold_unbounded_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Binary::start(
        dir.path(),
        "[server]\nmax_streams_per_user = 2\n\n[agent]\nmax_conversations_per_user = 3\n",
        &[],
    )
    .await;
    let c = s.client("acme", "ana", &[]);
    let conv = c.new_conversation().await;
    // Open streams per user are bounded: the third gets 429.
    let open = || {
        c.req(
            reqwest::Method::GET,
            &format!("/v1/conversations/{conv}/events"),
        )
        .header("accept", "text/event-stream")
        .send()
    };
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open().await.unwrap();
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let r = open().await.unwrap();
        if r.status() == 200 {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed stream frees its place");
    // Another user is not affected.
    let bo = s.client("acme", "bo", &[]);
    let bo_conv = bo.new_conversation().await;
    let r = bo
        .get(&format!("/v1/conversations/{bo_conv}/messages"))
        .await;
    assert_eq!(r.status, 200);
    drop((second, again));

    // The transcript refuses sequence numbers past 2^63 − 1.
    let r = c
        .get(&format!(
            "/v1/conversations/{conv}/messages?from=18446744073709551615"
        ))
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let r = c
        .get(&format!(
            "/v1/conversations/{conv}/messages?from=9223372036854775807"
        ))
        .await;
    assert_eq!((r.status, &r.body["items"]), (200, &json!([])));

    // Conversations per user.
    c.new_conversation().await;
    c.new_conversation().await;
    let r = c.post("/v1/conversations", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (429, Some("too_many_conversations"))
    );

    // MCP `ask` has the REST limits: 40,000 characters are refused.
    let token = s.token("acme", "bo", &[]);
    let client = mcp_client(&s.base, &token).await;
    let r = client
        .peer()
        .call_tool(
            rmcp::model::CallToolRequestParams::new("ask").with_arguments(
                json!({"question": "x".repeat(40_000), "conversation_id": bo_conv})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let text = r.content[0].as_text().unwrap().text.clone();
    assert!(text.contains("longer than 32000"), "{text}");
    client.cancel().await.unwrap();
}

async fn mcp_client(
    base: &str,
    token: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt;
    let config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("{base}/mcp"),
        )
        .auth_header(token.to_owned());
    let transport =
        rmcp::transport::StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    ().serve(transport).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_parser_survives_what_crashes_pdf_extract() {
    use cairn_retrieval::formats::{ParseError, ParseLimits};
    use cairn_retrieval::isolation::{ChildParser, DocumentParser};
    let parser = DocumentParser::Child(ChildParser {
        program: env!("CARGO_BIN_EXE_cairn").into(),
        args: vec!["parse-document".into()],
        limits: ParseLimits::default(),
        timeout: Duration::from_secs(30),
        memory_bytes: 1 << 30,
    });
    let e = parser
        .parse("pdf", self_invoking_pdf(), "loop")
        .await
        .unwrap_err();
    assert!(matches!(e, ParseError::Crashed(_)), "{e:?}");
    // A good document comes back whole through the same pipe.
    let doc = parser
        .parse("md", b"# Title\n\nBody text.".to_vec(), "t")
        .await
        .unwrap();
    assert_eq!(doc.title, "Title");
    assert!(doc.text.contains("Body text."));
    // Refusals keep their kind.
    assert_eq!(
        parser.parse("txt", b"  ".to_vec(), "t").await.unwrap_err(),
        ParseError::Empty
    );
    // A document that outlives the timeout is killed.
    let slow = DocumentParser::Child(ChildParser {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "sleep 30".into()],
        limits: ParseLimits::default(),
        timeout: Duration::from_secs(1),
        memory_bytes: 1 << 30,
    });
    let started = std::time::Instant::now();
    assert_eq!(
        slow.parse("md", b"x".to_vec(), "t").await.unwrap_err(),
        ParseError::TimedOut(1)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_behind_cairn_ignores_proxies_and_embedded_internal_addresses() {
    // A page, and a "proxy" that would answer in its place if it were used.
    let page = axum::Router::new().route(
        "/page",
        axum::routing::get(|| async {
            axum::response::Html("<html><head><title>Returns</title></head><body><p>Within 30 days.</p></body></html>")
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, page).await.unwrap() });
    let proxy = axum::Router::new().fallback(|| async { "FROM THE PROXY" });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, proxy).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let fetch = bin_dir().join("mcp-http-fetch");
    assert!(fetch.exists(), "build the workspace first");
    let config = format!(
        "[[mcp.servers]]\nname = \"web\"\ncommand = \"{}\"\nargs = [\"--allow-ip\", \"127.0.0.1\"]\n\
         env = {{ HTTP_PROXY = \"http://127.0.0.1:{proxy_port}\", http_proxy = \"http://127.0.0.1:{proxy_port}\" }}\n\
         allowed_tenants = [\"acme\"]\n",
        fetch.display()
    );
    let s = Binary::start(dir.path(), &config, &[]).await;
    let c = s.client("acme", "ana", &[]);
    for _ in 0..500 {
        if c.get("/v1/tools").await.body["servers"][0]["health"] == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (out, is_error) = tool_turn(
        &c,
        &format!(r#"/tool web.fetch {{"url": "http://127.0.0.1:{site}/page"}}"#),
    )
    .await;
    assert!(!is_error && out.contains("Within 30 days."), "{out}");
    assert!(!out.contains("FROM THE PROXY"), "{out}");
    // Loopback behind the NAT64 prefix is still loopback.
    let (out, is_error) = tool_turn(
        &c,
        &format!(r#"/tool web.fetch {{"url": "http://[64:ff9b::7f00:1]:{site}/page"}}"#),
    )
    .await;
    assert!(is_error && out.contains("refused"), "{out}");
}
