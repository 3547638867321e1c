//! One turn of the ReAct loop: think (ask the model), act (run the tools it asks
//! for), observe (feed the results back), until a final answer or `max_steps`.
//!
//! The checkpoint is written after every step, before the next one starts. A turn
//! resumed from a checkpoint replays the recorded steps into the model's context,
//! runs only the tool calls that had not completed (with the same idempotency key
//! `turn_id:step`), and continues. A turn started more than `max_turn_attempts`
//! times fails with `turn_crashed` instead of looping forever.

use crate::approval::Gate;
use crate::cancel::{CancelWatch, finish_cancelled};
use crate::memory;
use crate::settings::AgentDeps;
use cairn_core::desk_config::AgentProfile;
use cairn_core::insights::Pseudonyms;
use cairn_core::ports::{
    AnalysisInput, ChatMessage, ChatRequest, ChatResponse, ModelError, ModelOptions, StoreError,
    ToolContext, ToolError, ToolSpec,
};
use cairn_core::*;
use cairn_desk::routing::HANDOFF_TOOL;
use chrono::Utc;
use serde_json::json;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a turn task stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnExit {
    /// Answered, failed or cancelled: recorded, out of the queue.
    Ended,
    /// Waiting for an approval while the process drains: checkpointed, still
    /// queued; the next owner resumes it.
    Suspended,
}

fn ended(r: Result<(), StoreError>) -> Result<TurnExit, StoreError> {
    r.map(|()| TurnExit::Ended)
}

