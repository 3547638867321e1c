//! `ConversationActor`: one per live conversation. It owns the conversation's
//! queue of accepted messages and runs their turns one at a time, in order.
//!
//! The turn itself runs in a separate task that reports back with
//! [`ConversationMsg::TurnEnded`], so the mailbox keeps taking messages (new
//! requests are queued) while a model or tool call is in flight. A panic in the
//! turn task is re-raised as a failure of this actor, so the supervisor sees it,
//! respawns the actor, and the new actor resumes the turn from its checkpoint.
//!
//! Turns run only under the conversation's writer lease (one writer per
//! conversation across replicas). The actor asks for the lease as it starts and
//! loads the queue and checkpoint from the store once it holds it (another replica
//! may have moved them on while it waited), renews it while it lives, and gives it up when it stops. Every
//! turn write carries the lease's fencing token; if the lease is lost, the actor
//! stops and the store rejects whatever its turn task still tries to write.
//!
//! While it lives, the actor also republishes its conversation's stored events on
//! the bus (`conversation_events`) when a relay is configured.

use crate::bridge::publish_until_durable;
use crate::settings::{AgentDeps, Relay};
use crate::supervisor::{ConvKey, SupervisorMsg};
use crate::turn::run_turn;
use cairn_core::envelope::{CONVERSATION_EVENT, Envelope};
use cairn_core::ports::{Enqueued, StoreError};
use cairn_core::{ConversationEvent, TurnCheckpoint, TurnId, TurnRequest};
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
// A request moves through once per turn; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
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
    /// The writer lease was granted with this fencing token.
    LeaseGranted(u64),
    /// Time to renew the lease.
    RenewLease,
}

