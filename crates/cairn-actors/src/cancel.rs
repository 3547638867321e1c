//! Cancelling a running turn.
//!
//! A cancel is requested through the store (`CancelRequests::request_cancel`,
//! then a `turn.cancel_requested` event on the conversation's stream), so it
//! reaches the turn on whichever replica runs it, and a turn resumed after a
//! crash still sees it. [`CancelWatch`] is the turn's side: it checks the
//! request once as the turn starts, then follows the conversation's events and
//! fires a [`CancellationToken`] when the request arrives. The turn selects on
//! the token around its model and tool calls, and [`finish_cancelled`] closes
//! every open tool call with a synthetic result before recording
//! `turn.cancelled`, all in the turn's own writes.

use crate::settings::AgentDeps;
use cairn_core::ports::{CancelMode, CancelRequests, EventStream, MemoryStore, StoreError};
use cairn_core::*;
use futures::StreamExt;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The observation recorded for a tool call the cancel cut short.
pub const CANCELLED_OBSERVATION: &str =
    "Cancelled: the turn was stopped before this call returned a result.";

/// How long a tool is given, once cancelled, to stop by itself (an MCP call
/// sends `notifications/cancelled` and returns) before the turn stops waiting.
pub const TOOL_CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Pause before following the events again after the stream failed.
const RESUBSCRIBE: Duration = Duration::from_millis(500);

/// Asks `turn` to stop: records the request (a turn starting or resuming reads
/// it), then appends the `turn.cancel_requested` event a running turn follows.
/// Returns the event's id.
pub async fn request_cancel(
    memory: &dyn MemoryStore,
    events: &dyn EventStream,
    tenant: &TenantId,
    conversation: &ConversationId,
    turn: &TurnId,
    mode: CancelMode,
    by: &str,
) -> Result<u64, StoreError> {
    memory
        .request_cancel(tenant, conversation, turn, mode)
        .await?;
    let event = TurnEvent::TurnCancelRequested {
        turn_id: turn.clone(),
        by: by.to_owned(),
        mode: mode.as_str().into(),
    };
    let at = events.append(tenant, conversation, &event).await?;
    tracing::info!(conversation = %conversation, turn = %turn, mode = mode.as_str(), "turn cancel requested");
    Ok(at)
}

/// A message sent with `if_busy` = interrupt / rollback was queued: every turn
/// queued or running before it is asked to stop. Read from the store, which
/// holds the conversation's queue in order, so nothing accepted before the
/// message escapes, whichever replica accepted it.
pub async fn interrupt_before(deps: &AgentDeps, request: &TurnRequest) -> Result<(), StoreError> {
    let Some(mode) = request.interrupts.as_deref().and_then(CancelMode::parse) else {
        return Ok(());
    };
    let (t, c) = (&request.tenant_id, &request.conversation_id);
    let pending = deps.memory.pending_turns(t, c).await?;
    for ahead in pending.iter().take_while(|r| r.turn_id != request.turn_id) {
        if deps
            .memory
            .cancel_requested(t, c, &ahead.turn_id)
            .await?
            .is_none()
        {
            let (m, e) = (deps.memory.as_ref(), deps.events.as_ref());
            let by = request.user_id.as_str();
            request_cancel(m, e, t, c, &ahead.turn_id, mode, by).await?;
        }
    }
    Ok(())
}