/// Runs (or resumes) a turn to its end. Errors are store failures only; every
/// other problem ends the turn with a `turn.failed` event and a transcript record.
/// `fence` is the conversation lease's token: every write carries it, and a
/// newer owner makes them fail with [`StoreError::Fenced`].
pub async fn run_turn(
    deps: &AgentDeps,
    request: TurnRequest,
    existing: Option<TurnCheckpoint>,
    fence: Option<u64>,
) -> Result<TurnExit, StoreError> {
    let settings = &deps.settings;
    // Watching starts before the turn does: a cancel of a queued turn is seen too.
    let cancel = CancelWatch::start(deps, &request).await?;
    let mut cp = match existing {
        Some(mut cp) => {
            cp.fence = fence;
            cp.attempts += 1;
            if cp.attempts > settings.max_turn_attempts {
                let reason = format!(
                    "the turn crashed {} times and was abandoned (agent.max_turn_attempts = {})",
                    cp.attempts - 1,
                    settings.max_turn_attempts
                );
                return ended(fail(deps, &cp, "turn_crashed", reason).await);
            }
            // Announce the resumption and, again, the calls that did not complete.
            let mut events = vec![started(&cp, true)];
            events.extend(cp.steps.iter().filter_map(|s| match s {
                Step::Tool {
                    index,
                    call,
                    outcome: None,
                } => Some(tool_called(&cp, *index, call)),
                _ => None,
            }));
            deps.memory.save_checkpoint(&cp, &events).await?;
            tracing::info!(turn = %cp.request.turn_id, attempt = cp.attempts, steps = cp.steps.len(), "turn resumed");
            cp
        }
        None => {
            let cp = TurnCheckpoint {
                agent: None,
                first_turn: false,
                request: request.clone(),
                steps: Vec::new(),
                model_calls: 0,
                attempts: 1,
                usage: Usage::default(),
                started_at: Utc::now(),
                fence,
                approvals: Vec::new(),
            };
            let mut user = Message::new(Role::User, request.content.clone());
            user.id = request.message_id.clone();
            user.turn_id = Some(request.turn_id.clone());
            user.created_at = request.accepted_at;
            deps.memory
                .begin_turn(&cp, &user, &[started(&cp, false)])
                .await?;
            cp
        }
    };

    let (summary, recent) =
        memory::load_context(deps, &cp.request.tenant_id, &cp.request.conversation_id).await?;
    if cp.steps.is_empty() && cp.model_calls == 0 && cp.agent.is_none() {
        cp.first_turn = summary.text.is_empty()
            && !recent
                .iter()
                .any(|m| m.role == Role::User && m.id != cp.request.message_id);
        if let Some(r) = &deps.routing {
            let choice = select_agent(r, &cp.request, &recent).await;
            let event = TurnEvent::AgentSelected {
                turn_id: cp.request.turn_id.clone(),
                agent: choice.name.clone(),
                reason: choice.reason.clone(),
                intent: choice.intent.clone(),
            };
            cp.agent = Some(choice);
            deps.memory.save_checkpoint(&cp, &[event]).await?;
        } else if cp.first_turn {
            deps.memory.save_checkpoint(&cp, &[]).await?;
        }
    }
    let context = memory::context_messages(&summary, &recent);
    let all_tools = deps.tools.specs_for(&cp.request.tenant_id);

    // Under `redact_model`, PII is masked from the model (and from tools not
    // allowed to see it); the same values get the same placeholders all turn.
    let guard = deps
        .pii
        .as_ref()
        .filter(|g| g.masks(&cp.request.tenant_id))
        .cloned();

    loop {
        // Act: run tool calls recorded but not completed (after a step, or a crash).
        let unfinished: Vec<usize> = cp
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Step::Tool { outcome: None, .. }))
            .map(|(i, _)| i)
            .collect();
        // A pending call to a tool allowed to see PII gets the values behind its
        // placeholders: the mapping is rebuilt from the turn's messages (after a
        // crash too), and only when there is such a call.
        let pseudonyms = guard
            .as_ref()
            .filter(|g| {
                unfinished.iter().any(|i| {
                    matches!(&cp.steps[*i], Step::Tool { call, .. } if g.tool_sees_pii(&call.name))
                })
            })
            .map(|g| {
                let mut all = context.clone();
                all.extend(step_messages(&cp.steps));
                mask_messages(g, &all).1
            });
        for i in unfinished {
            if cancel.is_cancelled() {
                return ended(finish_cancelled(deps, cp, &cancel).await);
            }
            let restore = match (&guard, &pseudonyms) {
                (Some(g), Some(p)) => match &cp.steps[i] {
                    Step::Tool { call, .. } if g.tool_sees_pii(&call.name) => Some(p),
                    _ => None,
                },
                _ => None,
            };
            match crate::approval::gate(deps, &mut cp, i, &cancel).await? {
                Gate::Run => {}
                Gate::Decided => continue,
                Gate::Cancelled => return ended(finish_cancelled(deps, cp, &cancel).await),
                Gate::Suspended => return Ok(TurnExit::Suspended),
            }
            run_tool_step(deps, &mut cp, i, restore, cancel.token()).await?;
        }
        if cancel.is_cancelled() {
            return ended(finish_cancelled(deps, cp, &cancel).await);
        }

        if cp.model_calls >= settings.max_steps {
            let reason = format!(
                "the agent used all {} model calls without reaching an answer (agent.max_steps)",
                settings.max_steps
            );
            return ended(fail(deps, &cp, "max_steps_exceeded", reason).await);
        }

        // Think.
        let mut messages = context.clone();
        messages.extend(step_messages(&cp.steps));
        let mut pseudonyms = None;
        if let Some(g) = &guard {
            let (masked, p) = mask_messages(g, &messages);
            messages = masked;
            pseudonyms = Some(p);
        }
        let profile = current_profile(deps, &cp);
        let request = ChatRequest {
            options: profile
                .map(|p| ModelOptions {
                    model: p.model.clone(),
                    temperature: p.temperature,
                    max_tokens: p.max_tokens,
                })
                .unwrap_or_default(),
            system: profile
                .map(|p| p.system_prompt.as_str())
                .filter(|p| !p.is_empty())
                .unwrap_or(&settings.system_prompt)
                .to_owned(),
            messages,
            tools: tools_for(deps, profile, &all_tools),
        };
        if let Some(budget) = &deps.budget {
            match budget.check(&cp.request.tenant_id).await {
                Ok(Ok(())) => {}
                Ok(Err(spent)) => {
                    return ended(fail(deps, &cp, "budget_exceeded", spent.to_string()).await);
                }
                // A budget that cannot be read does not stop the service.
                Err(e) => tracing::warn!(error = %e, "token budget unreadable; calling the model"),
            }
        }
        // Streamed fragments could split a placeholder: a masked turn is not streamed.
        let called = tokio::select! {
            r = call_model(deps, &cp, &request, guard.is_none()) => r?,
            // The model call is dropped: its HTTP request is aborted.
            () = cancel.token().cancelled() => return ended(finish_cancelled(deps, cp, &cancel).await),
        };
        let response = match called {
            Ok(r) => r,
            Err(e) => {
                // The provider's words stay in the log; the user gets a code.
                tracing::warn!(turn = %cp.request.turn_id, error = %e, "model call failed");
                let (code, message) = e.for_users();
                return ended(fail(deps, &cp, code, message.to_owned()).await);
            }
        };
        if let (Some(budget), Some(u)) = (&deps.budget, response.usage) {
            // Counted once per model call of the turn, even when a replayed turn
            // records it again.
            let call_id = format!("{}:{}", cp.request.turn_id, cp.model_calls);
            if let Err(e) = budget.record(&cp.request.tenant_id, &call_id, u).await {
                tracing::warn!(error = %e, "token usage not recorded");
            }
        }
        cp.model_calls += 1;
        if let Some(u) = response.usage {
            cp.usage.add(u);
        }
        if response.tool_calls.is_empty() {
            let mut response = response;
            if let Some(p) = &pseudonyms {
                response.content = p.restore(&response.content);
            }
            return ended(complete(deps, cp, response).await);
        }
        let base = cp.steps.len() as u32;
        let thought = (!response.content.is_empty()).then(|| response.content.clone());
        cp.steps.push(Step::Model {
            index: base,
            thought,
            tool_calls: response.tool_calls.clone(),
            usage: response.usage,
        });
        let mut called = Vec::with_capacity(response.tool_calls.len());
        let allowed = settings.max_tool_calls_per_step as usize;
        for (j, call) in response.tool_calls.into_iter().enumerate() {
            let index = base + 1 + j as u32;
            called.push(tool_called(&cp, index, &call));
            // Every call the model made gets a result (providers refuse a next
            // request with an unanswered call); those past the bound are not run.
            let outcome = (j >= allowed).then(|| ToolOutcome {
                is_error: true,
                content: format!(
                    "Not run: at most {allowed} tool calls are run per step; call fewer tools at once."
                ),
                duration_ms: 0,
            });
            if let Some(o) = &outcome {
                // Streams see every call end, run or not.
                called.push(TurnEvent::ToolCompleted {
                    turn_id: cp.request.turn_id.clone(),
                    step: index,
                    tool: call.name.clone(),
                    is_error: true,
                    output: o.content.clone(),
                    duration_ms: 0,
                });
            }
            cp.steps.push(Step::Tool {
                index,
                call,
                outcome,
            });
        }
        // The step and its `tool.called` events are written together.
        deps.memory.save_checkpoint(&cp, &called).await?;
    }
}