/// How a turn task ended.
#[derive(Debug)]
pub enum TurnEnd {
    /// Answered or failed; either way recorded.
    Done,
    /// Waiting for an approval as the process drains: still queued and
    /// checkpointed for the next owner.
    Suspended,
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
    /// The lease's fencing token, once granted.
    lease: Option<u64>,
    /// The task waiting for the lease, while there is one.
    acquiring: Option<AbortHandle>,
    /// The task republishing events on the bus.
    relay: Option<AbortHandle>,
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
        // The queue and checkpoint are loaded once the lease is held (below).
        let relay = args.deps.relay.clone().map(|relay| {
            let (deps, key) = (args.deps.clone(), args.key.clone());
            tokio::spawn(async move { relay_events(deps, key, relay).await }).abort_handle()
        });
        Ok(ConversationState {
            key: args.key,
            deps: args.deps,
            supervisor: args.supervisor,
            queue: VecDeque::new(),
            checkpoint: None,
            running: None,
            handled: 0,
            lease: None,
            acquiring: None,
            relay,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        acquire(&myself, state);
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
        for task in [state.acquiring.take(), state.relay.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        if let Some(token) = state.lease.take() {
            let (t, id) = (&state.key.0, &state.key.1);
            let owner = &state.deps.settings.replica_id;
            if let Err(e) = state.deps.memory.release_lease(t, id, owner, token).await {
                tracing::warn!(conversation = %id, error = %e, "cannot release the lease; it will expire");
            }
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
                        // A redelivery after a crash repeats this; requests
                        // already made are not made again.
                        if let Err(e) = crate::cancel::interrupt_before(&state.deps, &request).await
                        {
                            tracing::warn!(conversation = %state.key.1, error = %e, "cannot interrupt the turns before the message; they run");
                        }
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
                    TurnEnd::Suspended => {
                        tracing::info!(conversation = %state.key.1, "turn waiting for an approval left for the next owner");
                    }
                    TurnEnd::Store(StoreError::Fenced) => {
                        tracing::warn!(conversation = %state.key.1, "another replica owns the conversation now; stopping");
                        state.lease = None;
                        myself.stop(Some("lease lost".into()));
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
            ConversationMsg::LeaseGranted(token) => {
                state.acquiring = None;
                // The store is the truth: a previous owner may have moved the
                // queue on while this actor waited.
                match load_queue(&state.deps, &state.key).await {
                    Ok((queue, checkpoint)) => {
                        state.queue = queue;
                        state.checkpoint = checkpoint;
                    }
                    Err(e) => {
                        tracing::warn!(conversation = %state.key.1, error = %e, "cannot reload the queue; retrying");
                        myself
                            .send_after(STORE_RETRY, move || ConversationMsg::LeaseGranted(token));
                        return Ok(());
                    }
                }
                state.lease = Some(token);
                let period = state.deps.settings.lease_ttl / 3;
                myself.send_interval(period, || ConversationMsg::RenewLease);
                start_next(&myself, state);
                report_if_idle(state);
            }
            ConversationMsg::RenewLease => {
                let Some(token) = state.lease else {
                    return Ok(());
                };
                let (t, id) = (&state.key.0, &state.key.1);
                let s = &state.deps.settings;
                match state
                    .deps
                    .memory
                    .renew_lease(t, id, &s.replica_id, token, s.lease_ttl)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(conversation = %id, "lease lost to another replica; stopping");
                        state.lease = None;
                        myself.stop(Some("lease lost".into()));
                    }
                    Err(e) => {
                        // The fence still protects the store if the lease lapses.
                        tracing::warn!(conversation = %id, error = %e, "cannot renew the lease");
                    }
                }
            }
        }
        Ok(())
    }
}

/// The conversation's queue and in-flight checkpoint as stored; the checkpointed
/// turn comes first, even if its queue entry is missing.
async fn load_queue(
    deps: &AgentDeps,
    key: &ConvKey,
) -> Result<(VecDeque<TurnRequest>, Option<TurnCheckpoint>), StoreError> {
    let (tenant, id) = (&key.0, &key.1);
    let mut queue: VecDeque<TurnRequest> = deps.memory.pending_turns(tenant, id).await?.into();
    let checkpoint = deps.memory.load_checkpoint(tenant, id).await?;
    if let Some(cp) = &checkpoint {
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
    Ok((queue, checkpoint))
}

/// Waits for the conversation's lease (another replica may hold it until it
/// expires or is released) and reports it to the actor.
async fn acquire_lease(deps: AgentDeps, key: ConvKey, me: ActorRef<ConversationMsg>) {
    let s = &deps.settings;
    let mut waited = false;
    loop {
        match deps
            .memory
            .acquire_lease(&key.0, &key.1, &s.replica_id, s.lease_ttl)
            .await
        {
            Ok(Some(token)) => {
                if waited {
                    tracing::info!(conversation = %key.1, token, "took over the conversation");
                }
                let _ = me.send_message(ConversationMsg::LeaseGranted(token));
                return;
            }
            Ok(None) => waited = true,
            Err(e) => tracing::warn!(conversation = %key.1, error = %e, "cannot take the lease"),
        }
        tokio::time::sleep(
            (s.lease_ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500)),
        )
        .await;
    }
}

/// How often the relay records how far it got (and when the stream goes idle).
const RELAY_FLUSH: Duration = Duration::from_millis(250);

/// Republishes the conversation's stored events on the relay topic (keyed by
/// conversation id), from where the last relay of this conversation stopped
/// (`MemoryStore::relayed_until`). At-least-once: events published after the
/// last recorded position are published again by the next relay.
async fn relay_events(deps: AgentDeps, key: ConvKey, relay: Relay) {
    use futures::StreamExt;
    let (t, id) = (key.0.clone(), key.1.clone());
    let after = loop {
        match deps.memory.relayed_until(&t, &id).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(conversation = %id, error = %e, "relay cannot read its position yet");
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    };
    let mut stream = deps.events.subscribe(t.clone(), id.clone(), after);
    let mut pending: Option<u64> = None;
    let mut flushed_at = std::time::Instant::now();
    let flush = |upto: Option<u64>| {
        let (deps, t, id) = (deps.clone(), t.clone(), id.clone());
        async move {
            if let Some(n) = upto
                && let Err(e) = deps.memory.set_relayed_until(&t, &id, n).await
            {
                tracing::warn!(conversation = %id, error = %e, "cannot record the relay position");
            }
        }
    };
    loop {
        let item = match tokio::time::timeout(RELAY_FLUSH, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                flush(pending.take()).await;
                continue;
            }
        };
        let stored = match item {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(conversation = %id, error = %e, "relay lost the stream");
                break;
            }
        };
        let n = stored.id;
        if matches!(stored.event, cairn_core::TurnEvent::InsightsUpdated { .. }) {
            // The InsightsActor publishes its own events.
            pending = Some(n);
            continue;
        }
        let data = ConversationEvent {
            conversation_id: id.clone(),
            id: stored.id,
            at: stored.at,
            event: stored.event,
        };
        let Ok(data) = serde_json::to_value(&data) else {
            continue;
        };
        let envelope = Envelope::new(CONVERSATION_EVENT, t.clone(), data);
        let bus = relay.bus.as_ref();
        publish_until_durable(bus, &relay.topic, id.as_str(), &envelope, &[]).await;
        pending = Some(n);
        if flushed_at.elapsed() >= RELAY_FLUSH {
            flush(pending.take()).await;
            flushed_at = std::time::Instant::now();
        }
    }
    flush(pending.take()).await;
}

