//! `ConversationSupervisor`: finds the actor of a conversation through its
//! registry, spawns it on demand, passivates it when idle, and respawns it (with
//! backoff) when it fails. Every request for a conversation passes through here,
//! which is what keeps one actor per conversation and the requests in order.

use crate::conversation::{ConversationActor, ConversationArgs, ConversationMsg, DeliveryError};
use crate::settings::AgentDeps;
use cairn_core::ports::{Assignment, Enqueued, partition_for};
use cairn_core::{ConversationId, TenantId, TurnRequest};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A conversation's identity: the tenant scopes everything.
pub type ConvKey = (TenantId, ConversationId);

/// Messages of the supervisor.
// A request moves through once per turn; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum SupervisorMsg {
    /// Hand a request to its conversation's actor (spawning it if needed).
    Deliver(TurnRequest, RpcReplyPort<Result<Enqueued, DeliveryError>>),
    /// Make sure the conversation's actor runs (it resumes any unfinished work).
    Touch(ConvKey),
    /// A child ran out of work after handling `handled` deliveries.
    Drained {
        /// The child.
        key: ConvKey,
        /// Deliveries it has handled.
        handled: u64,
    },
    /// Stop children idle for longer than the passivation time.
    PassivateIdle,
    /// Spawn a child again after a failure.
    Respawn(ConvKey),
    /// How many conversation actors are live.
    LiveCount(RpcReplyPort<usize>),
    /// This replica now owns these `reasoning_tasks` partitions: resume the
    /// unfinished conversations they hold (a previous owner may have died mid-turn).
    Adopt(Assignment),
    /// Resume every conversation with unfinished work (retry of the start-up resume).
    ResumeAll,
    /// These partitions moved to another replica: stop their conversations'
    /// actors (turns stay checkpointed; leases are released for the next owner).
    Release(Assignment),
}

struct Child {
    actor: ActorRef<ConversationMsg>,
    /// Deliveries routed to it; passivation waits until it has handled them all.
    routed: u64,
    idle_since: Option<Instant>,
}

/// Supervisor state.
pub struct SupervisorState {
    deps: AgentDeps,
    children: HashMap<ConvKey, Child>,
    by_actor: HashMap<ActorId, ConvKey>,
    /// Recent failures per conversation, for respawn backoff.
    failures: HashMap<ConvKey, (u32, Instant)>,
}

/// The supervisor actor.
pub struct ConversationSupervisor;

/// Longest respawn delay.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(5);
/// Failures older than this no longer count toward backoff.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl ConversationSupervisor {
    async fn spawn_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        key: &ConvKey,
    ) -> Result<ActorRef<ConversationMsg>, DeliveryError> {
        if let Some(c) = state.children.get(key) {
            return Ok(c.actor.clone());
        }
        let args = ConversationArgs {
            key: key.clone(),
            deps: state.deps.clone(),
            supervisor: myself.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ConversationActor, args, myself.get_cell())
            .await
            .map_err(|e| DeliveryError {
                permanent: false,
                reason: format!("cannot start the conversation actor: {e}"),
            })?;
        state.by_actor.insert(actor.get_id(), key.clone());
        state.children.insert(
            key.clone(),
            Child {
                actor: actor.clone(),
                routed: 0,
                idle_since: None,
            },
        );
        Ok(actor)
    }

    fn forget(state: &mut SupervisorState, id: ActorId) -> Option<ConvKey> {
        let key = state.by_actor.remove(&id)?;
        if state
            .children
            .get(&key)
            .is_some_and(|c| c.actor.get_id() == id)
        {
            state.children.remove(&key);
        }
        Some(key)
    }
}

/// True when `id`'s `reasoning_tasks` partition is in `assignment`.
fn owned_by(assignment: &Assignment, id: &ConversationId) -> bool {
    let p = partition_for(id.as_str(), assignment.partition_count);
    assignment.partitions.contains(&p)
}