fn tool_called(cp: &TurnCheckpoint, step: u32, call: &ToolCall) -> TurnEvent {
    TurnEvent::ToolCalled {
        turn_id: cp.request.turn_id.clone(),
        step,
        tool: call.name.clone(),
        arguments: call.arguments.clone(),
    }
}

fn started(cp: &TurnCheckpoint, resumed: bool) -> TurnEvent {
    TurnEvent::TurnStarted {
        turn_id: cp.request.turn_id.clone(),
        message_id: cp.request.message_id.clone(),
        resumed,
    }
}

/// The recorded steps as model messages: each model step is an assistant message
/// with its tool calls, each completed tool step an observation.
///
/// A call without a recorded result is left out of its assistant message, so
/// the model is never sent a call without its result (providers refuse that).
pub fn step_messages(steps: &[Step]) -> Vec<ChatMessage> {
    let answered: std::collections::HashSet<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Tool {
                call,
                outcome: Some(_),
                ..
            } => Some(call.id.as_str()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for s in steps {
        match s {
            Step::Model {
                thought,
                tool_calls,
                ..
            } => {
                let calls: Vec<ToolCall> = tool_calls
                    .iter()
                    .filter(|c| answered.contains(c.id.as_str()))
                    .cloned()
                    .collect();
                if calls.is_empty() && thought.as_deref().unwrap_or_default().is_empty() {
                    continue;
                }
                out.push(ChatMessage {
                    role: Role::Assistant,
                    content: thought.clone().unwrap_or_default(),
                    tool_calls: calls,
                    tool_call_id: None,
                    tool_name: None,
                    is_error: false,
                })
            }
            Step::Tool {
                call,
                outcome: Some(o),
                ..
            } => out.push(ChatMessage {
                role: Role::Tool,
                content: o.content.clone(),
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
                tool_name: Some(call.name.clone()),
                is_error: o.is_error,
            }),
            Step::Tool { outcome: None, .. } => {}
        }
    }
    out
}

/// Calls the model, forwarding streamed text as `answer.delta` events. The outer
/// error is a store failure; the inner one a model failure.
async fn call_model(
    deps: &AgentDeps,
    cp: &TurnCheckpoint,
    request: &ChatRequest,
    may_stream: bool,
) -> Result<Result<ChatResponse, ModelError>, StoreError> {
    let tenant = cp.request.tenant_id.to_string();
    let started = Instant::now();
    let provider = deps.model.provider();
    let model = request
        .options
        .model
        .clone()
        .or_else(|| deps.model.model_name().map(str::to_owned))
        .unwrap_or_else(|| provider.to_owned());
    let span = crate::trace::child(
        format!("chat {model}"),
        opentelemetry::trace::SpanKind::Client,
        vec![
            opentelemetry::KeyValue::new("gen_ai.operation.name", "chat"),
            opentelemetry::KeyValue::new("gen_ai.provider.name", provider),
            opentelemetry::KeyValue::new("gen_ai.request.model", model),
        ],
    );
    let report = |r: &Result<ChatResponse, ModelError>| {
        let usage = match r {
            Ok(ChatResponse { usage: Some(u), .. }) => vec![
                opentelemetry::KeyValue::new("gen_ai.usage.input_tokens", u.input_tokens as i64),
                opentelemetry::KeyValue::new("gen_ai.usage.output_tokens", u.output_tokens as i64),
            ],
            _ => Vec::new(),
        };
        crate::trace::end(&span, r.as_ref().err().map(|e| e.for_users().0), usage);
        crate::metered::model_called(provider, r, started.elapsed());
        deps.signals.emit(cairn_core::signals::Signal::ModelCall {
            tenant: tenant.clone(),
            failed: r.is_err(),
        });
    };
    use opentelemetry::context::FutureExt as _;
    if !deps.settings.stream || !may_stream {
        let r = deps
            .model
            .complete(request, None)
            .with_context(span.clone())
            .await;
        report(&r);
        return Ok(r);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let forwarder = {
        let events = deps.events.clone();
        let (tenant, conv, turn) = (
            cp.request.tenant_id.clone(),
            cp.request.conversation_id.clone(),
            cp.request.turn_id.clone(),
        );
        tokio::spawn(async move {
            while let Some(delta) = rx.recv().await {
                let e = TurnEvent::AnswerDelta {
                    turn_id: turn.clone(),
                    delta,
                };
                events.append(&tenant, &conv, &e).await?;
            }
            Ok::<(), StoreError>(())
        })
    };
    let result = deps
        .model
        .complete(request, Some(&tx))
        .with_context(span.clone())
        .await;
    report(&result);
    drop(tx);
    // Every delta is written before the answer that follows it.
    match forwarder.await {
        Ok(r) => r?,
        Err(e) => return Err(StoreError::Unavailable(format!("delta writer failed: {e}"))),
    }
    Ok(result)
}

/// `messages` with PII replaced by placeholders (text and tool-call
/// arguments), and the mapping that restores them.
fn mask_messages(
    guard: &crate::settings::PiiGuard,
    messages: &[ChatMessage],
) -> (Vec<ChatMessage>, Pseudonyms) {
    let mut p = Pseudonyms::new();
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let mut m = m.clone();
        let found = guard.scanner.scan(&m.content);
        if !found.is_empty() {
            m.content = p.mask(&m.content, &found);
        }
        for c in &mut m.tool_calls {
            let raw = c.arguments.to_string();
            let found = guard.scanner.scan(&raw);
            if !found.is_empty()
                && let Ok(v) = serde_json::from_str(&p.mask(&raw, &found))
            {
                c.arguments = v;
            }
        }
        out.push(m);
    }
    (out, p)
}

/// Runs the tool call of step `i` and records its outcome. When `cancel` fires
/// first the step is left without one (the cancelled turn closes it).
async fn run_tool_step(
    deps: &AgentDeps,
    cp: &mut TurnCheckpoint,
    i: usize,
    restore: Option<&Pseudonyms>,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let Step::Tool { index, call, .. } = cp.steps[i].clone() else {
        return Ok(());
    };
    let turn = cp.request.turn_id.clone();
    let deadline = deps.settings.tool_timeout;
    let started = Instant::now();
    let span = crate::trace::child(
        format!("execute_tool {}", call.name),
        opentelemetry::trace::SpanKind::Internal,
        vec![
            opentelemetry::KeyValue::new("gen_ai.operation.name", "execute_tool"),
            opentelemetry::KeyValue::new("gen_ai.tool.name", call.name.clone()),
            opentelemetry::KeyValue::new("gen_ai.tool.call.id", call.id.clone()),
        ],
    );
    let profile = current_profile(deps, cp);
    let mut handoff = None;
    let allowed = profile.is_none_or(|p| {
        p.tools
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == &call.name))
    });
    let (is_error, content) = match deps.tools.get_for(&call.name, &cp.request.tenant_id) {
        _ if call.name == HANDOFF_TOOL && deps.routing.is_some() => {
            match handoff_target(deps, profile, &call.arguments) {
                Ok(to) => {
                    handoff = Some(TurnEvent::AgentHandoff {
                        turn_id: turn.clone(),
                        from: profile.map(|p| p.name.clone()).unwrap_or_default(),
                        to: to.clone(),
                        reason: call.arguments["reason"].as_str().map(str::to_owned),
                    });
                    (
                        false,
                        format!(
                            "The conversation is now handled by the `{to}` agent; continue as that agent."
                        ),
                    )
                }
                Err(e) => (true, e),
            }
        }
        Some(_) if !allowed => (
            true,
            format!(
                "The tool {} is not available to the `{}` agent.",
                call.name,
                profile.map(|p| p.name.as_str()).unwrap_or_default()
            ),
        ),
        None => (true, format!("There is no tool named {}.", call.name)),
        Some(tool) => {
            let ctx = ToolContext {
                knowledge_tags: profile
                    .map(|p| p.knowledge_tags.clone())
                    .unwrap_or_default(),
                traceparent: crate::trace::traceparent_of(&span),
                tenant_id: cp.request.tenant_id.clone(),
                user_id: cp.request.user_id.clone(),
                conversation_id: cp.request.conversation_id.clone(),
                idempotency_key: idempotency_key(&turn, index),
                deadline,
                cancel: cancel.clone(),
            };
            // The tool enforces its deadline itself (an MCP call is cancelled, and
            // progress may extend it up to a cap); this guard only stops a tool
            // that does not.
            let guard = tool.max_duration(deadline) + GUARD_MARGIN;
            // A tool allowed to see PII gets the values behind the placeholders.
            let arguments = match restore {
                Some(p) => serde_json::from_str(&p.restore(&call.arguments.to_string()))
                    .unwrap_or_else(|_| call.arguments.clone()),
                None => call.arguments.clone(),
            };
            // A cancelled tool gets a moment to stop by itself (an MCP server is
            // told), then the turn stops waiting.
            let stopped = async {
                cancel.cancelled().await;
                tokio::time::sleep(crate::cancel::TOOL_CANCEL_GRACE).await;
            };
            let ran = tokio::select! {
                r = tokio::time::timeout(guard, tool.call(arguments, &ctx)) => Some(r),
                () = stopped => None,
            };
            let Some(ran) = ran.filter(|r| !matches!(r, Ok(Err(ToolError::Cancelled)))) else {
                crate::trace::end(&span, Some("cancelled"), Vec::new());
                return Ok(());
            };
            match ran {
                Ok(Ok(out)) => (out.is_error, out.content),
                Ok(Err(e)) => (true, e.to_string()),
                Err(_) => (
                    true,
                    format!("The tool {} did not answer within {deadline:?}.", call.name),
                ),
            }
        }
    };
    crate::trace::end(&span, is_error.then_some("tool_error"), Vec::new());
    crate::metered::tool_called(&call.name, is_error, started.elapsed());
    let outcome = ToolOutcome {
        is_error,
        content,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    cp.steps[i] = Step::Tool {
        index,
        call: call.clone(),
        outcome: Some(outcome.clone()),
    };
    // The outcome and its `tool.completed` event are written together.
    let completed = TurnEvent::ToolCompleted {
        turn_id: turn,
        step: index,
        tool: call.name,
        is_error: outcome.is_error,
        output: outcome.content,
        duration_ms: outcome.duration_ms,
    };
    let mut events = vec![completed];
    events.extend(handoff);
    deps.memory.save_checkpoint(cp, &events).await
}

