//! The tickets server: look-ups, listing, and updates that apply once per
//! idempotency key — directly and over MCP with the key in `_meta`.

#![allow(clippy::unwrap_used)]

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request, RequestMetaObject, ServerResult};
use rmcp::service::PeerRequestOptions;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

#[test]
fn an_update_is_applied_once_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mcp_tickets::open(&dir.path().join("t.db")).unwrap();
    let first = mcp_tickets::update(
        &mut c,
        "default",
        Some("turn-1:0"),
        1,
        Some("pending"),
        Some("asked for photos"),
    )
    .unwrap();
    assert_eq!(first["replayed"], false);
    assert_eq!(first["ticket"]["status"], "pending");
    // The same key again (a resumed turn): same answer, nothing applied twice.
    let again = mcp_tickets::update(
        &mut c,
        "default",
        Some("turn-1:0"),
        1,
        Some("pending"),
        Some("asked for photos"),
    )
    .unwrap();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["ticket"], first["ticket"]);
    assert_eq!(
        mcp_tickets::get(&c, "default", 1).unwrap()["notes"],
        json!(["asked for photos"])
    );
    // Another step is another change.
    mcp_tickets::update(
        &mut c,
        "default",
        Some("turn-1:1"),
        1,
        None,
        Some("photos received"),
    )
    .unwrap();
    assert_eq!(
        mcp_tickets::get(&c, "default", 1).unwrap()["notes"],
        json!(["asked for photos", "photos received"])
    );
    // Errors are for the model to read.
    assert!(
        mcp_tickets::update(&mut c, "default", Some("k"), 99, Some("open"), None)
            .unwrap_err()
            .contains("no ticket 99")
    );
    assert!(
        mcp_tickets::update(&mut c, "default", Some("k"), 1, Some("lost"), None)
            .unwrap_err()
            .contains("status must be")
    );
    let listed = mcp_tickets::list(&c, "default", None, Some("ana@example.com"), 10).unwrap();
    assert_eq!(listed["tickets"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn over_mcp_the_key_travels_in_meta() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db").display().to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-tickets"));
    cmd.args(["--db", &db]);
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let call = |key: &'static str| {
        let mut meta = RequestMetaObject::new();
        meta.insert("idempotency_key".into(), json!(key));
        meta.insert("tenant_id".into(), json!("default"));
        let params = CallToolRequestParams::new("update_ticket").with_arguments(
            json!({"id": 2, "note": "reset link sent"})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let peer = client.peer().clone();
        async move {
            match peer
                .send_request_with_option(
                    ClientRequest::CallToolRequest(Request::new(params)),
                    PeerRequestOptions::no_options().with_meta(meta),
                )
                .await
                .unwrap()
                .await_response()
                .await
                .unwrap()
            {
                ServerResult::CallToolResult(r) => r.content[0].as_text().unwrap().text.clone(),
                other => panic!("{other:?}"),
            }
        }
    };
    let a: serde_json::Value = serde_json::from_str(&call("t9:3").await).unwrap();
    let b: serde_json::Value = serde_json::from_str(&call("t9:3").await).unwrap();
    assert_eq!(
        (a["replayed"].clone(), b["replayed"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(b["ticket"]["notes"], json!(["reset link sent"]));
    client.cancel().await.unwrap();
}

#[test]
fn tenants_never_see_each_others_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mcp_tickets::open(&dir.path().join("t.db")).unwrap();
    let theirs = mcp_tickets::create(&c, "beta", "eve@beta.example", "Secret plans").unwrap();
    let id = theirs["id"].as_i64().unwrap();
    // Tenant `acme` can neither read, list nor update beta's ticket.
    assert!(
        mcp_tickets::get(&c, "acme", id)
            .unwrap_err()
            .contains("no ticket")
    );
    let listed = mcp_tickets::list(&c, "acme", None, None, 100).unwrap();
    assert_eq!(listed["tickets"], json!([]));
    assert!(
        mcp_tickets::update(
            &mut c,
            "acme",
            Some("k1"),
            id,
            Some("closed"),
            Some("mine now")
        )
        .unwrap_err()
        .contains("no ticket")
    );
    let after = mcp_tickets::get(&c, "beta", id).unwrap();
    assert_eq!(after["status"], "open");
    assert_eq!(after["notes"], json!([]));
    // The sample tickets are `default`'s, and beta sees only its own.
    let beta = mcp_tickets::list(&c, "beta", None, None, 100).unwrap();
    assert_eq!(beta["tickets"].as_array().unwrap().len(), 1);
    // The same idempotency key in two tenants is two different calls.
    mcp_tickets::update(&mut c, "beta", Some("turn:1"), id, None, Some("b")).unwrap();
    let other = mcp_tickets::update(&mut c, "default", Some("turn:1"), 1, None, Some("d")).unwrap();
    assert_eq!(other["replayed"], false);
}

#[tokio::test]
async fn a_call_without_a_tenant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db").display().to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-tickets"));
    cmd.args(["--db", &db]);
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let r = client
        .peer()
        .call_tool(
            CallToolRequestParams::new("get_ticket")
                .with_arguments(json!({"id": 1}).as_object().cloned().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        r.content[0].as_text().unwrap().text.contains("tenant_id"),
        "{r:?}"
    );
    client.cancel().await.unwrap();
}

#[test]
fn an_update_shows_only_the_newest_notes_however_many_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mcp_tickets::open(&dir.path().join("t.db")).unwrap();
    let mut last = json!(null);
    for i in 0..25 {
        let key = format!("turn-{i}:0");
        let note = format!("note {i}");
        last = mcp_tickets::update(&mut c, "default", Some(&key), 2, None, Some(&note)).unwrap();
    }
    let shown = last["ticket"]["notes"].as_array().unwrap();
    assert_eq!(shown.len(), mcp_tickets::UPDATE_NOTES_SHOWN);
    assert_eq!(shown.last().unwrap(), "note 24");
    assert_eq!(
        shown[0],
        format!("note {}", 25 - mcp_tickets::UPDATE_NOTES_SHOWN)
    );
    assert_eq!(last["ticket"]["notes_total"], 25);
    // Reading the ticket still shows every note.
    let all = mcp_tickets::get(&c, "default", 2).unwrap();
    assert_eq!(all["notes"].as_array().unwrap().len(), 25);
}
