//! WebSocket streaming for browsers and other clients.
//!
//! `GET /v1/conversations/{id}/ws` (upgrade) carries the same events as the SSE
//! stream and takes messages in the other direction:
//!
//! - **server → client** (text frames, JSON): `{"type":"event","id",
//!   "event","data"}` per stored event (the SSE fields), `{"type":"accepted",
//!   "message_id","turn_id","ref"}` for a posted message, `{"type":"error",
//!   "code","message","ref"}` (error codes of the API contract; `token_expired`
//!   and `conversation_deleted` close the socket).
//! - **client → server**: `{"type":"message","content","idempotency_key"?,
//!   "ref"?}` posts a message (the same checks and rate limits as `POST
//!   …/messages`); `{"type":"cancel","turn_id","ref"?}` asks to cancel a turn —
//!   answered with `{"type":"cancelling","turn_id"}` (the turn then ends with
//!   `turn.cancelled`), or an error frame `turn_not_running`.
//! - **resume**: `?since=<event id>` replays every later event exactly once.
//! - **authentication**: `Authorization: Bearer` (non-browser clients); for
//!   browsers, which cannot set headers on a WebSocket, a subprotocol
//!   `cairn.bearer.<JWT>` in `Sec-WebSocket-Protocol` (the server answers
//!   `cairn.v1` when offered), or `?ticket=` with a single-use ticket from `POST
//!   /v1/ws-ticket` (valid [`TICKET_TTL`], stored hashed in the record store so
//!   any replica accepts it).
//! - **keep-alive and backpressure**: a ping every `server.sse_keepalive`; a
//!   client that answers nothing for three intervals is dropped. Events are read
//!   from the store only as fast as the socket takes them, and a send that
//!   stalls longer than [`SEND_TIMEOUT`] closes the socket (code 1013; resume
//!   with `since`) — a slow client is never buffered without bound.
//! - **limits**: each socket counts as an open stream of its user
//!   (`server.max_streams_per_user`, `server.max_streams`).
//!
//! `GET /ws/conversations/{id}/stream` is the seed path of the platforms Cairn
//! replaces: the same socket, authenticated the same way, whose frames are
//! `{"type":"connected","conversation_id","timestamp"}` first, then
//! `{"type":"intelligence_update","conversation_id","data"}` for every
//! `insights.updated` event and `{"type":<event type>,"id","data"}` for the rest.

use crate::auth::Caller;
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::conversation_id;
use crate::state::AppState;
use crate::streams::stream_end;
use axum::Json;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use cairn_core::gateway_config::RequestClass;
use cairn_core::ports::RecordChange;
use cairn_core::{ConversationId, StoredEvent, TurnEvent};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::HashMap;
use std::time::Duration;

/// How long a ticket from `POST /v1/ws-ticket` is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Longest a frame may take to go out before the client counts as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The subprotocol prefix carrying a bearer token.
pub const BEARER_PROTOCOL: &str = "cairn.bearer.";
/// The subprotocol the server selects.
pub const PROTOCOL: &str = "cairn.v1";
/// The record collection of tickets.
const TICKETS: &str = "ws_tickets";
/// Largest frame a client may send.
const MAX_FRAME: usize = 64 * 1024;
/// Most bytes waiting to go out on one socket; past it a send fails and the
/// slow client is closed.
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// Which framing a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// `/v1/conversations/{id}/ws`.
    Native,
    /// `/ws/conversations/{id}/stream`.
    Seed,
}