/// The profile for a new turn: pinned by an earlier handoff, or routed by the
/// message's intent.
async fn select_agent(
    r: &crate::settings::Routing,
    req: &TurnRequest,
    recent: &[Message],
) -> AgentChoice {
    let pinned = recent
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant && m.metadata.get("agent").is_some())
        .filter(|m| m.metadata["agent"]["pinned"] == true)
        .and_then(|m| m.metadata["agent"]["name"].as_str())
        .filter(|n| r.router.profile(n).is_some());
    if let Some(name) = req
        .agent
        .as_deref()
        .filter(|n| r.router.profile(n).is_some())
    {
        return AgentChoice {
            name: name.to_owned(),
            reason: "requested".into(),
            intent: None,
        };
    }
    if let Some(name) = pinned {
        return AgentChoice {
            name: name.to_owned(),
            reason: "handoff".into(),
            intent: None,
        };
    }
    let mut intent = None;
    if let Some(c) = r.classifier.as_ref().filter(|_| r.router.needs_intent()) {
        let input = AnalysisInput::customer(req.tenant_id.clone(), req.content.clone());
        match c.analyze(&input).await {
            Ok(a) => intent = Some(a.intent),
            Err(e) => {
                tracing::warn!(turn = %req.turn_id, error = %e, "intent for routing failed; the default agent answers")
            }
        }
    }
    let (p, why) = r.router.route(intent.as_deref(), req.tenant_id.as_str());
    AgentChoice {
        name: p.name.clone(),
        reason: why.as_str().into(),
        intent,
    }
}

