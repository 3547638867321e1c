//! The `tickets` MCP server: the support desk's tickets in a local SQLite file,
//! so that agents can look a customer's ticket up, list tickets and update them.
//!
//! `update_ticket` has a side effect, so it honours the idempotency key Cairn
//! puts in every call's `_meta` (`idempotency_key` = `turn_id:step`): the first
//! call with a key applies the change and stores its result under the key, in the
//! same transaction; a repeated call with the same key (a resumed turn) returns
//! the stored result and changes nothing.
//!
//! Every ticket belongs to a tenant. Each call must carry the caller's tenant in
//! `_meta.tenant_id` (Cairn sends it with every call, beside `user_id`), and
//! every read and write is scoped by it: another tenant's ticket behaves
//! exactly like a ticket that does not exist. Idempotency keys are per tenant.
//! A call without a tenant is refused. Sample tickets of a new store belong to
//! the tenant `default`.
//!
//! This store is separate from Cairn's own tickets (`/v1/tickets`): its calls
//! carry the tenant and user but no credential, so reading Cairn's tickets would
//! mean handing this process Cairn's token-signing secret, and an agent tool
//! calling back into Cairn's API is the wrong shape. It stays the example of a
//! tool author's own system of record.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Statuses a ticket can have.
pub const STATUSES: [&str; 4] = ["open", "pending", "solved", "closed"];

/// Opens (creating when missing) the store at `path`; a new store gets a few
/// sample tickets so that the server is useful at once.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let fresh = !path.exists();
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS tickets (
            id INTEGER PRIMARY KEY, customer TEXT NOT NULL, subject TEXT NOT NULL,
            status TEXT NOT NULL, notes TEXT NOT NULL DEFAULT '[]', updated_at TEXT NOT NULL,
            tenant TEXT NOT NULL DEFAULT 'default');
         CREATE TABLE IF NOT EXISTS applied_calls (
            key TEXT PRIMARY KEY, result TEXT NOT NULL, at TEXT NOT NULL);",
    )?;
    // Stores written before tickets had tenants: their tickets go to `default`.
    let has_tenant: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('tickets') WHERE name = 'tenant'")?
        .exists([])?;
    if !has_tenant {
        c.execute_batch("ALTER TABLE tickets ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';")?;
    }
    c.execute_batch("CREATE INDEX IF NOT EXISTS tickets_by_tenant ON tickets (tenant, id);")?;
    if fresh {
        c.execute_batch(
            "INSERT INTO tickets (customer, subject, status, updated_at, tenant) VALUES
             ('ana@example.com', 'Refund for a damaged vase', 'open', datetime('now'), 'default'),
             ('bo@example.com', 'Cannot reset my password', 'pending', datetime('now'), 'default'),
             ('ana@example.com', 'Change delivery address', 'solved', datetime('now'), 'default');",
        )?;
    }
    Ok(c)
}

fn ticket_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let notes: String = row.get(4)?;
    Ok(json!({
        "id": row.get::<_, i64>(0)?,
        "customer": row.get::<_, String>(1)?,
        "subject": row.get::<_, String>(2)?,
        "status": row.get::<_, String>(3)?,
        "notes": serde_json::from_str::<Value>(&notes).unwrap_or(json!([])),
        "updated_at": row.get::<_, String>(5)?,
    }))
}

/// Notes shown in `update_ticket`'s result (the newest); `get_ticket` shows all.
pub const UPDATE_NOTES_SHOWN: usize = 10;

const COLUMNS: &str = "id, customer, subject, status, notes, updated_at";

/// Adds a ticket for `tenant`; returns it.
pub fn create(
    c: &Connection,
    tenant: &str,
    customer: &str,
    subject: &str,
) -> Result<Value, String> {
    c.execute(
        "INSERT INTO tickets (customer, subject, status, updated_at, tenant) VALUES (?1, ?2, 'open', datetime('now'), ?3)",
        params![customer, subject, tenant],
    )
    .map_err(|e| e.to_string())?;
    get(c, tenant, c.last_insert_rowid())
}

/// One ticket of `tenant`.
pub fn get(c: &Connection, tenant: &str, id: i64) -> Result<Value, String> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM tickets WHERE id = ?1 AND tenant = ?2"),
        params![id, tenant],
        ticket_json,
    )
    .optional()
    .map_err(|e| e.to_string())?
    .ok_or_else(|| format!("there is no ticket {id}"))
}

/// Tickets of `tenant`, newest first, optionally by status and customer.
pub fn list(
    c: &Connection,
    tenant: &str,
    status: Option<&str>,
    customer: Option<&str>,
    limit: u32,
) -> Result<Value, String> {
    let mut stmt = c
        .prepare(&format!(
            "SELECT {COLUMNS} FROM tickets WHERE tenant = ?4 AND (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR customer = ?2)
             ORDER BY id DESC LIMIT ?3"
        ))
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map(
            params![status, customer, limit.clamp(1, 100), tenant],
            ticket_json,
        )
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(json!({ "tickets": rows }))
}

