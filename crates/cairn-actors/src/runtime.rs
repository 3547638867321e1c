//! Starts and stops the supervision tree and the bus bridges; the API's entry
//! point for submitting messages.

use crate::bridge::{run_conversation_bridge, run_router};
use crate::settings::AgentDeps;
use crate::supervisor::{ConversationSupervisor, SupervisorMsg};
use cairn_core::TurnRequest;
use cairn_core::envelope::{Envelope, USER_MESSAGE};
use cairn_core::ports::{BusError, EventBus, Topics};
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The running agent side of Cairn.
pub struct Runtime {
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    bridges: Vec<JoinHandle<()>>,
    bus: Arc<dyn EventBus>,
    topics: Topics,
    deps: AgentDeps,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the conversation supervisor: {0}")]
pub struct StartError(String);

impl Runtime {
    /// Starts the supervisor (which resumes unfinished conversations) and the bridges.
    pub async fn start(
        deps: AgentDeps,
        bus: Arc<dyn EventBus>,
        topics: Topics,
        max_in_flight: usize,
    ) -> Result<Runtime, StartError> {
        let (supervisor, supervisor_task) =
            Actor::spawn(None, ConversationSupervisor, deps.clone())
                .await
                .map_err(|e| StartError(e.to_string()))?;
        let max_in_flight = max_in_flight.max(1);
        let bridges = vec![
            tokio::spawn(run_router(bus.clone(), topics.clone(), max_in_flight)),
            tokio::spawn(run_conversation_bridge(
                bus.clone(),
                topics.clone(),
                supervisor.clone(),
                max_in_flight,
            )),
        ];
        Ok(Runtime {
            supervisor,
            supervisor_task: std::sync::Mutex::new(Some(supervisor_task)),
            bridges,
            bus,
            topics,
            deps,
        })
    }

    /// Publishes an accepted user message to `user_events`; returns once the bus
    /// holds it durably (the API answers 202 only then).
    pub async fn submit(&self, request: &TurnRequest) -> Result<(), BusError> {
        let data = serde_json::to_value(request)
            .map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let mut envelope = Envelope::new(USER_MESSAGE, request.tenant_id.clone(), data);
        // The message id is the dedup key downstream; reuse it as the event id
        // only when it is a UUID, as the envelope schema requires.
        if uuid::Uuid::parse_str(request.message_id.as_str()).is_ok() {
            envelope.event_id = request.message_id.to_string();
        }
        self.bus
            .publish(
                &self.topics.user_events,
                request.conversation_id.as_str(),
                &envelope,
            )
            .await
    }

    /// Live conversation actors.
    pub async fn live_conversations(&self) -> usize {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .supervisor
            .send_message(SupervisorMsg::LiveCount(tx.into()))
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// True while the supervisor runs.
    pub fn is_running(&self) -> bool {
        self.supervisor_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// The shared dependencies.
    pub fn deps(&self) -> &AgentDeps {
        &self.deps
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Stops the bridges, then the supervision tree. Unfinished turns stay
    /// checkpointed and resume at the next start.
    pub async fn shutdown(&self) {
        for b in &self.bridges {
            b.abort();
        }
        self.supervisor.stop(Some("shutdown".into()));
        let task = self
            .supervisor_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}