/// The profile answering now: the last successful handoff of this turn, or
/// the one the turn started with.
pub(crate) fn current_agent(cp: &TurnCheckpoint) -> Option<(String, bool)> {
    let handed = cp.steps.iter().rev().find_map(|s| match s {
        Step::Tool {
            call,
            outcome: Some(o),
            ..
        } if call.name == HANDOFF_TOOL && !o.is_error => {
            call.arguments["agent"].as_str().map(str::to_owned)
        }
        _ => None,
    });
    match handed {
        Some(n) => Some((n, true)),
        None => cp
            .agent
            .as_ref()
            .map(|a| (a.name.clone(), a.reason == "handoff")),
    }
}

fn current_profile<'a>(deps: &'a AgentDeps, cp: &TurnCheckpoint) -> Option<&'a AgentProfile> {
    let r = deps.routing.as_ref()?;
    let (name, _) = current_agent(cp)?;
    r.router.profile(&name)
}

/// The tools a profile may use, plus `handoff` when there are other profiles.
fn tools_for(deps: &AgentDeps, profile: Option<&AgentProfile>, all: &[ToolSpec]) -> Vec<ToolSpec> {
    let Some(p) = profile else {
        return all.to_vec();
    };
    let mut out: Vec<ToolSpec> = all
        .iter()
        .filter(|t| {
            p.tools
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&t.name))
        })
        .cloned()
        .collect();
    if let Some(h) = deps
        .routing
        .as_ref()
        .and_then(|r| r.router.handoff_spec(&p.name))
    {
        out.push(h);
    }
    out
}