/// Starts waiting for the lease, unless the actor holds it or already waits.
fn acquire(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
    if state.lease.is_none() && state.acquiring.is_none() {
        let (deps, key, me) = (state.deps.clone(), state.key.clone(), myself.clone());
        state.acquiring = Some(tokio::spawn(acquire_lease(deps, key, me)).abort_handle());
    }
}

/// Starts the head of the queue if nothing runs.
fn start_next(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
    if state.running.is_some() || state.queue.is_empty() || state.deps.lifecycle.draining() {
        // Draining: queued messages stay in the store for the next owner.
        return;
    }
    let Some(fence) = state.lease else {
        acquire(myself, state);
        return;
    };
    let Some(request) = state.queue.front().cloned() else {
        return;
    };
    let checkpoint = match state.checkpoint.take() {
        Some(cp) if cp.request.turn_id == request.turn_id => Some(cp),
        _ => None,
    };
    let turn_id = request.turn_id.clone();
    let deps = state.deps.clone();
    // The turn's span continues the trace of the request that caused it.
    let cx = crate::trace::turn_context(&request);
    // Log lines of the turn carry its trace id (JSON logs show span fields).
    let trace_id = request
        .traceparent
        .as_deref()
        .and_then(|t| t.split('-').nth(1))
        .unwrap_or_default()
        .to_owned();
    let log_span = tracing::info_span!("turn", trace_id = %trace_id);
    let counted = deps.lifecycle.turn_started();
    let task = tokio::spawn(async move {
        let _counted = counted;
        use opentelemetry::context::FutureExt as _;
        use tracing::Instrument as _;
        let r = run_turn(&deps, request, checkpoint, Some(fence))
            .with_context(cx.clone())
            .instrument(log_span)
            .await;
        crate::trace::end(&cx, r.as_ref().err().map(|_| "store_error"), Vec::new());
        r
    });
    state.running = Some((turn_id.clone(), task.abort_handle()));
    let me = myself.clone();
    tokio::spawn(async move {
        let end = match task.await {
            Ok(Ok(crate::turn::TurnExit::Ended)) => TurnEnd::Done,
            Ok(Ok(crate::turn::TurnExit::Suspended)) => TurnEnd::Suspended,
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
    if state.running.is_none() && state.queue.is_empty() && state.acquiring.is_none() {
        let _ = state.supervisor.send_message(SupervisorMsg::Drained {
            key: state.key.clone(),
            handled: state.handled,
        });
    }
}
