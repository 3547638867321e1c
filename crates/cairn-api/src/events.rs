//! Server-Sent Events. `GET /v1/conversations/{id}/events` streams the
//! conversation's events; every event's `id` is its position in the stream, so a
//! client that reconnects with `Last-Event-ID` (or `?after=`) gets every later
//! event exactly once, also across server restarts (events are stored).
//!
//! A stream counts against the caller's stream limits while it is open, and the
//! server closes it with an `error` event: code `token_expired` when the token
//! expires, `conversation_deleted` when the conversation is deleted, and
//! `server_restarting` (with an SSE `retry` of 1 s) when the server shuts down,
//! so clients reconnect with `Last-Event-ID` and miss nothing.

use crate::auth::Caller;
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{conversation_id, query_u64};
use crate::state::AppState;
use crate::streams::{StreamEnd, StreamPermit, stream_end};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use cairn_core::ports::StoreError;
use cairn_core::{ConversationMeta, StoredEvent};
use futures::{Stream, StreamExt};
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;

/// One stored event as an SSE event: `id`, `event` (the type) and JSON `data`
/// (the event's fields, its `type`, `turn_id`, and `at`, when it was written).
pub fn sse_event(e: &StoredEvent) -> Event {
    let mut data = serde_json::to_value(&e.event).unwrap_or_else(|_| json!({}));
    data["at"] = json!(e.at);
    let data = data.to_string();
    Event::default()
        .id(e.id.to_string())
        .event(e.event.kind())
        .data(data)
}

/// An SSE error event, sent when the store fails mid-stream; the client
/// reconnects with its last id.
pub fn sse_error(message: &str) -> Event {
    Event::default()
        .event("error")
        .data(json!({"code": "unavailable", "message": message}).to_string())
}

/// What keeps an SSE response honest: the permit that counts it against the
/// stream limits (released when the response ends), and the future that ends
/// it early (token expiry, deletion of the conversation).
pub struct StreamGuard {
    /// Counted against `server.max_streams_per_user` / `server.max_streams`.
    pub permit: StreamPermit,
    /// Resolves when the stream must close.
    pub end: std::pin::Pin<Box<dyn Future<Output = StreamEnd> + Send>>,
}

impl StreamGuard {
    /// Takes a permit for `caller` (or 429) and watches `meta` and the token.
    pub fn open(state: &AppState, caller: &Caller, meta: &ConversationMeta) -> ApiResult<Self> {
        Ok(Self {
            permit: state.streams.acquire(caller)?,
            end: Box::pin(stream_end(state, caller, meta)),
        })
    }
}

/// How long an EventSource waits before reconnecting when the server shuts down.
const RECONNECT_AFTER_RESTART: std::time::Duration = std::time::Duration::from_secs(1);

/// Stored events as an SSE response with keep-alives. The stream ends after a
/// store error (sent as an `error` event carrying `on_error`), when `guard` ends
/// it (an `error` event with code `token_expired`, `conversation_deleted` or
/// `server_restarting`), and, with `until_terminal`, right
/// after the first terminal event — checked before pulling again, so the
/// response closes without waiting for another event.
pub fn sse_response<S>(
    state: &AppState,
    events: S,
    until_terminal: bool,
    on_error: &'static str,
    guard: StreamGuard,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<S>>
where
    S: Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static,
{
    let StreamGuard { permit, end } = guard;
    let stream = futures::stream::unfold(
        (Box::pin(events), end, permit, false),
        move |(mut inner, mut end, permit, done)| async move {
            if done {
                return None;
            }
            let next = tokio::select! {
                next = inner.next() => next,
                why = &mut end => {
                    let mut ev = Event::default().event("error").data(
                        json!({"code": why.code(), "message": why.message()}).to_string(),
                    );
                    if why == StreamEnd::ServerRestarting {
                        // EventSource reconnects after `retry`, with Last-Event-ID.
                        ev = ev.retry(RECONNECT_AFTER_RESTART);
                    }
                    return Some((Ok(ev), (inner, end, permit, true)));
                }
            };
            let (ev, done) = match next? {
                Ok(e) => {
                    let terminal = until_terminal && e.event.is_terminal();
                    (sse_event(&e), terminal)
                }
                Err(e) => {
                    tracing::error!(error = %e, "event stream failed");
                    (sse_error(on_error), true)
                }
            };
            Some((Ok::<_, Infallible>(ev), (inner, end, permit, done)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(state.settings.sse_keepalive))
}

/// Reads a `Last-Event-ID` header: an event id of the stream (decimal,
/// surrounding spaces allowed), or a 400 `invalid_field` naming the header.
pub fn last_event_id(value: &[u8]) -> Result<u64, ApiError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidField,
                "`Last-Event-ID` must be an event id from this stream",
            )
            .with_details(json!({"field": "Last-Event-ID"}))
        })
}

/// `GET /v1/conversations/{id}/events`.
#[utoipa::path(get, path = "/conversations/{id}/events", tag = "streaming", summary = "Stream the conversation's events (Server-Sent Events)", params(("id" = String, Path, description = "Conversation id"), ("after" = Option<u64>, Query, description = "Replay events after this id"), ("Last-Event-ID" = Option<u64>, Header, description = "Replay events after this id")), responses((status = 200, description = "`text/event-stream`; resume with `Last-Event-ID` or `?after=`", body = serde_json::Value)))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = conversation_id(&id)?;
    let meta = load_owned(&state, &caller, &id, Access::Read).await?;
    let guard = StreamGuard::open(&state, &caller, &meta)?;
    let after = match headers.get("last-event-id") {
        Some(v) => last_event_id(v.as_bytes())?,
        None => query_u64(&q, "after")?.unwrap_or(0),
    };
    let events = state.events.subscribe(caller.tenant.clone(), id, after);
    Ok(sse_response(
        &state,
        events,
        false,
        "the event store is unavailable; reconnect with Last-Event-ID",
        guard,
    ))
}
