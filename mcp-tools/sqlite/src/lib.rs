//! The `sqlite` MCP server: read-only SQL over one SQLite file.
//!
//! Guards, each enforced by SQLite itself rather than by inspecting SQL text:
//! the file is opened read-only (`SQLITE_OPEN_READ_ONLY`) with `query_only` on;
//! an authorizer lets statements read tables and call functions, nothing else
//! (no ATTACH, no transactions, only informational PRAGMAs);
//! a statement SQLite does not report as read-only (`sqlite3_stmt_readonly`) is
//! refused before it runs; one statement per call; a progress handler interrupts
//! a query past its time limit; at most `max_rows` rows are returned, with a note
//! when there were more. Tools: `query {sql}` and `tables {}`.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, types::ValueRef};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// PRAGMAs without an argument that only read.
const READ_PRAGMAS: [&str; 4] = [
    "table_list",
    "database_list",
    "user_version",
    "schema_version",
];

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The SQLite file.
    pub db: PathBuf,
    /// Most rows returned by one query.
    pub max_rows: usize,
    /// Longest a query may run.
    pub timeout: Duration,
}

/// Runs one read-only statement; `Err` is a message for the model.
pub fn run_query(settings: &Settings, sql: &str) -> Result<Value, String> {
    let mut conn = Connection::open_with_flags(
        &settings.db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open the database: {e}"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| format!("cannot set query_only: {e}"))?;
    // Only reading: anything else fails to prepare (ATTACH, DETACH, writes,
    // transactions, and PRAGMAs other than the informational ones).
    conn.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => Authorization::Allow,
        AuthAction::Pragma {
            pragma_name,
            pragma_value: None,
        } if READ_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) => {
            Authorization::Allow
        }
        AuthAction::Pragma { pragma_name, .. }
            if [
                "table_info",
                "table_xinfo",
                "index_list",
                "index_info",
                "foreign_key_list",
            ]
            .contains(&pragma_name.to_ascii_lowercase().as_str()) =>
        {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }))
    .map_err(|e| format!("cannot restrict the connection: {e}"))?;
    let started = Instant::now();
    let limit = settings.timeout;
    // Called every 1,000 virtual-machine steps; true interrupts the query.
    conn.progress_handler(1_000, Some(move || started.elapsed() > limit))
        .map_err(|e| format!("cannot set the time limit: {e}"))?;
    let sql = sql.trim();
    if sql.is_empty() {
        return Err("the SQL is empty".into());
    }
    const READ_ONLY: &str =
        "only read-only statements are allowed (SELECT, WITH … SELECT, informational PRAGMA)";
    let mut stmt = conn.prepare(sql).map_err(|e| {
        if e.to_string().contains("not authorized") {
            format!("{READ_ONLY}; this statement was refused")
        } else {
            format!("cannot prepare the SQL: {e}")
        }
    })?;
    if !stmt.readonly() {
        return Err(READ_ONLY.into());
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows = stmt
        .query([])
        .map_err(|e| format!("the query failed: {e}"))?;
    let mut out: Vec<Value> = Vec::new();
    let mut truncated = false;
    loop {
        let row = match rows.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if started.elapsed() > limit => {
                return Err(format!(
                    "the query ran past the {} ms limit and was stopped ({e})",
                    limit.as_millis()
                ));
            }
            Err(e) => return Err(format!("the query failed: {e}")),
        };
        if out.len() == settings.max_rows {
            truncated = true;
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(match row.get_ref(i).map_err(|e| e.to_string())? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => json!(n),
                ValueRef::Real(f) => json!(f),
                ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                ValueRef::Blob(b) => json!(format!("<{} bytes>", b.len())),
            });
        }
        out.push(Value::Array(values));
    }
    let mut result = json!({ "columns": columns, "rows": out });
    if truncated {
        result["note"] = json!(format!(
            "only the first {} rows are shown; add a LIMIT or narrow the query",
            settings.max_rows
        ));
    }
    Ok(result)
}

/// Arguments of `query`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct QueryArgs {
    /// One read-only SQL statement, e.g. `SELECT id, status FROM orders WHERE id = 7`.
    pub sql: String,
}

/// Arguments of `tables` (none).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct NoArgs {}

/// The server.
#[derive(Clone)]
pub struct Sqlite {
    settings: std::sync::Arc<Settings>,
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

impl Sqlite {
    /// A server over `settings.db`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: std::sync::Arc::new(settings),
            tool_router: Self::tool_router(),
        }
    }
}

fn result(r: Result<Value, String>) -> CallToolResult {
    match r {
        Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(e)]),
    }
}

#[tool_router]
impl Sqlite {
    /// Runs one read-only statement.
    #[tool(
        description = "Run one read-only SQL statement (SELECT) on the database and return {columns, rows}. Writes are refused; results are capped."
    )]
    async fn query(&self, Parameters(a): Parameters<QueryArgs>) -> CallToolResult {
        let settings = self.settings.clone();
        result(
            tokio::task::spawn_blocking(move || run_query(&settings, &a.sql))
                .await
                .unwrap_or_else(|e| Err(format!("the query crashed: {e}"))),
        )
    }

    /// Lists the tables and their SQL.
    #[tool(description = "List the database's tables with their CREATE statements.")]
    async fn tables(&self, Parameters(_): Parameters<NoArgs>) -> CallToolResult {
        let settings = self.settings.clone();
        result(
            tokio::task::spawn_blocking(move || {
                run_query(
                    &settings,
                    "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
            })
            .await
            .unwrap_or_else(|e| Err(format!("the query crashed: {e}"))),
        )
    }
}

#[tool_handler]
impl ServerHandler for Sqlite {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Read-only SQL over one SQLite database. Use `tables` to see the schema.",
        )
    }
}
