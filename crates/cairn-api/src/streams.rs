//! Bounds and lifetimes of long-lived responses: SSE streams, `?wait=true`
//! and MCP `ask` each hold a follower of an event stream.
//!
//! - [`StreamLimiter`] counts open followers per user and per process; past
//!   `server.max_streams_per_user` or `server.max_streams` a new one is refused
//!   with 429 `too_many_streams`. A [`StreamPermit`] is released when dropped,
//!   however the response ends.
//! - [`stream_end`] resolves when an open stream must be closed although the
//!   client is still reading: the token's `exp` passed, or the conversation was
//!   deleted (announced in this process at once, and found by a re-check every
//!   `server.stream_recheck` for deletions by other replicas — a conversation
//!   re-created under the same id is a different one and ends the stream too).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use cairn_core::{ConversationId, ConversationMeta, TenantId, UserId};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Open streams: the process total, and per (tenant, user).
#[derive(Debug, Default)]
struct OpenStreams {
    total: usize,
    per_user: HashMap<(TenantId, UserId), usize>,
}

/// Open-stream counts.
#[derive(Debug)]
pub struct StreamLimiter {
    per_user: usize,
    total: usize,
    open: Mutex<OpenStreams>,
}

/// One open stream; released on drop.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    key: (TenantId, UserId),
}

impl StreamLimiter {
    /// A limiter with these bounds.
    pub fn new(per_user: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_user,
            total,
            open: Mutex::new(OpenStreams::default()),
        })
    }

    /// Takes a permit for `caller`, or refuses with 429 `too_many_streams`.
    pub fn acquire(self: &Arc<Self>, caller: &Caller) -> Result<StreamPermit, ApiError> {
        let key = (caller.tenant.clone(), caller.user.clone());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.per_user.get(&key).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(ApiError::new(
                ErrorCode::TooManyStreams,
                format!("this user has {mine} open streams, the most allowed; close one first"),
            )
            .with_details(json!({"limit": self.per_user, "scope": "user"})));
        }
        if open.total >= self.total {
            return Err(ApiError::new(
                ErrorCode::TooManyStreams,
                "this server holds as many open streams as it allows; retry later",
            )
            .with_details(json!({"limit": self.total, "scope": "server"})));
        }
        open.total += 1;
        *open.per_user.entry(key.clone()).or_insert(0) += 1;
        Ok(StreamPermit {
            limiter: self.clone(),
            key,
        })
    }

    /// Streams open now (all users).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_user.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_user.remove(&self.key);
            }
        }
    }
}

/// Why a stream was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The token's `exp` passed; reconnect with a fresh token.
    TokenExpired,
    /// The conversation was deleted.
    ConversationDeleted,
    /// The server is shutting down (a deploy or a scale-in); reconnect, to
    /// another replica or to this one once it is back, resuming after the last
    /// event id.
    ServerRestarting,
}

impl StreamEnd {
    /// The stable code sent in the closing SSE event.
    pub fn code(self) -> &'static str {
        match self {
            Self::TokenExpired => "token_expired",
            Self::ConversationDeleted => "conversation_deleted",
            Self::ServerRestarting => "server_restarting",
        }
    }

    /// The message sent with the code.
    pub fn message(self) -> &'static str {
        match self {
            Self::TokenExpired => "the token expired; reconnect with a fresh token",
            Self::ConversationDeleted => "the conversation was deleted",
            Self::ServerRestarting => {
                "the server is restarting; reconnect and resume after the last event id"
            }
        }
    }
}

/// Resolves when a stream of `caller` on `meta` must close (see the module docs).
pub fn stream_end(
    state: &AppState,
    caller: &Caller,
    meta: &ConversationMeta,
) -> impl Future<Output = StreamEnd> + Send + 'static {
    let expires_in = caller.expires_at.map(|exp| {
        let left = exp.saturating_sub(chrono::Utc::now().timestamp());
        Duration::from_secs(u64::try_from(left).unwrap_or(0))
    });
    let mut deleted = state.deleted.subscribe();
    let memory = state.memory.clone();
    let recheck = state.settings.stream_recheck;
    let (tenant, id, created_at) = (meta.tenant_id.clone(), meta.id.clone(), meta.created_at);
    let closed = state.closed();
    async move {
        let expiry = async {
            match expires_in {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let deletion = async {
            let mut tick = tokio::time::interval(recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    announced = deleted.recv() => match announced {
                        Ok((t, c)) if t == tenant && c == id => return,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    },
                    _ = tick.tick() => {
                        // Another replica may have deleted (and someone re-created) it.
                        if let Ok(now) = memory.get_conversation(&tenant, &id).await
                            && now.is_none_or(|m| m.created_at != created_at)
                        {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = expiry => StreamEnd::TokenExpired,
            () = deletion => StreamEnd::ConversationDeleted,
            () = closed => StreamEnd::ServerRestarting,
        }
    }
}

/// Announces a deletion to this process's open streams.
pub fn announce_deleted(state: &AppState, tenant: &TenantId, id: &ConversationId) {
    let _ = state.deleted.send((tenant.clone(), id.clone()));
}