fn ticket_key(expires_ms: i64, secret: &str) -> String {
    let digest = sha2::Sha256::digest(secret.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{expires_ms:015}-{hex}")
}

/// `POST /v1/ws-ticket`: a single-use ticket for `?ticket=` on a WebSocket.
#[utoipa::path(post, path = "/ws-ticket", tag = "streaming", summary = "Get a single-use WebSocket ticket (30 s)", responses((status = 200, description = "`ticket`, `expires_at`", body = serde_json::Value)))]
pub async fn ticket(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    use base64::Engine;
    let expires = chrono::Utc::now() + TICKET_TTL;
    let mut raw = [0u8; 24];
    rand::Rng::fill(&mut rand::rng(), &mut raw[..]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let ms = expires.timestamp_millis();
    let value = json!({
        "tenant": caller.tenant.as_str(),
        "user": caller.user.as_str(),
        "scopes": caller.scopes,
        "token_expires_at": caller.expires_at,
    });
    state
        .records
        .write_records(vec![RecordChange::put(
            TICKETS,
            ticket_key(ms, &secret),
            value.to_string(),
        )])
        .await
        .map_err(|e| ApiError::unavailable("the ticket store", &e))?;
    Ok(Json(json!({
        "ticket": format!("{ms}.{secret}"),
        "expires_at": expires,
    })))
}

/// Redeems a ticket once.
async fn redeem(state: &AppState, ticket: &str) -> ApiResult<Caller> {
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidToken,
            "the ticket is unknown, used or expired",
        )
    };
    let (ms, secret) = ticket.split_once('.').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    if ms < chrono::Utc::now().timestamp_millis() || secret.len() > 64 {
        return Err(bad());
    }
    let key = ticket_key(ms, secret);
    let records = &state.records;
    let value = records
        .get_record(TICKETS, &key)
        .await
        .map_err(|e| ApiError::unavailable("the ticket store", &e))?
        .ok_or_else(bad)?;
    records
        .write_records(vec![RecordChange::delete(TICKETS, key)])
        .await
        .map_err(|e| ApiError::unavailable("the ticket store", &e))?;
    let v: Value = serde_json::from_str(&value).map_err(|_| bad())?;
    let tenant =
        cairn_core::TenantId::parse(v["tenant"].as_str().unwrap_or_default()).map_err(|_| bad())?;
    let user =
        cairn_core::UserId::parse(v["user"].as_str().unwrap_or_default()).map_err(|_| bad())?;
    Ok(Caller {
        tenant,
        user,
        scopes: v["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        expires_at: v["token_expires_at"].as_i64(),
    })
}

/// Deletes expired tickets (keys sort by expiry); returns how many.
pub async fn sweep_tickets(state: &AppState) -> usize {
    let now = format!("{:015}", chrono::Utc::now().timestamp_millis());
    let records = &state.records;
    let Ok(page) = records.scan_records(TICKETS, "", None, 1000).await else {
        return 0;
    };
    let expired: Vec<RecordChange> = page
        .into_iter()
        .take_while(|(k, _)| k.as_str() < now.as_str())
        .map(|(k, _)| RecordChange::delete(TICKETS, k))
        .collect();
    let n = expired.len();
    if n > 0 && records.write_records(expired).await.is_err() {
        return 0;
    }
    n
}

/// Who opens the socket: the `Authorization` header, a `cairn.bearer.`
/// subprotocol, or a ticket.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> ApiResult<Caller> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return state.auth.caller(headers).await;
    }
    let offered = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(token) = offered
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
    {
        return state.auth.verify(token).await;
    }
    if let Some(t) = q.get("ticket") {
        return redeem(state, t).await;
    }
    Err(ApiError::new(
        ErrorCode::MissingToken,
        "authenticate with `Authorization: Bearer`, a `cairn.bearer.<token>` subprotocol or `?ticket=`",
    ))
}

/// `GET /v1/conversations/{id}/ws`.
#[utoipa::path(get, path = "/conversations/{id}/ws", tag = "streaming", summary = "Open a WebSocket on the conversation (events out, messages in)", params(("id" = String, Path, description = "Conversation id"), ("since" = Option<u64>, Query, description = "Replay events after this id"), ("ticket" = Option<String>, Query, description = "A ticket from POST /v1/ws-ticket (browsers)")), responses((status = 101, description = "Switching protocols; see the `ws` module docs for the frames")))]
pub async fn native(
    state: State<AppState>,
    path: Path<String>,
    q: Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    open(state, path, q, headers, upgrade, Flavor::Native).await
}