/// Applies an update to a ticket of `tenant` once per `key`: a repeated key
/// (of the same tenant) returns the first result.
pub fn update(
    c: &mut Connection,
    tenant: &str,
    key: Option<&str>,
    id: i64,
    status: Option<&str>,
    note: Option<&str>,
) -> Result<Value, String> {
    if let Some(s) = status
        && !STATUSES.contains(&s)
    {
        return Err(format!("status must be one of {}", STATUSES.join(", ")));
    }
    if status.is_none() && note.is_none() {
        return Err("give a status, a note, or both".into());
    }
    let tx = c.transaction().map_err(|e| e.to_string())?;
    let key = key.map(|k| format!("{tenant}\u{0}{k}"));
    if let Some(k) = &key {
        let done: Option<String> = tx
            .query_row(
                "SELECT result FROM applied_calls WHERE key = ?1",
                [k],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        if let Some(result) = done {
            let mut v: Value = serde_json::from_str(&result).map_err(|e| e.to_string())?;
            v["replayed"] = json!(true);
            return Ok(v);
        }
    }
    let current = get(&tx, tenant, id)?;
    let mut notes = current["notes"].as_array().cloned().unwrap_or_default();
    if let Some(n) = note {
        notes.push(json!(n));
    }
    tx.execute(
        "UPDATE tickets SET status = COALESCE(?2, status), notes = ?3, updated_at = datetime('now') WHERE id = ?1 AND tenant = ?4",
        params![id, status, Value::Array(notes).to_string(), tenant],
    )
    .map_err(|e| e.to_string())?;
    let mut ticket = get(&tx, tenant, id)?;
    // Only the newest notes: the result (and the stored replay of it) stays the
    // same size however many notes a long-lived ticket gathers.
    if let Some(all) = ticket["notes"].as_array().cloned() {
        ticket["notes_total"] = json!(all.len());
        ticket["notes"] = json!(all[all.len().saturating_sub(UPDATE_NOTES_SHOWN)..]);
    }
    let result = json!({ "ticket": ticket, "replayed": false });
    if let Some(k) = &key {
        tx.execute(
            "INSERT INTO applied_calls (key, result, at) VALUES (?1, ?2, datetime('now'))",
            params![k, result.to_string()],
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(result)
}

/// Arguments of `get_ticket`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct GetArgs {
    /// The ticket number.
    pub id: i64,
}

/// Arguments of `list_tickets`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct ListArgs {
    /// Only tickets with this status (open, pending, solved, closed).
    #[serde(default)]
    pub status: Option<String>,
    /// Only this customer's tickets (their email).
    #[serde(default)]
    pub customer: Option<String>,
    /// At most this many (1–100, default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Arguments of `update_ticket`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct UpdateArgs {
    /// The ticket number.
    pub id: i64,
    /// The new status (open, pending, solved, closed).
    #[serde(default)]
    pub status: Option<String>,
    /// A note to add to the ticket.
    #[serde(default)]
    pub note: Option<String>,
}

/// The server.
#[derive(Clone)]
pub struct Tickets {
    db: PathBuf,
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

impl Tickets {
    /// A server over the store at `db` (created with sample tickets when missing).
    pub fn new(db: PathBuf) -> Self {
        Self {
            db,
            tool_router: Self::tool_router(),
        }
    }

    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = open(&db).map_err(|e| format!("the ticket store is unavailable: {e}"))?;
            f(&mut c)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the ticket store crashed: {e}")))
    }
}

/// The caller's tenant from a call's `_meta` (`tenant_id`, sent by Cairn).
fn tenant_of(meta: &RequestMetaObject) -> Result<String, String> {
    meta.get("tenant_id")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| "this server needs the caller's tenant in _meta.tenant_id".to_owned())
}

fn reply(r: Result<Value, String>) -> CallToolResult {
    match r {
        Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(e)]),
    }
}

#[tool_router]
impl Tickets {
    /// Looks a ticket up.
    #[tool(description = "Look up a support ticket by number.")]
    async fn get_ticket(
        &self,
        Parameters(a): Parameters<GetArgs>,
        meta: RequestMetaObject,
    ) -> CallToolResult {
        let tenant = match tenant_of(&meta) {
            Ok(t) => t,
            Err(e) => return reply(Err(e)),
        };
        reply(self.with_db(move |c| get(c, &tenant, a.id)).await)
    }

    /// Lists tickets.
    #[tool(
        description = "List support tickets, newest first, optionally by status or customer email."
    )]
    async fn list_tickets(
        &self,
        Parameters(a): Parameters<ListArgs>,
        meta: RequestMetaObject,
    ) -> CallToolResult {
        let tenant = match tenant_of(&meta) {
            Ok(t) => t,
            Err(e) => return reply(Err(e)),
        };
        reply(
            self.with_db(move |c| {
                list(
                    c,
                    &tenant,
                    a.status.as_deref(),
                    a.customer.as_deref(),
                    a.limit.unwrap_or(20),
                )
            })
            .await,
        )
    }

    /// Updates a ticket once per idempotency key.
    #[tool(
        description = "Change a ticket's status and/or add a note; answers with the ticket, its newest 10 notes and notes_total. Safe to retry: a repeated call of the same agent step is applied once."
    )]
    async fn update_ticket(
        &self,
        Parameters(a): Parameters<UpdateArgs>,
        meta: RequestMetaObject,
    ) -> CallToolResult {
        let tenant = match tenant_of(&meta) {
            Ok(t) => t,
            Err(e) => return reply(Err(e)),
        };
        let key = meta
            .get("idempotency_key")
            .and_then(Value::as_str)
            .map(str::to_owned);
        reply(
            self.with_db(move |c| {
                update(
                    c,
                    &tenant,
                    key.as_deref(),
                    a.id,
                    a.status.as_deref(),
                    a.note.as_deref(),
                )
            })
            .await,
        )
    }
}

#[tool_handler]
impl ServerHandler for Tickets {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Support tickets: look up, list and update them.")
    }
}
