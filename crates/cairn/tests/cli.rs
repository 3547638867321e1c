//! The `cairn` binary itself: `token`, `ask` in-process and against `--server`,
//! config errors that name the key, and exit codes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;

fn cairn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    // Keep the test hermetic: no CAIRN_* from the environment except what we set.
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            c.env_remove(k);
        }
    }
    c.env("CAIRN_LOG", "warn");
    c
}

#[test]
fn token_is_signed_with_the_generated_secret_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn()
        .args([
            "token",
            "--sub",
            "ana",
            "--tenant",
            "acme",
            "--ttl",
            "1h",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let secret = std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap();
    let auth = cairn_api::auth::Authenticator::new(secret.trim().as_bytes(), &Default::default());
    let caller = futures::executor::block_on(auth.verify(&token)).unwrap();
    assert_eq!(caller.tenant.as_str(), "acme");
    assert_eq!(caller.user.as_str(), "ana");
}

#[test]
fn ask_runs_in_process_with_memory_across_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let run = |q: &str| {
        cairn()
            .args(["ask", q, "--conversation", "cli-conv", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let first = run("My favourite colour is teal.");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = run("What is my favourite colour?");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let answer = String::from_utf8(second.stdout).unwrap();
    assert!(answer.contains("teal"), "{answer}");
    assert!(
        answer.contains("[conversation]"),
        "citations are printed: {answer}"
    );
}

#[test]
fn a_bad_config_names_the_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn()
        .args(["ask", "hi", "--data-dir"])
        .arg(dir.path())
        .env("CAIRN_AGENT__MAX_STEPS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.max_steps"));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[llm]\nprovider = \"openai\"\nmodel = \"m\"\napi_key_env = \"NO_SUCH_KEY_VAR\"\n",
    )
    .unwrap();
    let out = cairn()
        .args(["ask", "hi", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_KEY_VAR"));
}

#[test]
fn a_failed_turn_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    // With max_steps = 1 a tool call cannot be followed by an answer.
    let out = cairn()
        .args(["ask", "/tool current_time", "--data-dir"])
        .arg(dir.path())
        .env("CAIRN_AGENT__MAX_STEPS", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_steps_exceeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let token = s.token("acme", "ana");
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        cairn()
            .args([
                "ask",
                "/tool current_time",
                "--server",
                &base,
                "--token",
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Result of current_time"));
    s.stop().await;
}

/// `cairn ingest` works on several documents at once; the same folder given
/// twice (each document id twice) must still store every document once.
#[test]
fn the_same_folder_given_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let kb = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kb");
    let kb = kb.to_str().unwrap();
    let out = cairn()
        .args(["ingest", kb, kb, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("added 30, replaced 0, unchanged 30, failed 0"),
        "{stdout}"
    );
}

#[test]
fn ingest_the_sample_knowledge_base_and_get_an_answer_that_cites_it() {
    let dir = tempfile::tempdir().unwrap();
    let kb = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kb");
    let run = |args: &[&str]| {
        let out = cairn()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["ingest", kb.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("added 30, replaced 0, unchanged 0, failed 0"),
        "{out}"
    );
    // Ingesting again does nothing.
    let (_, out, _) = run(&["ingest", kb.to_str().unwrap()]);
    assert!(
        out.starts_with("added 0, replaced 0, unchanged 30, failed 0"),
        "{out}"
    );
    let (code, out, err) = run(&["search", "reset link expired"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("account.password-reset.md"),
        "{out}"
    );
    // The offline planner retrieves and answers with a citation of the article.
    let (code, out, err) = run(&["ask", "How long is the password reset link valid?"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("30 minutes"), "{out}");
    assert!(out.contains("[account.password-reset.md]"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let kb = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kb");
    let junk = tempfile::tempdir().unwrap();
    std::fs::write(junk.path().join("empty.md"), "  \n").unwrap();
    std::fs::write(junk.path().join("deck.pptx"), "PK").unwrap();
    let run = |token: String, paths: Vec<std::path::PathBuf>| {
        let base = s.base.clone();
        tokio::task::spawn_blocking(move || {
            let out = cairn()
                .args(["ingest", "--server", &base, "--token", &token])
                .args(paths)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let token = s.token_with_scopes("acme", "ops", &["ingest"]);
    let (code, out, err) = run(token.clone(), vec![kb.clone()]).await.unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("added 30, replaced 0, unchanged 0, failed 0"),
        "{out}"
    );
    let (code, out, _) = run(token.clone(), vec![kb.clone()]).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("added 0, replaced 0, unchanged 30, failed 0"),
        "{out}"
    );
    // The server's documents and search see them, under the same ids as the
    // embedded `cairn ingest` gives.
    let c = s.client(&token);
    let d = c.get("/v1/documents/account.password-reset.md").await;
    assert_eq!(d.body["job"]["status"], "done", "{:?}", d.body);
    assert_eq!(d.body["source"], "account/password-reset.md");
    let r = c.get("/v1/search?q=reset%20link%20expired&limit=1").await;
    assert_eq!(
        r.body["items"][0]["document_id"],
        "account.password-reset.md"
    );
    // Refused files are reported per file; the exit code says something failed.
    let (code, out, err) = run(token.clone(), vec![junk.path().to_owned()])
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.starts_with("added 0, replaced 0, unchanged 0, failed 2"),
        "{out}"
    );
    assert!(
        err.contains("deck.pptx") && err.contains("unsupported"),
        "{err}"
    );
    assert!(err.contains("empty.md") && err.contains("empty"), "{err}");
    // Without the ingest scope nothing is accepted.
    let (code, _, err) = run(s.token("acme", "ana"), vec![kb]).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("forbidden"), "{err}");
    s.stop().await;
}

#[test]
fn tools_list_and_call_the_configured_mcp_servers() {
    let dir = tempfile::tempdir().unwrap();
    let calculator = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap()
        .join("mcp-calculator");
    assert!(
        calculator.exists(),
        "{} is missing: build the workspace first",
        calculator.display()
    );
    let config = dir.path().join("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[[mcp.servers]]\nname = \"calculator\"\ncommand = \"{}\"\nallowed_tenants = [\"*\"]\n",
            calculator.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = cairn()
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["tools", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("calculator [healthy]"), "{out}");
    assert!(out.contains("calculator.evaluate"), "{out}");
    let (code, out, err) = run(&[
        "tools",
        "call",
        "calculator.evaluate",
        r#"{"expression": "6*7"}"#,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "42");
    let (code, _, err) = run(&[
        "tools",
        "call",
        "calculator.evaluate",
        r#"{"expression": "6*"}"#,
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot parse"), "{err}");
    let (code, _, err) = run(&["tools", "call", "calculator.evaluate", r#"{"expr": 1}"#]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid arguments"), "{err}");
    let (code, _, err) = run(&["tools", "call", "calculator.nope", "{}"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no tool `calculator.nope`"), "{err}");
}

/// `cairn serve --config F`: the admin reload and an edit of the file both
/// restart the MCP servers with the new `[mcp]` section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_servers_reload_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap();
    let calculator = bin_dir.join("mcp-calculator");
    let template = bin_dir.join("mcp-template");
    assert!(
        calculator.exists() && template.exists(),
        "build the workspace first"
    );
    let config = dir.path().join("cairn.toml");
    let write = |servers: &[(&str, &std::path::Path)]| {
        let mut s = String::new();
        for (name, bin) in servers {
            s.push_str(&format!(
                "[[mcp.servers]]\nname = \"{name}\"\ncommand = \"{}\"\nallowed_tenants = [\"*\"]\n\n",
                bin.display()
            ));
        }
        std::fs::write(&config, s).unwrap();
    };
    write(&[("calculator", &calculator)]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .env("CAIRN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let secret_file = dir.path().join("jwt-secret");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    // Wait (bounded) for the server and its generated secret.
    for _ in 0..500 {
        if secret_file.exists() && http.get(format!("{base}/live")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let auth = cairn_api::auth::Authenticator::new(secret.trim().as_bytes(), &Default::default());
    let token = auth
        .mint(
            &cairn_core::UserId::parse("root").unwrap(),
            &cairn_core::TenantId::parse("default").unwrap(),
            std::time::Duration::from_secs(600),
            &["operator".to_owned()],
        )
        .unwrap();
    let servers = |http: reqwest::Client, token: String, base: String| async move {
        let body: serde_json::Value = http
            .get(format!("{base}/v1/tools"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["health"] == "healthy")
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let wait_for = |want: Vec<&'static str>| {
        let (http, token, base) = (http.clone(), token.clone(), base.clone());
        async move {
            for _ in 0..500 {
                if servers(http.clone(), token.clone(), base.clone()).await == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("servers never became {want:?}");
        }
    };
    wait_for(vec!["calculator"]).await;
    // The admin reload picks up an edited file at once.
    write(&[("calculator", &calculator), ("template", &template)]);
    let r = http
        .post(format!("{base}/v1/admin/tools/reload"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(vec!["calculator", "template"]).await;
    // So does the watch on the file, without a call.
    write(&[("template", &template)]);
    wait_for(vec!["template"]).await;
    child.kill().await.unwrap();
}