fn handoff_target(
    deps: &AgentDeps,
    from: Option<&AgentProfile>,
    args: &serde_json::Value,
) -> Result<String, String> {
    let to = args["agent"]
        .as_str()
        .ok_or("`agent` must name a profile")?;
    let r = deps.routing.as_ref().ok_or("there are no agent profiles")?;
    if r.router.profile(to).is_none() {
        return Err(format!("There is no agent named `{to}`."));
    }
    if from.is_some_and(|f| f.name == to) {
        return Err(format!("This conversation is already handled by `{to}`."));
    }
    Ok(to.to_owned())
}

/// Publishes the turn's figures for analytics (before the turn is marked
/// finished; a resumed turn republishes the same event id, a duplicate).
pub(crate) async fn publish_summary(deps: &AgentDeps, cp: &TurnCheckpoint, outcome: &str) {
    let Some(relay) = &deps.analytics else {
        return;
    };
    let tools = cp
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Tool {
                call,
                outcome: Some(o),
                ..
            } => Some(cairn_core::desk::ToolUse {
                tool: call.name.clone(),
                is_error: o.is_error,
            }),
            _ => None,
        })
        .collect();
    let summary = cairn_core::desk::TurnSummary {
        tenant_id: cp.request.tenant_id.clone(),
        conversation_id: cp.request.conversation_id.to_string(),
        turn_id: cp.request.turn_id.to_string(),
        first_turn: cp.first_turn,
        outcome: outcome.into(),
        latency_ms: (Utc::now() - cp.request.accepted_at)
            .num_milliseconds()
            .max(0) as u64,
        agent: current_agent(cp).map(|(n, _)| n),
        intent: cp.agent.as_ref().and_then(|a| a.intent.clone()),
        tools,
        usage: cp.usage,
        ended_at: Utc::now(),
    };
    let Ok(data) = serde_json::to_value(&summary) else {
        return;
    };
    let env = cairn_core::envelope::Envelope::with_id(
        cairn_core::envelope::derived_event_id(&format!("turn.summary/{}", cp.request.turn_id)),
        cairn_core::envelope::TURN_SUMMARY,
        cp.request.tenant_id.clone(),
        data,
    );
    let key = cp.request.conversation_id.to_string();
    if let Err(e) = relay.bus.publish(&relay.topic, &key, &env).await {
        tracing::warn!(turn = %cp.request.turn_id, error = %e, "turn summary not published; analytics miss this turn");
    }
}