/// Watches for a cancel of one turn; stops watching when dropped.
pub struct CancelWatch {
    token: CancellationToken,
    cause: Arc<Mutex<Option<(CancelMode, String)>>>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl CancelWatch {
    /// Starts watching `request`'s turn: a cancel requested before now is seen
    /// at once, a later one when its event is stored.
    pub async fn start(deps: &AgentDeps, request: &TurnRequest) -> Result<Self, StoreError> {
        let (t, c, turn) = (
            &request.tenant_id,
            &request.conversation_id,
            &request.turn_id,
        );
        // The position first, then the marker: a request recorded after the
        // marker was read has its event after this position.
        let after = deps.events.last_event_id(t, c).await?;
        let mut watch = CancelWatch {
            token: CancellationToken::new(),
            cause: Arc::new(Mutex::new(None)),
            task: None,
        };
        if let Some(mode) = deps.memory.cancel_requested(t, c, turn).await? {
            watch.fire(mode, None);
            return Ok(watch);
        }
        let task = tokio::spawn(follow(
            deps.clone(),
            request.clone(),
            after,
            watch.token.clone(),
            watch.cause.clone(),
        ));
        watch.task = Some(task.abort_handle());
        Ok(watch)
    }

    fn fire(&self, mode: CancelMode, by: Option<&str>) {
        set_cause(&self.cause, mode, by);
        self.token.cancel();
    }

    /// The token tool calls and the model call select on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// True once a cancel arrived.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The mode and readable reason of the cancel, once it arrived.
    pub fn cause(&self) -> (CancelMode, String) {
        self.cause
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or((CancelMode::Cancel, "the turn was cancelled".into()))
    }
}

fn set_cause(cause: &Mutex<Option<(CancelMode, String)>>, mode: CancelMode, by: Option<&str>) {
    let reason = match (mode, by) {
        (CancelMode::Cancel, Some(by)) => format!("the turn was cancelled by {by}"),
        (CancelMode::Cancel, None) => "the turn was cancelled".to_owned(),
        (CancelMode::Interrupt, _) => "a newer message interrupted the turn".to_owned(),
        (CancelMode::Rollback, _) => {
            "a newer message interrupted the turn and rolled it back".to_owned()
        }
    };
    if let Ok(mut c) = cause.lock()
        && c.is_none()
    {
        *c = Some((mode, reason));
    }
}

/// Follows the conversation's events until this turn's cancel request shows up.
async fn follow(
    deps: AgentDeps,
    request: TurnRequest,
    mut after: u64,
    token: CancellationToken,
    cause: Arc<Mutex<Option<(CancelMode, String)>>>,
) {
    let (t, c, turn) = (
        request.tenant_id.clone(),
        request.conversation_id.clone(),
        request.turn_id.clone(),
    );
    loop {
        let mut events = deps.events.subscribe(t.clone(), c.clone(), after);
        while let Some(item) = events.next().await {
            let Ok(stored) = item else { break };
            after = stored.id;
            if let TurnEvent::TurnCancelRequested {
                turn_id, by, mode, ..
            } = &stored.event
                && turn_id == &turn
            {
                let mode = CancelMode::parse(mode).unwrap_or(CancelMode::Cancel);
                set_cause(&cause, mode, Some(by));
                token.cancel();
                return;
            }
        }
        // The stream failed: the marker may have been written meanwhile.
        tokio::time::sleep(RESUBSCRIBE).await;
        if let Ok(Some(mode)) = deps.memory.cancel_requested(&t, &c, &turn).await {
            set_cause(&cause, mode, None);
            token.cancel();
            return;
        }
    }
}

/// Ends a cancelled turn: every tool call without a result gets the synthetic
/// "cancelled" observation (and its `tool.completed` event), then the record
/// and `turn.cancelled` are written with the turn's end.
pub async fn finish_cancelled(
    deps: &AgentDeps,
    mut cp: TurnCheckpoint,
    watch: &CancelWatch,
) -> Result<(), StoreError> {
    let (mode, reason) = watch.cause();
    let turn = cp.request.turn_id.clone();
    let mut closed = Vec::new();
    for step in &mut cp.steps {
        if let Step::Tool {
            index,
            call,
            outcome: outcome @ None,
        } = step
        {
            *outcome = Some(ToolOutcome {
                is_error: true,
                content: CANCELLED_OBSERVATION.into(),
                duration_ms: 0,
            });
            closed.push(TurnEvent::ToolCompleted {
                turn_id: turn.clone(),
                step: *index,
                tool: call.name.clone(),
                is_error: true,
                output: CANCELLED_OBSERVATION.into(),
                duration_ms: 0,
            });
        }
    }
    if !closed.is_empty() {
        deps.memory.save_checkpoint(&cp, &closed).await?;
    }
    tracing::info!(turn = %turn, mode = mode.as_str(), closed_calls = closed.len(), "turn cancelled");
    crate::metered::turn_ended(&cp, "cancelled");
    deps.signals.emit(cairn_core::signals::Signal::TurnEnded {
        tenant: cp.request.tenant_id.to_string(),
        failed: false,
    });
    let mut record = Message::new(Role::Assistant, format!("The turn was stopped: {reason}."));
    record.turn_id = Some(turn.clone());
    record.steps = cp.steps.clone();
    record.usage = (cp.usage != Usage::default()).then_some(cp.usage);
    record.metadata = json!({ "turn_cancelled": { "mode": mode.as_str(), "reason": reason } });
    crate::approval::for_record(&cp, &mut record.metadata);
    crate::turn::publish_summary(deps, &cp, "cancelled").await;
    let error = json!({"code": "cancelled", "mode": mode.as_str(), "reason": reason});
    crate::webhook::publish(
        deps,
        &cp,
        "cancelled",
        &cp.request.message_id,
        None,
        Some(error),
    )
    .await;
    let event = TurnEvent::TurnCancelled {
        turn_id: turn.clone(),
        mode: mode.as_str().into(),
        reason,
    };
    deps.memory
        .finish_turn(
            &cp.request.tenant_id,
            &cp.request.conversation_id,
            &turn,
            Some(&record),
            &event,
            cp.fence,
        )
        .await
        .map(|_| ())
}

/// The mode of a transcript entry that records a cancelled turn.
pub fn cancelled_mode(m: &Message) -> Option<CancelMode> {
    m.metadata
        .get("turn_cancelled")
        .and_then(|c| c["mode"].as_str())
        .map(|s| CancelMode::parse(s).unwrap_or(CancelMode::Cancel))
}
