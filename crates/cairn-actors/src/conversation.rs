//! `ConversationActor`: one per live conversation. It owns the conversation's
//! queue of accepted messages and runs their turns one at a time, in order.
//!
//! The turn itself runs in a separate task that reports back with
//! [`ConversationMsg::TurnEnded`], so the mailbox keeps taking messages (new
//! requests are queued) while a model or tool call is in flight. A panic in the
//! turn task is re-raised as a failure of this actor, so the supervisor sees it,
//! respawns the actor, and the new actor resumes the turn from its checkpoint.

use crate::settings::AgentDeps;
use crate::supervisor::{ConvKey, SupervisorMsg};
use crate::turn::run_turn;
use cairn_core::ports::{Enqueued, StoreError};
use cairn_core::{TurnCheckpoint, TurnId, TurnRequest};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::task::AbortHandle;

/// Why a request could not be handed to its conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    /// True when retrying cannot help (e.g. the conversation does not exist).
    pub permanent: bool,
    /// What went wrong.
    pub reason: String,
}

impl From<StoreError> for DeliveryError {
    fn from(e: StoreError) -> Self {
        DeliveryError {
            permanent: matches!(e, StoreError::NotFound | StoreError::Corrupt(_)),
            reason: e.to_string(),
        }
    }
}

/// Messages of a conversation actor.
pub enum ConversationMsg {
    /// Persist a request in the conversation's queue (deduplicated on its message
    /// id), answer, then run it when its turn comes.
    Enqueue(TurnRequest, RpcReplyPort<Result<Enqueued, DeliveryError>>),
    /// The running turn's task ended.
    TurnEnded {
        /// The turn that ended.
        turn_id: TurnId,
        /// How it ended.
        end: TurnEnd,
    },
    /// Try to start the next turn again (after a store failure).
    Retry,
}

/// How a turn task ended.
#[derive(Debug)]
pub enum TurnEnd {
    /// Answered or failed; either way recorded.
    Done,
    /// The store failed; the turn stays queued and is retried.
    Store(StoreError),
    /// The task panicked.
    Panicked(String),
}

/// Arguments of a conversation actor.
pub struct ConversationArgs {
    /// Which conversation.
    pub key: ConvKey,
    /// Shared dependencies.
    pub deps: AgentDeps,
    /// The supervisor, told when the actor runs out of work.
    pub supervisor: ActorRef<SupervisorMsg>,
}

/// The actor (stateless; its state lives in [`ConversationState`]).
pub struct ConversationActor;

/// State of a live conversation.
pub struct ConversationState {
    key: ConvKey,
    deps: AgentDeps,
    supervisor: ActorRef<SupervisorMsg>,
    /// Requests waiting, oldest first; the head is the running one.
    queue: VecDeque<TurnRequest>,
    /// The checkpoint found at start-up, for the turn it belongs to.
    checkpoint: Option<TurnCheckpoint>,
    running: Option<(TurnId, AbortHandle)>,
    /// Enqueue messages handled, reported to the supervisor for passivation.
    handled: u64,
}

/// Delay before retrying after a store failure.
const STORE_RETRY: Duration = Duration::from_millis(500);

impl Actor for ConversationActor {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConversationArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tenant, id) = (&args.key.0, &args.key.1);
        let mut queue: VecDeque<TurnRequest> =
            args.deps.memory.pending_turns(tenant, id).await?.into();
        let checkpoint = args.deps.memory.load_checkpoint(tenant, id).await?;
        if let Some(cp) = &checkpoint {
            // The checkpointed turn runs first, even if its queue entry is missing.
            match queue.iter().position(|r| r.turn_id == cp.request.turn_id) {
                Some(0) => {}
                Some(i) => {
                    if let Some(r) = queue.remove(i) {
                        queue.push_front(r);
                    }
                }
                None => queue.push_front(cp.request.clone()),
            }
        }
        Ok(ConversationState {
            key: args.key,
            deps: args.deps,
            supervisor: args.supervisor,
            queue,
            checkpoint,
            running: None,
            handled: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        start_next(&myself, state);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, task)) = state.running.take() {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConversationMsg::Enqueue(request, reply) => {
                state.handled += 1;
                let result = state.deps.memory.enqueue_turn(&request).await;
                let answer = match result {
                    Ok(Enqueued::New) => {
                        state.queue.push_back(request);
                        Ok(Enqueued::New)
                    }
                    Ok(Enqueued::Duplicate) => Ok(Enqueued::Duplicate),
                    Err(e) => Err(DeliveryError::from(e)),
                };
                let _ = reply.send(answer);
                start_next(&myself, state);
                report_if_idle(state);
            }
            ConversationMsg::TurnEnded { turn_id, end } => {
                if state.running.as_ref().map(|(t, _)| t) != Some(&turn_id) {
                    return Ok(());
                }
                state.running = None;
                match end {
                    TurnEnd::Done => {
                        if state.queue.front().map(|r| &r.turn_id) == Some(&turn_id) {
                            state.queue.pop_front();
                        }
                        start_next(&myself, state);
                        report_if_idle(state);
                    }
                    TurnEnd::Store(StoreError::NotFound) => {
                        // The conversation was deleted under the turn.
                        tracing::info!(conversation = %state.key.1, "conversation deleted; dropping its queue");
                        state.queue.clear();
                        report_if_idle(state);
                    }
                    TurnEnd::Store(e) => {
                        tracing::warn!(conversation = %state.key.1, error = %e, "turn interrupted by a store failure; retrying");
                        myself.send_after(STORE_RETRY, || ConversationMsg::Retry);
                    }
                    TurnEnd::Panicked(msg) => {
                        return Err(format!("turn {turn_id} panicked: {msg}").into());
                    }
                }
            }
            ConversationMsg::Retry => {
                if state.running.is_none() && state.checkpoint.is_none() {
                    // Reload: the failed turn may have left a checkpoint.
                    let (t, id) = (&state.key.0, &state.key.1);
                    match state.deps.memory.load_checkpoint(t, id).await {
                        Ok(cp) => state.checkpoint = cp,
                        Err(e) => {
                            tracing::warn!(conversation = %id, error = %e, "store still unavailable");
                            myself.send_after(STORE_RETRY, || ConversationMsg::Retry);
                            return Ok(());
                        }
                    }
                }
                start_next(&myself, state);
            }
        }
        Ok(())
    }
}

/// Starts the head of the queue if nothing runs.
fn start_next(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
    if state.running.is_some() {
        return;
    }
    let Some(request) = state.queue.front().cloned() else {
        return;
    };
    let checkpoint = match state.checkpoint.take() {
        Some(cp) if cp.request.turn_id == request.turn_id => Some(cp),
        _ => None,
    };
    let turn_id = request.turn_id.clone();
    let deps = state.deps.clone();
    let task = tokio::spawn(async move { run_turn(&deps, request, checkpoint).await });
    state.running = Some((turn_id.clone(), task.abort_handle()));
    let me = myself.clone();
    tokio::spawn(async move {
        let end = match task.await {
            Ok(Ok(())) => TurnEnd::Done,
            Ok(Err(e)) => TurnEnd::Store(e),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                TurnEnd::Panicked(msg)
            }
            Err(_) => return, // aborted: the actor is stopping
        };
        let _ = me.send_message(ConversationMsg::TurnEnded { turn_id, end });
    });
}

fn report_if_idle(state: &ConversationState) {
    if state.running.is_none() && state.queue.is_empty() {
        let _ = state.supervisor.send_message(SupervisorMsg::Drained {
            key: state.key.clone(),
            handled: state.handled,
        });
    }
}