/// `GET /ws/conversations/{id}/stream` (the seed path).
#[utoipa::path(get, path = "/ws/conversations/{id}/stream", tag = "streaming", summary = "WebSocket on the seed path (`connected`, `intelligence_update` frames)", params(("id" = String, Path, description = "Conversation id"), ("ticket" = Option<String>, Query)), responses((status = 101, description = "Switching protocols")))]
pub async fn seed(
    state: State<AppState>,
    path: Path<String>,
    q: Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    open(state, path, q, headers, upgrade, Flavor::Seed).await
}

async fn open(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    flavor: Flavor,
) -> Response {
    match prepare(&state, &id, &q, &headers, upgrade, flavor).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn prepare(
    state: &AppState,
    id: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    flavor: Flavor,
) -> ApiResult<Response> {
    let caller = authenticate(state, headers, q).await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidField,
            format!("this route takes a WebSocket upgrade: {e}"),
        )
    })?;
    let id = conversation_id(id)?;
    let meta = load_owned(state, &caller, &id, Access::Read).await?;
    let since = match q.get("since") {
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::invalid_field("since", "`since` must be an event id from this stream")
        })?,
        None => 0,
    };
    let permit = state.streams.acquire(&caller)?;
    let end = stream_end(state, &caller, &meta);
    let offered_protocol = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == PROTOCOL));
    // Small buffers: an idle socket should cost kilobytes, not the 128 KiB
    // read buffer tungstenite starts with (10,000 sockets per process).
    let mut upgrade = upgrade
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER);
    if offered_protocol {
        upgrade = upgrade.protocols([PROTOCOL]);
    }
    let state = state.clone();
    Ok(upgrade.on_upgrade(move |socket| async move {
        metrics::gauge!("cairn_websockets_open").increment(1.0);
        run(state, socket, caller, id, since, flavor, Box::pin(end)).await;
        metrics::gauge!("cairn_websockets_open").decrement(1.0);
        drop(permit);
    }))
}

/// A frame for a stored event.
fn frame(flavor: Flavor, conv: &ConversationId, e: &StoredEvent) -> Value {
    let mut data = serde_json::to_value(&e.event).unwrap_or_else(|_| json!({}));
    data["at"] = json!(e.at);
    match (flavor, &e.event) {
        (Flavor::Native, _) => {
            json!({"type": "event", "id": e.id, "event": e.event.kind(), "data": data})
        }
        (Flavor::Seed, TurnEvent::InsightsUpdated { .. }) => json!({
            "type": "intelligence_update", "conversation_id": conv.as_str(), "id": e.id, "data": data,
        }),
        (Flavor::Seed, _) => json!({"type": e.event.kind(), "id": e.id, "data": data}),
    }
}

fn error_frame(e: &ApiError, reference: &Value) -> Value {
    json!({"type": "error", "code": e.code.as_str(), "message": e.message, "details": e.details, "ref": reference})
}