/// Starts the actors of conversations with unfinished work (all of them, or
/// those of the assigned partitions). Retried until the store answers.
async fn resume(
    myself: &ActorRef<SupervisorMsg>,
    deps: &AgentDeps,
    assignment: Option<&Assignment>,
) {
    match deps.memory.active_conversations().await {
        Ok(active) => {
            let mine: Vec<ConvKey> = active
                .into_iter()
                .filter(|(_, id)| assignment.is_none_or(|a| owned_by(a, id)))
                .collect();
            if !mine.is_empty() {
                tracing::info!(
                    count = mine.len(),
                    "resuming conversations with unfinished work"
                );
            }
            for key in mine {
                let _ = myself.send_message(SupervisorMsg::Touch(key));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list unfinished conversations; retrying");
            match assignment {
                Some(a) => {
                    let a = a.clone();
                    myself.send_after(RESUME_RETRY, move || SupervisorMsg::Adopt(a));
                }
                None => {
                    myself.send_after(RESUME_RETRY, || SupervisorMsg::ResumeAll);
                }
            };
        }
    }
}

/// Delay before listing unfinished conversations again after a store failure.
const RESUME_RETRY: Duration = Duration::from_secs(1);

impl Actor for ConversationSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = AgentDeps;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        deps: AgentDeps,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            deps,
            children: HashMap::new(),
            by_actor: HashMap::new(),
            failures: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let period = (state.deps.settings.idle_passivation / 4).max(Duration::from_millis(10));
        myself.send_interval(period, || SupervisorMsg::PassivateIdle);
        // Resume whatever was in flight or queued when the process last stopped
        // (on Kafka, partition assignment says which conversations are ours).
        if state.deps.settings.resume_all_at_start {
            resume(&myself, &state.deps, None).await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Children abort their turn tasks as they stop; their checkpoints stay.
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Deliver(request, reply) => {
                let key = (request.tenant_id.clone(), request.conversation_id.clone());
                let mut msg = ConversationMsg::Enqueue(request, reply);
                // At most two tries: a child that died but whose failure has not
                // been processed yet refuses the message; forget it and spawn anew.
                for _ in 0..2 {
                    let actor = match Self::spawn_child(&myself, state, &key).await {
                        Ok(a) => a,
                        Err(e) => {
                            if let ConversationMsg::Enqueue(_, reply) = msg {
                                let _ = reply.send(Err(e));
                            }
                            return Ok(());
                        }
                    };
                    match actor.send_message(msg) {
                        Ok(()) => {
                            if let Some(c) = state.children.get_mut(&key) {
                                c.routed += 1;
                                c.idle_since = None;
                            }
                            return Ok(());
                        }
                        Err(ractor::MessagingErr::SendErr(back)) => {
                            Self::forget(state, actor.get_id());
                            msg = back;
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
            SupervisorMsg::Touch(key) | SupervisorMsg::Respawn(key) => {
                if let Err(e) = Self::spawn_child(&myself, state, &key).await {
                    tracing::error!(conversation = %key.1, error = %e, "cannot start conversation actor");
                    myself.send_after(MAX_RESPAWN_DELAY, move || SupervisorMsg::Respawn(key));
                }
            }
            SupervisorMsg::Drained { key, handled } => {
                if let Some(c) = state.children.get_mut(&key)
                    && c.routed == handled
                {
                    c.idle_since = Some(Instant::now());
                }
            }
            SupervisorMsg::PassivateIdle => {
                let idle = state.deps.settings.idle_passivation;
                let now = Instant::now();
                let stale: Vec<ConvKey> = state
                    .children
                    .iter()
                    .filter(|(_, c)| c.idle_since.is_some_and(|t| now.duration_since(t) >= idle))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    if let Some(c) = state.children.remove(&key) {
                        state.by_actor.remove(&c.actor.get_id());
                        c.actor.stop(Some("passivated".into()));
                    }
                }
                state
                    .failures
                    .retain(|_, (_, at)| now.duration_since(*at) < FAILURE_WINDOW);
            }
            SupervisorMsg::LiveCount(reply) => {
                let _ = reply.send(state.children.len());
            }
            SupervisorMsg::Adopt(assignment) => {
                resume(&myself, &state.deps, Some(&assignment)).await;
            }
            SupervisorMsg::ResumeAll => {
                resume(&myself, &state.deps, None).await;
            }
            SupervisorMsg::Release(assignment) => {
                if state.deps.lifecycle.draining() {
                    // This process is shutting down (its consumers leaving the
                    // group is what revoked the partitions): running turns may
                    // finish under their leases; the actors stop at the end of
                    // the drain and release them, and the new owner waits for that.
                    return Ok(());
                }
                let gone: Vec<ConvKey> = state
                    .children
                    .keys()
                    .filter(|(_, id)| owned_by(&assignment, id))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    tracing::info!(count = gone.len(), partitions = ?assignment.partitions, "partitions revoked; stopping their conversations");
                }
                for key in gone {
                    if let Some(c) = state.children.remove(&key) {
                        state.by_actor.remove(&c.actor.get_id());
                        c.actor.stop(Some("partition revoked".into()));
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(key) = Self::forget(state, cell.get_id()) else {
                    return Ok(());
                };
                let now = Instant::now();
                let entry = state.failures.entry(key.clone()).or_insert((0, now));
                if now.duration_since(entry.1) > FAILURE_WINDOW {
                    *entry = (0, now);
                }
                entry.0 += 1;
                entry.1 = now;
                let delay = (Duration::from_millis(10) * 2u32.saturating_pow(entry.0 - 1))
                    .min(MAX_RESPAWN_DELAY);
                tracing::error!(conversation = %key.1, error = %err, ?delay, "conversation actor failed; respawning");
                myself.send_after(delay, move || SupervisorMsg::Respawn(key));
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                Self::forget(state, cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