/// The agent that answered, for the transcript (`metadata.agent`); `pinned`
/// carries a handoff to the next turns.
fn agent_metadata(cp: &TurnCheckpoint, metadata: &mut serde_json::Value) {
    if let Some((name, pinned)) = current_agent(cp) {
        if !metadata.is_object() {
            *metadata = json!({});
        }
        metadata["agent"] = json!({"name": name, "pinned": pinned});
    }
}

/// Slack given to a tool past its own longest duration before the turn stops waiting.
const GUARD_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Name of the knowledge tool whose passages become citations.
const SEARCH_TOOL: &str = "search_knowledge";
/// Words an answer must share with a passage for the passage to be cited.
const MIN_SHARED_WORDS: usize = 3;

fn words(text: &str) -> std::collections::HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 3)
        .map(str::to_lowercase)
        .collect()
}

/// Citations for an answer that came without any: the passages returned by this
/// turn's `search_knowledge` calls (`{"passages": [{document_id, title, section,
/// text}]}`) that share at least a few words with the answer.
pub fn citations_from_steps(answer: &str, steps: &[Step]) -> Vec<Citation> {
    let said = words(answer);
    let mut out: Vec<Citation> = Vec::new();
    for step in steps {
        let Step::Tool {
            call,
            outcome: Some(o),
            ..
        } = step
        else {
            continue;
        };
        if call.name != SEARCH_TOOL || o.is_error {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&o.content) else {
            continue;
        };
        for p in v["passages"].as_array().into_iter().flatten() {
            let text = p["text"].as_str().unwrap_or_default();
            let source = p["document_id"].as_str().unwrap_or_default();
            if source.is_empty() || words(text).intersection(&said).count() < MIN_SHARED_WORDS {
                continue;
            }
            if out.iter().any(|c| c.source == source) {
                continue;
            }
            out.push(Citation {
                source: source.to_owned(),
                title: p["title"].as_str().map(str::to_owned),
                section: p["section"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                snippet: text.chars().take(300).collect(),
            });
        }
    }
    out
}

async fn complete(
    deps: &AgentDeps,
    cp: TurnCheckpoint,
    mut response: ChatResponse,
) -> Result<(), StoreError> {
    if response.citations.is_empty() {
        response.citations = citations_from_steps(&response.content, &cp.steps);
    }
    let usage = (cp.usage != Usage::default()).then_some(cp.usage);
    let mut answer = Message::new(Role::Assistant, response.content.clone());
    answer.turn_id = Some(cp.request.turn_id.clone());
    answer.citations = response.citations.clone();
    answer.steps = cp.steps.clone();
    answer.usage = usage;
    answer.metadata = response.metadata.clone();
    agent_metadata(&cp, &mut answer.metadata);
    crate::approval::for_record(&cp, &mut answer.metadata);
    publish_summary(deps, &cp, "answered").await;
    let answered = json!({"message_id": answer.id, "content": response.content, "citations": response.citations});
    crate::webhook::publish(
        deps,
        &cp,
        "completed",
        &cp.request.message_id,
        Some(answered),
        None,
    )
    .await;
    let event = TurnEvent::AnswerCompleted {
        turn_id: cp.request.turn_id.clone(),
        message_id: answer.id.clone(),
        content: response.content,
        citations: response.citations,
        usage,
        // The event carries what the stored answer carries (the agent too).
        metadata: answer.metadata.clone(),
    };
    deps.memory
        .finish_turn(
            &cp.request.tenant_id,
            &cp.request.conversation_id,
            &cp.request.turn_id,
            Some(&answer),
            &event,
            cp.fence,
        )
        .await?;
    deps.signals.emit(cairn_core::signals::Signal::TurnEnded {
        tenant: cp.request.tenant_id.to_string(),
        failed: false,
    });
    // Per turn, so DEBUG: `cairn_turns_total` and the turn's events carry it.
    tracing::debug!(
        turn = %cp.request.turn_id,
        model_calls = cp.model_calls,
        input_tokens = cp.usage.input_tokens,
        output_tokens = cp.usage.output_tokens,
        "turn answered"
    );
    crate::metered::turn_ended(&cp, "completed");
    Ok(())
}

async fn fail(
    deps: &AgentDeps,
    cp: &TurnCheckpoint,
    code: &str,
    reason: String,
) -> Result<(), StoreError> {
    tracing::warn!(turn = %cp.request.turn_id, code, reason = %reason, "turn failed");
    crate::metered::turn_ended(cp, code);
    deps.signals.emit(cairn_core::signals::Signal::TurnEnded {
        tenant: cp.request.tenant_id.to_string(),
        failed: true,
    });
    if code == "turn_crashed" {
        deps.signals.emit(cairn_core::signals::Signal::TurnCrashed {
            tenant: cp.request.tenant_id.to_string(),
            conversation: cp.request.conversation_id.to_string(),
        });
    }
    let event = TurnEvent::TurnFailed {
        turn_id: cp.request.turn_id.clone(),
        code: code.to_owned(),
        reason: reason.clone(),
    };
    let mut record = Message::new(Role::Assistant, format!("The turn failed: {reason}"));
    record.turn_id = Some(cp.request.turn_id.clone());
    record.steps = cp.steps.clone();
    record.metadata = json!({ "turn_failed": { "code": code, "reason": reason } });
    agent_metadata(cp, &mut record.metadata);
    crate::approval::for_record(cp, &mut record.metadata);
    publish_summary(deps, cp, "failed").await;
    let error = json!({"code": code, "reason": reason});
    crate::webhook::publish(
        deps,
        cp,
        "failed",
        &cp.request.message_id,
        None,
        Some(error),
    )
    .await;
    deps.memory
        .finish_turn(
            &cp.request.tenant_id,
            &cp.request.conversation_id,
            &cp.request.turn_id,
            Some(&record),
            &event,
            cp.fence,
        )
        .await
        .map(|_| ())
}