async fn send(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    v: &Value,
) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(v.to_string().into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn close(sink: &mut futures::stream::SplitSink<WebSocket, Message>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_owned()),
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: AppState,
    socket: WebSocket,
    caller: Caller,
    id: ConversationId,
    since: u64,
    flavor: Flavor,
    mut end: std::pin::Pin<Box<dyn Future<Output = crate::streams::StreamEnd> + Send>>,
) {
    let (mut sink, mut incoming) = socket.split();
    if flavor == Flavor::Seed {
        let hello = json!({"type": "connected", "conversation_id": id.as_str(), "timestamp": chrono::Utc::now()});
        if send(&mut sink, &hello).await.is_err() {
            return;
        }
    }
    let mut events = Box::pin(
        state
            .events
            .subscribe(caller.tenant.clone(), id.clone(), since),
    );
    let interval = state.settings.sse_keepalive.max(Duration::from_secs(1));
    let mut ping = tokio::time::interval(interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            why = &mut end => {
                let e = json!({"type": "error", "code": why.code(), "message": why.message()});
                let _ = send(&mut sink, &e).await;
                // 1012 (service restart) tells clients to reconnect; 1008 not to.
                let code = if why == crate::streams::StreamEnd::ServerRestarting { 1012 } else { 1008 };
                close(&mut sink, code, why.code()).await;
                return;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > interval * 3 {
                    close(&mut sink, 1001, "no pong").await;
                    return;
                }
                if tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    return;
                }
            }
            next = events.next() => match next {
                Some(Ok(e)) => {
                    if send(&mut sink, &frame(flavor, &id, &e)).await.is_err() {
                        // Too slow (or gone): the client resumes with `since`.
                        metrics::counter!("cairn_websocket_slow_closed_total").increment(1);
                        close(&mut sink, 1013, "too slow; reconnect with since").await;
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "event stream failed under a WebSocket");
                    let e = json!({"type": "error", "code": "unavailable", "message": "the event store is unavailable; reconnect with since"});
                    let _ = send(&mut sink, &e).await;
                    close(&mut sink, 1011, "event store unavailable").await;
                    return;
                }
                None => return,
            },
            msg = incoming.next() => {
                last_heard = tokio::time::Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let reply = handle(&state, &caller, &id, text.as_str()).await;
                        if send(&mut sink, &reply).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let e = ApiError::new(ErrorCode::InvalidField, "frames are JSON text");
                        if send(&mut sink, &error_frame(&e, &Value::Null)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

/// Handles one client frame; returns the reply frame.
async fn handle(state: &AppState, caller: &Caller, id: &ConversationId, text: &str) -> Value {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let e = ApiError::new(
                ErrorCode::MalformedJson,
                format!("the frame is not JSON: {e}"),
            );
            return error_frame(&e, &Value::Null);
        }
    };
    let reference = v.get("ref").cloned().unwrap_or(Value::Null);
    let result: ApiResult<Value> = async {
        match v["type"].as_str() {
            Some("message") => {
                let content = v["content"]
                    .as_str()
                    .ok_or_else(|| ApiError::invalid_field("content", "`content` must be a string"))?
                    .to_owned();
                crate::limits::check(state, caller, RequestClass::Messages)
                    .await
                    .map_err(|(refused, _)| refused)?;
                load_owned(state, caller, id, Access::Write).await?;
                crate::messages::admit(state, caller, id, &content, "content").await?;
                let key = v["idempotency_key"].as_str();
                if let Some(k) = key {
                    crate::messages::check_idempotency_key(k, "idempotency_key")?;
                }
                let (request, _) = crate::messages::accept(state, caller, id, content, key).await?;
                Ok(json!({"type": "accepted", "message_id": request.message_id, "turn_id": request.turn_id}))
            }
            Some("cancel") => {
                let turn = v["turn_id"]
                    .as_str()
                    .and_then(|t| cairn_core::TurnId::parse(t).ok())
                    .ok_or_else(|| ApiError::invalid_field("turn_id", "`turn_id` must be a turn id"))?;
                load_owned(state, caller, id, Access::Write).await?;
                let mode = cairn_core::ports::CancelMode::Cancel;
                crate::control::cancel_turn(state, caller, id, &turn, mode).await?;
                Ok(json!({"type": "cancelling", "turn_id": turn}))
            }
            _ => Err(ApiError::invalid_field(
                "type",
                "frames are {\"type\":\"message\",\"content\":…} or {\"type\":\"cancel\",\"turn_id\":…}",
            )),
        }
    }
    .await;
    match result {
        Ok(mut ok) => {
            ok["ref"] = reference;
            ok
        }
        Err(e) => error_frame(&e, &reference),
    }
}
