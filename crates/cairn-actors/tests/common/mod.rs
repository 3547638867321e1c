//! Helpers shared by the actor tests: a scripted model, test tools, and a harness
//! that runs the real runtime over the embedded store and bus in a temp dir.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use async_trait::async_trait;
use cairn_actors::{AgentDeps, AgentSettings, Runtime, ToolCatalog};
use cairn_bus::EmbeddedBus;
use cairn_core::ports::*;
use cairn_core::*;
use cairn_store::EmbeddedStore;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Script = dyn Fn(&ChatRequest) -> ChatResponse + Send + Sync;

/// A model whose answer is computed from the request by a closure; it records
/// every request it receives.
pub struct ScriptedModel {
    script: Box<Script>,
    pub requests: Mutex<Vec<ChatRequest>>,
}

impl ScriptedModel {
    pub fn new(f: impl Fn(&ChatRequest) -> ChatResponse + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(f),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// Calls `tool` with `args` first, then answers with the observation.
    pub fn tool_then_answer(tool: &'static str, args: Value) -> Arc<Self> {
        Self::new(move |req| match last_observation(req) {
            None => calls(tool, args.clone()),
            Some(obs) => answer(&format!("answer: {obs}")),
        })
    }

    pub fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait]
impl ChatModel for ScriptedModel {
    fn provider(&self) -> &'static str {
        "scripted"
    }
    async fn complete(
        &self,
        req: &ChatRequest,
        _deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError> {
        self.requests.lock().unwrap().push(req.clone());
        Ok((self.script)(req))
    }
}

/// The observation of the current turn's latest tool call, if any.
pub fn last_observation(req: &ChatRequest) -> Option<String> {
    let user_at = req.messages.iter().rposition(|m| m.role == Role::User)?;
    req.messages[user_at..]
        .iter()
        .rev()
        .find(|m| m.role == Role::Tool)
        .map(|m| m.content.clone())
}

pub fn observations(req: &ChatRequest) -> usize {
    let user_at = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .unwrap_or(0);
    req.messages[user_at..]
        .iter()
        .filter(|m| m.role == Role::Tool)
        .count()
}

pub fn answer(text: &str) -> ChatResponse {
    ChatResponse {
        content: text.into(),
        ..Default::default()
    }
}

pub fn calls(tool: &str, args: Value) -> ChatResponse {
    ChatResponse {
        tool_calls: vec![ToolCall {
            id: format!("call_{tool}"),
            name: tool.into(),
            arguments: args,
        }],
        ..Default::default()
    }
}

/// A tool whose behaviour is a closure; records every call with its key.
pub struct FnTool {
    spec: ToolSpec,
    pub calls: Mutex<Vec<(Value, String)>>,
    f: Box<Behaviour>,
    count: AtomicUsize,
}

type Behaviour = dyn Fn(&Value, usize) -> ToolBehaviour + Send + Sync;

pub enum ToolBehaviour {
    Reply(String),
    Hang,
    Panic,
}

impl FnTool {
    pub fn new(
        name: &str,
        f: impl Fn(&Value, usize) -> ToolBehaviour + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            spec: ToolSpec {
                name: name.into(),
                description: format!("test tool {name}"),
                input_schema: json!({"type": "object"}),
            },
            calls: Mutex::new(Vec::new()),
            f: Box::new(f),
            count: AtomicUsize::new(0),
        })
    }

    pub fn echo(name: &str) -> Arc<Self> {
        Self::new(name, |args, _| ToolBehaviour::Reply(args.to_string()))
    }

    pub fn keys(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.clone())
            .collect()
    }
}

#[async_trait]
impl Tool for FnTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    async fn call(&self, arguments: Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        self.calls
            .lock()
            .unwrap()
            .push((arguments.clone(), ctx.idempotency_key.clone()));
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        match (self.f)(&arguments, n) {
            ToolBehaviour::Reply(s) => Ok(ToolOutput {
                content: s,
                is_error: false,
            }),
            ToolBehaviour::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            ToolBehaviour::Panic => panic!("tool exploded on purpose"),
        }
    }
}

pub struct Harness {
    pub dir: PathBuf,
    pub store: EmbeddedStore,
    pub bus: EmbeddedBus,
    pub runtime: Option<Runtime>,
    pub tenant: TenantId,
    pub user: UserId,
}

pub async fn open_store(dir: &Path) -> (EmbeddedStore, EmbeddedBus) {
    // A previous harness on the same dir may still be releasing the files.
    for _ in 0..200 {
        if let (Ok(s), Ok(b)) = (
            EmbeddedStore::open_and_init(&dir.join("memory.redb"), 1000).await,
            EmbeddedBus::open(&dir.join("bus.redb")).await,
        ) {
            return (s, b);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot open the embedded store");
}

impl Harness {
    pub async fn start(
        dir: &Path,
        model: Arc<dyn ChatModel>,
        tools: ToolCatalog,
        settings: AgentSettings,
    ) -> Harness {
        let (store, bus) = open_store(dir).await;
        let deps = AgentDeps {
            budget: None,
            webhooks: None,
            lifecycle: Default::default(),
            memory: Arc::new(store.clone()),
            events: Arc::new(store.clone()),
            model,
            tools: Arc::new(tools),
            settings: Arc::new(settings),
            relay: None,
            signals: Default::default(),
            routing: None,
            analytics: None,
            pii: None,
        };
        let runtime = Runtime::start(deps, Arc::new(bus.clone()), Topics::with_prefix(""), 64)
            .await
            .unwrap();
        Harness {
            dir: dir.to_owned(),
            store,
            bus,
            runtime: Some(runtime),
            tenant: TenantId::parse("acme").unwrap(),
            user: UserId::parse("ana").unwrap(),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().unwrap()
    }

    pub async fn conversation(&self) -> ConversationId {
        let m = ConversationMeta::new(
            ConversationId::generate(),
            self.tenant.clone(),
            self.user.clone(),
            None,
        );
        self.store.create_conversation(&m).await.unwrap();
        m.id
    }

    pub fn request(&self, conv: &ConversationId, text: &str) -> TurnRequest {
        TurnRequest::new(
            self.tenant.clone(),
            conv.clone(),
            self.user.clone(),
            text.into(),
        )
    }

    /// Submits a message through the bus, as the API does.
    pub async fn send(&self, conv: &ConversationId, text: &str) -> TurnRequest {
        let r = self.request(conv, text);
        self.runtime().submit(&r, None).await.unwrap();
        r
    }

    /// Waits for the terminal event of `turn`, returning every event of the turn.
    pub async fn wait_turn(&self, conv: &ConversationId, turn: &TurnId) -> Vec<TurnEvent> {
        let mut sub = self.store.subscribe(self.tenant.clone(), conv.clone(), 0);
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let e = tokio::time::timeout_at(deadline, sub.next())
                .await
                .unwrap_or_else(|_| panic!("turn {turn} did not end; events so far: {out:?}"))
                .unwrap()
                .unwrap();
            if e.event.turn_id() == turn {
                let terminal = e.event.is_terminal();
                out.push(e.event);
                if terminal {
                    return out;
                }
            }
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown().await;
        }
    }
}

pub fn kinds(events: &[TurnEvent]) -> Vec<&'static str> {
    events.iter().map(TurnEvent::kind).collect()
}

pub fn final_answer(events: &[TurnEvent]) -> String {
    match events.last() {
        Some(TurnEvent::AnswerCompleted { content, .. }) => content.clone(),
        other => panic!("turn did not answer: {other:?}"),
    }
}
