//! The sqlite server's guards against a real database file: reads work, writes of
//! every kind are refused (and the file is unchanged), a runaway query is stopped
//! at its time limit, results are capped with a note; and the binary over MCP.

#![allow(clippy::unwrap_used)]

use mcp_sqlite::{Settings, run_query};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::json;
use std::time::{Duration, Instant};

fn database() -> (tempfile::TempDir, Settings) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, total REAL);
         INSERT INTO orders (status, total) VALUES ('shipped', 19.5), ('pending', 7.25), ('refunded', 3.0);",
    )
    .unwrap();
    drop(c);
    let settings = Settings {
        db,
        max_rows: 2,
        timeout: Duration::from_millis(300),
    };
    (dir, settings)
}

#[test]
fn reads_work_and_results_are_capped() {
    let (_d, s) = database();
    let r = run_query(&s, "SELECT id, status FROM orders WHERE id = 2").unwrap();
    assert_eq!(
        r,
        json!({"columns": ["id", "status"], "rows": [[2, "pending"]]})
    );
    let r = run_query(&s, "SELECT id FROM orders ORDER BY id").unwrap();
    assert_eq!(r["rows"], json!([[1], [2]]));
    assert!(r["note"].as_str().unwrap().contains("first 2 rows"));
    // Informational PRAGMAs read the schema.
    let r = run_query(&s, "PRAGMA table_info(orders)").unwrap();
    assert_eq!(r["rows"][1][1], "status");
}

#[test]
fn writes_are_refused_and_nothing_changes() {
    let (_d, s) = database();
    for sql in [
        "INSERT INTO orders (status, total) VALUES ('x', 1)",
        "UPDATE orders SET status = 'x'",
        "DELETE FROM orders",
        "DROP TABLE orders",
        "CREATE TABLE t (x)",
        "PRAGMA user_version = 7",
        "ATTACH DATABASE ':memory:' AS other",
        "VACUUM",
    ] {
        let e = run_query(&s, sql).unwrap_err();
        assert!(
            e.contains("read-only") || e.contains("readonly") || e.contains("cannot prepare"),
            "{sql}: {e}"
        );
    }
    let r = run_query(&s, "SELECT count(*), group_concat(status) FROM orders").unwrap();
    assert_eq!(r["rows"], json!([[3, "shipped,pending,refunded"]]));
    assert!(
        run_query(&s, "SELEC 1")
            .unwrap_err()
            .contains("cannot prepare")
    );
    assert!(run_query(&s, "  ").unwrap_err().contains("empty"));
}

#[test]
fn a_runaway_query_is_stopped_at_its_time_limit() {
    let (_d, s) = database();
    let started = Instant::now();
    let e = run_query(
        &s,
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
    )
    .unwrap_err();
    assert!(e.contains("limit"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn over_mcp() {
    let (d, _) = database();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-sqlite"));
    cmd.args([
        "--db",
        &d.path().join("shop.db").display().to_string(),
        "--max-rows",
        "10",
    ]);
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["query", "tables"]);
    let text = |r: &rmcp::model::CallToolResult| -> String {
        r.content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect()
    };
    let args = |sql: &str| json!({"sql": sql}).as_object().cloned().unwrap();
    let ok = client
        .call_tool(
            CallToolRequestParams::new("query")
                .with_arguments(args("SELECT total FROM orders WHERE status = 'shipped'")),
        )
        .await
        .unwrap();
    assert_eq!(ok.is_error, Some(false));
    assert_eq!(text(&ok), r#"{"columns":["total"],"rows":[[19.5]]}"#);
    let refused = client
        .call_tool(CallToolRequestParams::new("query").with_arguments(args("DELETE FROM orders")))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(text(&refused).contains("read-only"), "{}", text(&refused));
    client.cancel().await.unwrap();
}
