//! The conversation actor end to end over the embedded store and bus: the ReAct
//! loop, memory across turns, summary roll-over, queuing, max_steps, crash
//! recovery, supervision and passivation.

#![allow(clippy::unwrap_used)]

mod common;

use cairn_actors::{AgentSettings, ToolCatalog};
use cairn_core::ports::{ChatModel, EventBus, EventStream, MemoryStore, Topics};
use cairn_core::*;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn settings() -> AgentSettings {
    AgentSettings {
        stream: false,
        ..AgentSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn react_loop_calls_a_tool_and_answers_with_its_observation() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::tool_then_answer("echo", json!({"text": "pong"}));
    let echo = FnTool::echo("echo");
    let mut h = Harness::start(
        dir.path(),
        model.clone(),
        ToolCatalog::new().with(echo.clone()),
        settings(),
    )
    .await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "ping?").await;
    let events = h.wait_turn(&conv, &r.turn_id).await;
    assert_eq!(
        kinds(&events),
        vec![
            "turn.started",
            "tool.called",
            "tool.completed",
            "answer.completed"
        ]
    );
    assert_eq!(final_answer(&events), r#"answer: {"text":"pong"}"#);
    match &events[1] {
        TurnEvent::ToolCalled {
            tool,
            step,
            arguments,
            ..
        } => {
            assert_eq!(tool, "echo");
            assert_eq!(*step, 1);
            assert_eq!(arguments["text"], "pong");
        }
        e => panic!("{e:?}"),
    }
    // The tool saw the idempotency key turn_id:step.
    assert_eq!(echo.keys(), vec![format!("{}:1", r.turn_id)]);
    // The second model call carried the tool call and its observation.
    let reqs = model.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].tools[0].name, "echo");
    assert_eq!(
        last_observation(&reqs[1]).as_deref(),
        Some(r#"{"text":"pong"}"#)
    );
    // Transcript: the user message and the answer with its steps.
    let msgs = h.store.messages(&h.tenant, &conv, 0, 10).await.unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].id, r.message_id);
    assert_eq!(msgs[1].role, Role::Assistant);
    assert_eq!(msgs[1].steps.len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_turn_request_carries_the_first_turn() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(|req| {
        let n = req.messages.iter().filter(|m| m.role == Role::User).count();
        answer(&format!("seen {n} user messages"))
    });
    let mut h = Harness::start(dir.path(), model.clone(), ToolCatalog::new(), settings()).await;
    let conv = h.conversation().await;
    let r1 = h.send(&conv, "my name is Ana").await;
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &r1.turn_id).await),
        "seen 1 user messages"
    );
    let r2 = h.send(&conv, "what is my name?").await;
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &r2.turn_id).await),
        "seen 2 user messages"
    );
    let second = &model.requests()[1];
    let texts: Vec<(Role, &str)> = second
        .messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            (Role::User, "my name is Ana"),
            (Role::Assistant, "seen 1 user messages"),
            (Role::User, "what is my name?"),
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_leaving_the_window_roll_into_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    // An LLM-like summariser: merges the new lines into the current summary.
    let model = ScriptedModel::new(|req| {
        let q = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .unwrap();
        if req.system.starts_with("You maintain the running summary") {
            let (old, new) = q.content.split_once("\n\nNew messages:\n").unwrap();
            let old = old.trim_start_matches("Current summary:\n");
            return answer(&if old == "(none)" {
                new.to_owned()
            } else {
                format!("{old}\n{new}")
            });
        }
        answer(&format!("ack {}", q.content))
    });
    let mut s = settings();
    s.window_messages = 4;
    let mut h = Harness::start(dir.path(), model.clone(), ToolCatalog::new(), s).await;
    let conv = h.conversation().await;
    for i in 0..4 {
        let r = h.send(&conv, &format!("fact {i}.")).await;
        h.wait_turn(&conv, &r.turn_id).await;
    }
    // Turn 4 started with 7 messages (3 turns + its own); 3 left the window.
    let summary = h.store.summary(&h.tenant, &conv).await.unwrap();
    assert_eq!(summary.covers_until, 3);
    assert_eq!(
        summary.text,
        "User: fact 0.\nAssistant: ack fact 0.\nUser: fact 1."
    );
    let last = model.requests().pop().unwrap();
    assert_eq!(last.messages[0].role, Role::System);
    assert!(last.messages[0].content.contains("User: fact 0."));
    assert_eq!(last.messages.len(), 1 + 4, "summary + window of 4");
    assert_eq!(last.messages[4].content, "fact 3.");
    // The incremental step: the next turn folds two more messages onto the old summary.
    let r = h.send(&conv, "fact 4.").await;
    h.wait_turn(&conv, &r.turn_id).await;
    let s2 = h.store.summary(&h.tenant, &conv).await.unwrap();
    assert_eq!(s2.covers_until, 5);
    assert!(s2.text.starts_with(&summary.text));
    assert!(
        s2.text.ends_with("Assistant: ack fact 1.\nUser: fact 2."),
        "{}",
        s2.text
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arriving_during_a_turn_are_queued_and_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let gate = gate.clone();
        Arc::new(GatedTool {
            gate,
            spec: spec("slow"),
        })
    };
    let model = ScriptedModel::new(|req| {
        let q = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .unwrap()
            .content
            .clone();
        if q == "first" && observations(req) == 0 {
            calls("slow", json!({}))
        } else {
            answer(&format!("done {q}"))
        }
    });
    let mut h = Harness::start(
        dir.path(),
        model.clone(),
        ToolCatalog::new().with(slow),
        settings(),
    )
    .await;
    let conv = h.conversation().await;
    let r1 = h.send(&conv, "first").await;
    // While the first turn waits in its tool, two more messages arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r2 = h.send(&conv, "second").await;
    let r3 = h.send(&conv, "third").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pending = h.store.pending_turns(&h.tenant, &conv).await.unwrap();
    assert_eq!(
        pending.len(),
        3,
        "both new messages were accepted while the turn ran"
    );
    gate.notify_one();
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &r1.turn_id).await),
        "done first"
    );
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &r2.turn_id).await),
        "done second"
    );
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &r3.turn_id).await),
        "done third"
    );
    let msgs = h.store.messages(&h.tenant, &conv, 0, 10).await.unwrap();
    let texts: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "first",
            "done first",
            "second",
            "done second",
            "third",
            "done third"
        ]
    );
    h.stop().await;
}

fn spec(name: &str) -> cairn_core::ports::ToolSpec {
    cairn_core::ports::ToolSpec {
        name: name.into(),
        description: "waits for the test".into(),
        input_schema: json!({"type": "object"}),
    }
}

struct GatedTool {
    gate: Arc<tokio::sync::Notify>,
    spec: cairn_core::ports::ToolSpec,
}

#[async_trait::async_trait]
impl cairn_core::ports::Tool for GatedTool {
    fn spec(&self) -> &cairn_core::ports::ToolSpec {
        &self.spec
    }
    async fn call(
        &self,
        _: serde_json::Value,
        _: &cairn_core::ports::ToolContext,
    ) -> Result<cairn_core::ports::ToolOutput, cairn_core::ports::ToolError> {
        self.gate.notified().await;
        Ok(cairn_core::ports::ToolOutput {
            content: "opened".into(),
            is_error: false,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_steps_ends_the_turn_with_turn_failed() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(|_| calls("echo", json!({})));
    let mut s = settings();
    s.max_steps = 3;
    let mut h = Harness::start(
        dir.path(),
        model.clone(),
        ToolCatalog::new().with(FnTool::echo("echo")),
        s,
    )
    .await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "loop forever").await;
    let events = h.wait_turn(&conv, &r.turn_id).await;
    match events.last().unwrap() {
        TurnEvent::TurnFailed { code, reason, .. } => {
            assert_eq!(code, "max_steps_exceeded");
            assert!(reason.contains("3"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(model.requests().len(), 3);
    // Recorded in the transcript, and the conversation takes the next message.
    let msgs = h.store.messages(&h.tenant, &conv, 0, 10).await.unwrap();
    assert!(msgs[1].metadata["turn_failed"]["code"] == "max_steps_exceeded");
    assert!(
        h.store
            .pending_turns(&h.tenant, &conv)
            .await
            .unwrap()
            .is_empty()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_resumes_after_a_restart_without_rerunning_completed_tools() {
    let dir = tempfile::tempdir().unwrap();
    // The model calls `charge` (a side effect), then `lookup`, then answers.
    let script = || {
        ScriptedModel::new(|req| match observations(req) {
            0 => calls("charge", json!({"amount": 10})),
            1 => calls("lookup", json!({})),
            _ => answer(&format!(
                "charged and found {}",
                last_observation(req).unwrap()
            )),
        })
    };
    let charge = FnTool::new("charge", |_, _| ToolBehaviour::Reply("charged".into()));
    let hanging = FnTool::new("lookup", |_, _| ToolBehaviour::Hang);
    let mut h = Harness::start(
        dir.path(),
        script(),
        ToolCatalog::new()
            .with(charge.clone())
            .with(hanging.clone()),
        settings(),
    )
    .await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "charge me").await;
    // Wait until the second tool is in flight, then "crash" the process.
    for _ in 0..200 {
        if !hanging.keys().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hanging.keys().len(), 1);
    h.stop().await;
    drop(h);

    let lookup = FnTool::new("lookup", |_, _| ToolBehaviour::Reply("order 4417".into()));
    let mut h = Harness::start(
        dir.path(),
        script(),
        ToolCatalog::new().with(charge.clone()).with(lookup.clone()),
        settings(),
    )
    .await;
    let events = h.wait_turn(&conv, &r.turn_id).await;
    assert_eq!(final_answer(&events), "charged and found order 4417");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TurnEvent::TurnStarted { resumed: true, .. }))
    );
    assert_eq!(charge.keys().len(), 1, "the completed side effect ran once");
    // The interrupted call ran again with the same idempotency key.
    assert_eq!(lookup.keys(), hanging.keys());
    assert_eq!(lookup.keys()[0], format!("{}:3", r.turn_id));
    let msgs = h.store.messages(&h.tenant, &conv, 0, 10).await.unwrap();
    assert_eq!(msgs.len(), 2, "the user message is recorded once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_tool_is_survived_and_other_conversations_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let exploded = Arc::new(AtomicBool::new(false));
    let flaky = {
        let exploded = exploded.clone();
        FnTool::new("flaky", move |_, _| {
            if exploded.swap(true, Ordering::SeqCst) {
                ToolBehaviour::Reply("fine now".into())
            } else {
                ToolBehaviour::Panic
            }
        })
    };
    let model = ScriptedModel::new(|req| {
        let q = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .unwrap()
            .content
            .clone();
        match (q.as_str(), last_observation(req)) {
            ("use flaky", None) => calls("flaky", json!({})),
            (_, Some(o)) => answer(&o),
            (q, None) => answer(&format!("plain {q}")),
        }
    });
    let mut h = Harness::start(
        dir.path(),
        model,
        ToolCatalog::new().with(flaky.clone()),
        settings(),
    )
    .await;
    let a = h.conversation().await;
    let b = h.conversation().await;
    let ra = h.send(&a, "use flaky").await;
    let rb = h.send(&b, "hello").await;
    let ea = h.wait_turn(&a, &ra.turn_id).await;
    assert_eq!(final_answer(&ea), "fine now");
    assert!(
        ea.iter()
            .any(|e| matches!(e, TurnEvent::TurnStarted { resumed: true, .. })),
        "respawned actor resumed: {ea:?}"
    );
    assert_eq!(flaky.keys().len(), 2);
    assert_eq!(flaky.keys()[0], flaky.keys()[1]);
    assert_eq!(
        final_answer(&h.wait_turn(&b, &rb.turn_id).await),
        "plain hello"
    );
    // The respawned actor keeps serving its conversation.
    let ra2 = h.send(&a, "again").await;
    assert_eq!(
        final_answer(&h.wait_turn(&a, &ra2.turn_id).await),
        "plain again"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_keeps_crashing_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(|req| match last_observation(req) {
        None => calls("bomb", json!({})),
        Some(o) => answer(&o),
    });
    let bomb = FnTool::new("bomb", |_, _| ToolBehaviour::Panic);
    let mut s = settings();
    s.max_turn_attempts = 2;
    let mut h = Harness::start(dir.path(), model, ToolCatalog::new().with(bomb.clone()), s).await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "boom").await;
    let events = h.wait_turn(&conv, &r.turn_id).await;
    match events.last().unwrap() {
        TurnEvent::TurnFailed { code, .. } => assert_eq!(code, "turn_crashed"),
        e => panic!("{e:?}"),
    }
    assert_eq!(bomb.keys().len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_are_passivated_and_come_back_with_their_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(|req| answer(&format!("{} messages", req.messages.len())));
    let mut s = settings();
    s.idle_passivation = Duration::from_millis(100);
    let mut h = Harness::start(dir.path(), model, ToolCatalog::new(), s).await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "one").await;
    h.wait_turn(&conv, &r.turn_id).await;
    assert_eq!(h.runtime().live_conversations().await, 1);
    let mut passivated = false;
    for _ in 0..100 {
        if h.runtime().live_conversations().await == 0 {
            passivated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(passivated, "the idle actor was stopped");
    let r = h.send(&conv, "two").await;
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &r.turn_id).await),
        "3 messages"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_message_survives_a_crash_before_its_turn_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bus) = open_store(dir.path()).await;
    let tenant = TenantId::parse("acme").unwrap();
    let now = chrono::Utc::now();
    let conv = ConversationId::generate();
    store
        .create_conversation(&ConversationMeta {
            id: conv.clone(),
            tenant_id: tenant.clone(),
            owner: UserId::parse("ana").unwrap(),
            title: None,
            created_at: now,
            updated_at: now,
            message_count: 0,
        })
        .await
        .unwrap();
    // The API's half: the message is durably on the bus (this is when it answers
    // 202); then the process dies before any actor runs.
    let request = TurnRequest {
        tenant_id: tenant.clone(),
        conversation_id: conv.clone(),
        user_id: UserId::parse("ana").unwrap(),
        message_id: MessageId::generate(),
        turn_id: TurnId::generate(),
        content: "still there?".into(),
        accepted_at: now,
        redacted_pii: None,
        agent: None,
        traceparent: None,
        interrupts: None,
        webhook: None,
    };
    let env = cairn_core::envelope::Envelope::new(
        cairn_core::envelope::USER_MESSAGE,
        tenant.clone(),
        serde_json::to_value(&request).unwrap(),
    );
    bus.publish(&Topics::with_prefix("").user_events, conv.as_str(), &env)
        .await
        .unwrap();
    // The same message delivered twice (at-least-once) must run once.
    bus.publish(&Topics::with_prefix("").user_events, conv.as_str(), &env)
        .await
        .unwrap();
    drop((store, bus));

    let model = ScriptedModel::new(|_| answer("yes"));
    let mut h = Harness::start(
        dir.path(),
        model.clone() as Arc<dyn ChatModel>,
        ToolCatalog::new(),
        settings(),
    )
    .await;
    assert_eq!(
        final_answer(&h.wait_turn(&conv, &request.turn_id).await),
        "yes"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        model.requests().len(),
        1,
        "the duplicate delivery did not run again"
    );
    assert_eq!(
        h.store.messages(&tenant, &conv, 0, 10).await.unwrap().len(),
        2
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_missing_conversation_goes_to_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(
        dir.path(),
        ScriptedModel::new(|_| answer("x")),
        ToolCatalog::new(),
        settings(),
    )
    .await;
    let ghost = ConversationId::generate();
    h.send(&ghost, "hello?").await;
    let mut dlq = h.bus.subscribe("dlq", "test").await.unwrap();
    let rec = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.envelope.kind, "dlq.record");
    assert_eq!(rec.envelope.data["topic"], "reasoning_tasks");
    assert!(
        rec.envelope.data["reason"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    assert!(h.store.last_event_id(&h.tenant, &ghost).await.unwrap() == 0);
    h.stop().await;
}

/// A model that streams its answer in fragments and reports usage.
struct StreamingModel;

#[async_trait::async_trait]
impl ChatModel for StreamingModel {
    fn provider(&self) -> &'static str {
        "streaming-test"
    }
    async fn complete(
        &self,
        _req: &cairn_core::ports::ChatRequest,
        deltas: Option<&cairn_core::ports::DeltaSender>,
    ) -> Result<cairn_core::ports::ChatResponse, cairn_core::ports::ModelError> {
        for part in ["Hel", "lo ", "there"] {
            if let Some(d) = deltas {
                d.send(part.to_owned()).unwrap();
            }
        }
        Ok(cairn_core::ports::ChatResponse {
            content: "Hello there".into(),
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 3,
            }),
            ..Default::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_emit_deltas_and_usage_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = AgentSettings {
        stream: true,
        ..AgentSettings::default()
    };
    let mut h = Harness::start(dir.path(), Arc::new(StreamingModel), ToolCatalog::new(), s).await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "hi").await;
    let events = h.wait_turn(&conv, &r.turn_id).await;
    assert_eq!(
        kinds(&events),
        vec![
            "turn.started",
            "answer.delta",
            "answer.delta",
            "answer.delta",
            "answer.completed"
        ]
    );
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            TurnEvent::AnswerDelta { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, "Hello there");
    match events.last().unwrap() {
        TurnEvent::AnswerCompleted { usage, .. } => {
            assert_eq!(
                *usage,
                Some(Usage {
                    input_tokens: 12,
                    output_tokens: 3
                })
            );
        }
        e => panic!("{e:?}"),
    }
    let msgs = h.store.messages(&h.tenant, &conv, 0, 10).await.unwrap();
    assert_eq!(
        msgs[1].usage,
        Some(Usage {
            input_tokens: 12,
            output_tokens: 3
        })
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_answers_cite_the_passages_they_used() {
    let dir = tempfile::tempdir().unwrap();
    let passages = json!({"passages": [
        {"document_id": "pw.md", "title": "Resetting your password", "section": "Resetting your password > Links",
         "text": "The reset link is valid for thirty minutes and works once.", "score": 1.0},
        {"document_id": "ship.md", "title": "Shipping", "section": "",
         "text": "Express parcels arrive the next working day.", "score": 0.2}
    ]});
    let search = FnTool::new("search_knowledge", move |_, _| {
        ToolBehaviour::Reply(passages.to_string())
    });
    let model = ScriptedModel::new(|req| match last_observation(req) {
        None => calls("search_knowledge", json!({"query": "reset link"})),
        Some(_) => answer("Your reset link stays valid for thirty minutes, and it works once."),
    });
    let mut h = Harness::start(
        dir.path(),
        model,
        ToolCatalog::new().with(search),
        settings(),
    )
    .await;
    let conv = h.conversation().await;
    let r = h.send(&conv, "how long is the reset link valid?").await;
    let events = h.wait_turn(&conv, &r.turn_id).await;
    match events.last().unwrap() {
        TurnEvent::AnswerCompleted { citations, .. } => {
            assert_eq!(citations.len(), 1, "{citations:?}");
            assert_eq!(citations[0].source, "pw.md");
            assert_eq!(
                citations[0].title.as_deref(),
                Some("Resetting your password")
            );
            assert_eq!(
                citations[0].section.as_deref(),
                Some("Resetting your password > Links")
            );
        }
        e => panic!("{e:?}"),
    }
    let msgs = h.store.messages(&h.tenant, &conv, 0, 10).await.unwrap();
    assert_eq!(msgs[1].citations[0].source, "pw.md");
    h.stop().await;
}
