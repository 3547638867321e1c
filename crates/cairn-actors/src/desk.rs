//! The support desk's consumers.
//!
//! - The ticket enricher (consumer group `cairn-tickets` on `tickets`): stores
//!   each `ticket.submitted` if new (idempotent on tenant and ticket id), then
//!   enriches that revision — analysis (category = intent, sentiment, urgency,
//!   PII), the risk formula with the customer's history, an extractive summary,
//!   and a reply drafted by the agent with the knowledge base — publishes
//!   `ticket.enriched`, raises the high-risk alert (once per ticket), and stores
//!   the result with a compare-and-set. A revision superseded by an edit is
//!   dropped; a revision that keeps failing is stored `failed` with the reason.
//!   An edit's revision reaches the bus before the store (`PATCH` publishes
//!   first), so a revision newer than the stored ticket is retried until the
//!   store catches up, and stored from the event after `tickets.edit_wait`.
//! - The analytics consumer (group `cairn-analytics` on `user_events`,
//!   `conversation_events` and `tickets`): folds events into counter updates
//!   ([`cairn_desk::analytics::fold`]) and applies each batch at once, once per
//!   event, before committing the offsets.

use crate::bridge::{ALERTS_KEY, Consuming, MAX_RETRY_DELAY, publish_until_durable};
use crate::settings::AgentDeps;
use crate::turn::{citations_from_steps, step_messages};
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::desk::*;
use cairn_core::desk_config::TicketsConfig;
use cairn_core::envelope::{Envelope, TICKET_ENRICHED, TICKET_SUBMITTED, derived_event_id};
use cairn_core::ports::{
    AnalysisInput, Analyzer, BusError, ChatMessage, ChatRequest, CounterStore, StoreError,
    TicketStore, TicketUpdate, ToolContext,
};
use cairn_core::{ConversationId, Step, ToolOutcome, UserId};
use chrono::Utc;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;

/// Consumer group of the ticket enricher.
pub const TICKETS_GROUP: &str = "cairn-tickets";
/// Consumer group of the analytics counters.
pub const ANALYTICS_GROUP: &str = "cairn-analytics";
/// The tool the reply drafter may use (read-only; no other tool runs for a draft).
const SEARCH_TOOL: &str = "search_knowledge";
/// The drafter's instructions.
const DRAFT_PROMPT: &str = "You draft a reply to a customer's support ticket for a support person to review and send. \
Search the knowledge base first and base the reply on what you find, citing it; say so plainly when it does not cover the question. \
Be brief, friendly and specific. Never promise refunds or changes the knowledge base does not describe.";

/// What the ticket enricher needs.
#[derive(Clone)]
pub struct TicketDeps {
    /// The tickets.
    pub tickets: Arc<dyn TicketStore>,
    /// Category, sentiment, urgency and PII.
    pub analyzer: Arc<dyn Analyzer>,
    /// The agent's model and tools (the drafter uses `search_knowledge` only).
    pub agent: AgentDeps,
    /// `[tickets]`.
    pub config: Arc<TicketsConfig>,
    /// True when high-risk tickets raise alerts.
    pub alerts_enabled: bool,
    /// Name of the model provider, for `suggested_reply.drafted_by`.
    pub drafter: String,
}

/// Why an enrichment attempt failed.
enum Problem {
    /// Worth another attempt later (a store or bus outage).
    Retry(String),
    /// This revision cannot be enriched (the reason is stored).
    Fail(String),
    /// The stored ticket is at an older revision: the edit that made this one
    /// is on the bus but not (yet) in the store.
    Behind,
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        Problem::Retry(e.to_string())
    }
}

/// Runs the ticket enricher until the bus closes.
pub async fn run_ticket_enricher(ctx: Consuming, deps: TicketDeps) {
    let consumer = ctx.subscribe(&ctx.topics.tickets, TICKETS_GROUP).await;
    let c = ctx.clone();
    crate::bridge::pump(consumer, ctx, TICKETS_GROUP, move |rec| {
        let (ctx, deps) = (c.clone(), deps.clone());
        Box::pin(async move {
            if rec.envelope.kind != TICKET_SUBMITTED {
                return;
            }
            let sub: TicketSubmission = match serde_json::from_value(rec.envelope.data.clone()) {
                Ok(s) => s,
                Err(e) => {
                    ctx.dlq(&rec, TICKETS_GROUP, "schema", &e.to_string(), 1)
                        .await;
                    return;
                }
            };
            if sub.tenant_id != rec.envelope.tenant_id {
                ctx.dlq(
                    &rec,
                    TICKETS_GROUP,
                    "schema",
                    "data.tenant_id differs from the envelope's tenant",
                    1,
                )
                .await;
                return;
            }
            handle_submission(&ctx, &deps, sub).await;
        })
    })
    .await;
}

/// Stores and enriches one submission, retrying outages; gives up on the
/// revision (stored `failed`) after `tickets.max_attempts` failed enrichments.
async fn handle_submission(ctx: &Consuming, deps: &TicketDeps, mut sub: TicketSubmission) {
    // A producer writing to the topic directly may name any channel: analytics
    // stay bounded by mapping unknown ones to `other`.
    if !deps.config.channels.contains(&sub.channel) {
        sub.channel = "other".into();
    }
    let mut attempts = 0;
    let mut delay = Duration::from_millis(100);
    let mut behind_since: Option<std::time::Instant> = None;
    loop {
        match enrich_revision(ctx, deps, &sub).await {
            Ok(()) => return,
            Err(Problem::Behind) => {
                let since = *behind_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= deps.config.edit_wait {
                    // The request that published this edit died before storing it.
                    match store_revision(deps, &sub).await {
                        Ok(()) => {
                            tracing::warn!(ticket = %sub.ticket_id, revision = sub.revision, "an edit was not stored within tickets.edit_wait; stored it from the event");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(ticket = %sub.ticket_id, error = %e, "ticket edit not stored yet; retrying");
                        }
                    }
                }
            }
            Err(Problem::Retry(e)) => {
                tracing::warn!(ticket = %sub.ticket_id, error = %e, "ticket not enriched yet; retrying");
            }
            Err(Problem::Fail(reason)) => {
                attempts += 1;
                if attempts >= deps.config.max_attempts {
                    tracing::warn!(ticket = %sub.ticket_id, reason = %reason, "ticket enrichment failed");
                    mark_failed(ctx, deps, &sub, &reason).await;
                    return;
                }
                tracing::info!(ticket = %sub.ticket_id, attempt = attempts, reason = %reason, "ticket enrichment attempt failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

async fn enrich_revision(
    ctx: &Consuming,
    deps: &TicketDeps,
    sub: &TicketSubmission,
) -> Result<(), Problem> {
    let store = &deps.tickets;
    let ticket = match store.create_ticket(&Ticket::from_submission(sub)).await? {
        None => Ticket::from_submission(sub),
        Some(existing) => existing,
    };
    if ticket.revision < sub.revision {
        return Err(Problem::Behind);
    }
    if ticket.revision > sub.revision
        || (ticket.enriched_revision >= sub.revision
            && ticket.enrichment != EnrichmentState::Pending)
    {
        // Superseded by an edit, or already done (a redelivery).
        return Ok(());
    }
    let text = format!("{}\n\n{}", ticket.subject, ticket.body);
    let text: String = text.chars().take(deps.config.max_body_chars).collect();
    let analysis = deps
        .analyzer
        .analyze(&AnalysisInput::customer(
            ticket.tenant_id.clone(),
            text.clone(),
        ))
        .await
        .map_err(|e| Problem::Fail(format!("analysis_failed: {e}")))?;
    // The summary is written from the text with its PII redacted: it shows in
    // listings and alerts, where the body's personal data should not.
    let redacted = cairn_core::insights::redact(&text, &analysis.pii.entities);
    let summary = match redacted.split_once("\n\n") {
        Some((subject, body)) => cairn_desk::summary::summarize(subject, body),
        None => cairn_desk::summary::summarize(&redacted, ""),
    };
    let history = customer_history(deps, &ticket).await?;
    let (risk, factors) = cairn_desk::risk::score(
        &analysis,
        ticket.priority,
        history,
        &deps.config.risk_weights,
    );
    let reply = draft_reply(deps, &ticket).await.map_err(Problem::Fail)?;
    let high = risk >= deps.config.risk_alert_threshold;

    // Analytics and the alert first: a crash before the ticket is stored
    // repeats them with the same ids (duplicates their consumers drop).
    let enriched = TicketEnriched {
        tenant_id: ticket.tenant_id.clone(),
        ticket_id: ticket.ticket_id.clone(),
        revision: ticket.revision,
        state: EnrichmentState::Enriched,
        category: Some(analysis.intent.clone()),
        sentiment: Some(analysis.sentiment.label.as_str().to_owned()),
        risk: Some(risk),
        high_risk: high,
        created_at: ticket.created_at,
    };
    publish_enriched(ctx, &enriched).await;
    if high && !ticket.risk_alerted && deps.alerts_enabled {
        raise_risk_alert(ctx, deps, &ticket, risk, &analysis.intent, &summary).await;
    }

    let mut current = ticket;
    loop {
        let mut next = current.clone();
        next.category = Some(analysis.intent.clone());
        next.sentiment = Some(analysis.sentiment.label.as_str().to_owned());
        next.urgency = Some(analysis.urgency.as_str().to_owned());
        next.risk = Some(risk);
        next.risk_factors = Some(factors);
        next.pii_types = {
            let mut t: Vec<String> = analysis
                .pii
                .entities
                .iter()
                .map(|e| e.kind.clone())
                .collect();
            t.sort();
            t.dedup();
            t
        };
        next.summary = Some(summary.clone());
        next.suggested_reply = Some(reply.clone());
        next.enrichment = EnrichmentState::Enriched;
        next.failure_reason = None;
        next.enriched_revision = next.revision;
        next.risk_alerted = next.risk_alerted || (high && deps.alerts_enabled);
        next.version = current.version + 1;
        next.updated_at = Utc::now();
        match store.update_ticket(&next, current.version).await? {
            TicketUpdate::Updated => {
                tracing::info!(ticket = %next.ticket_id, risk, category = %analysis.intent, "ticket enriched");
                return Ok(());
            }
            TicketUpdate::NotFound => return Ok(()),
            TicketUpdate::Conflict(now) => {
                // A PATCH changed status, assignee or tags meanwhile: apply on
                // top of it, unless it edited the text (a newer revision).
                if now.revision != sub.revision {
                    return Ok(());
                }
                current = *now;
            }
        }
    }
}

/// Stores the edit `sub` carries over an older stored revision, as the `PATCH`
/// that published it would have (compare-and-set; a newer revision wins).
async fn store_revision(deps: &TicketDeps, sub: &TicketSubmission) -> Result<(), StoreError> {
    let store = &deps.tickets;
    loop {
        let Some(current) = store.get_ticket(&sub.tenant_id, &sub.ticket_id).await? else {
            // Deleted meanwhile, or never stored: the next attempt creates it.
            return Ok(());
        };
        if current.revision >= sub.revision {
            return Ok(());
        }
        let mut next = current.clone();
        next.subject = sub.subject.clone();
        next.body = sub.body.clone();
        next.priority = sub.priority;
        next.start_revision(sub.revision);
        next.version = current.version + 1;
        next.updated_at = Utc::now();
        match store.update_ticket(&next, current.version).await? {
            TicketUpdate::Updated | TicketUpdate::NotFound => return Ok(()),
            TicketUpdate::Conflict(_) => continue,
        }
    }
}

/// The customer's other tickets in `tickets.history_window` (read from the
/// customer's own index, at most 50 looked at).
async fn customer_history(deps: &TicketDeps, t: &Ticket) -> Result<usize, StoreError> {
    let window = chrono::Duration::from_std(deps.config.history_window)
        .unwrap_or(chrono::Duration::days(30));
    let mut q = TicketQuery::new(t.tenant_id.clone(), 50);
    q.customer_id = Some(t.customer_id.clone());
    q.created_from = Some(t.created_at - window);
    q.max_scan = 50;
    let page = deps.tickets.list_tickets(&q).await?;
    Ok(page
        .items
        .iter()
        .filter(|o| o.ticket_id != t.ticket_id)
        .count())
}

/// The agent drafts a reply: the configured model with the knowledge base as
/// its only tool (offline: the extractive planner quotes and cites passages).
async fn draft_reply(deps: &TicketDeps, t: &Ticket) -> Result<SuggestedReply, String> {
    let agent = &deps.agent;
    let tools: Vec<_> = agent
        .tools
        .specs_for(&t.tenant_id)
        .into_iter()
        .filter(|s| s.name == SEARCH_TOOL)
        .collect();
    let question = ChatMessage::text(
        cairn_core::Role::User,
        format!("{}\n\n{}", t.subject, t.body),
    );
    let mut steps: Vec<Step> = Vec::new();
    let user = UserId::parse("cairn-tickets").map_err(|e| e.to_string())?;
    for _ in 0..deps.config.reply_max_steps {
        let mut messages = vec![question.clone()];
        messages.extend(step_messages(&steps));
        let request = ChatRequest {
            system: DRAFT_PROMPT.into(),
            messages,
            tools: tools.clone(),
            options: Default::default(),
        };
        let response = agent.model.complete(&request, None).await.map_err(|e| {
            tracing::warn!(ticket = %t.ticket_id, error = %e, "reply draft: model call failed");
            format!("reply_draft_failed: {}", e.for_users().0)
        })?;
        if response.tool_calls.is_empty() {
            let citations = if response.citations.is_empty() {
                citations_from_steps(&response.content, &steps)
            } else {
                response.citations
            };
            return Ok(SuggestedReply {
                text: response.content,
                citations,
                drafted_by: deps.drafter.clone(),
            });
        }
        let base = steps.len() as u32;
        steps.push(Step::Model {
            index: base,
            thought: (!response.content.is_empty()).then(|| response.content.clone()),
            tool_calls: response.tool_calls.clone(),
            usage: response.usage,
        });
        for (j, call) in response.tool_calls.into_iter().enumerate() {
            let started = std::time::Instant::now();
            let (is_error, content) = match agent.tools.get_for(&call.name, &t.tenant_id) {
                Some(tool) if call.name == SEARCH_TOOL => {
                    let ctx = ToolContext {
                        tenant_id: t.tenant_id.clone(),
                        user_id: user.clone(),
                        conversation_id: ConversationId::generate(),
                        idempotency_key: format!("ticket:{}:{}:{j}", t.ticket_id, t.revision),
                        deadline: agent.settings.tool_timeout,
                        knowledge_tags: Vec::new(),
                        traceparent: None,
                        cancel: Default::default(),
                    };
                    match tokio::time::timeout(
                        agent.settings.tool_timeout,
                        tool.call(call.arguments.clone(), &ctx),
                    )
                    .await
                    {
                        Ok(Ok(o)) => (o.is_error, o.content),
                        Ok(Err(e)) => (true, e.to_string()),
                        Err(_) => (true, "The search did not answer in time.".into()),
                    }
                }
                _ => (
                    true,
                    format!("Only {SEARCH_TOOL} is available while drafting a reply."),
                ),
            };
            steps.push(Step::Tool {
                index: base + 1 + j as u32,
                call,
                outcome: Some(ToolOutcome {
                    is_error,
                    content,
                    duration_ms: started.elapsed().as_millis() as u64,
                }),
            });
        }
    }
    Err(format!(
        "reply_draft_failed: no draft within {} model calls (tickets.reply_max_steps)",
        deps.config.reply_max_steps
    ))
}

async fn publish_enriched(ctx: &Consuming, e: &TicketEnriched) {
    let Ok(data) = serde_json::to_value(e) else {
        return;
    };
    let env = Envelope::with_id(
        derived_event_id(&format!(
            "ticket.enriched/{}/{}/{}/{}",
            e.tenant_id,
            e.ticket_id,
            e.revision,
            e.state.as_str()
        )),
        TICKET_ENRICHED,
        e.tenant_id.clone(),
        data,
    );
    publish_until_durable(
        ctx.bus.as_ref(),
        &ctx.topics.tickets,
        &e.ticket_id,
        &env,
        &[],
    )
    .await;
}

async fn raise_risk_alert(
    ctx: &Consuming,
    deps: &TicketDeps,
    t: &Ticket,
    risk: f64,
    category: &str,
    summary: &str,
) {
    let mut alert = Alert::firing(
        "TicketHighRisk",
        t.tenant_id.as_str(),
        &deps.config.risk_alert_severity,
        AlertSource::Tickets,
    )
    .label("ticket", &t.ticket_id)
    .label("category", category)
    .annotation(
        "summary",
        format!(
            "Ticket {} has risk {risk:.2} (tickets.risk_alert_threshold = {})",
            t.ticket_id, deps.config.risk_alert_threshold
        ),
    )
    .annotation("description", summary.to_owned());
    alert.starts_at = t.created_at;
    match crate::runtime::alert_envelope(&alert, None) {
        Ok(mut env) => {
            env.event_id =
                derived_event_id(&format!("ticket.alert/{}/{}", t.tenant_id, t.ticket_id));
            publish_until_durable(ctx.bus.as_ref(), &ctx.topics.alerts, ALERTS_KEY, &env, &[])
                .await;
            tracing::info!(ticket = %t.ticket_id, risk, "high-risk ticket alert raised");
        }
        Err(e) => tracing::error!(error = %e, "cannot build the ticket alert"),
    }
}

async fn mark_failed(ctx: &Consuming, deps: &TicketDeps, sub: &TicketSubmission, reason: &str) {
    let created = Ticket::from_submission(sub).created_at;
    publish_enriched(
        ctx,
        &TicketEnriched {
            tenant_id: sub.tenant_id.clone(),
            ticket_id: sub.ticket_id.clone(),
            revision: sub.revision,
            state: EnrichmentState::Failed,
            category: None,
            sentiment: None,
            risk: None,
            high_risk: false,
            created_at: created,
        },
    )
    .await;
    let mut delay = Duration::from_millis(100);
    loop {
        let current = match deps
            .tickets
            .get_ticket(&sub.tenant_id, &sub.ticket_id)
            .await
        {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the failed enrichment; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        };
        if current.revision != sub.revision {
            return;
        }
        let mut next = current.clone();
        next.enrichment = EnrichmentState::Failed;
        next.failure_reason = Some(reason.to_owned());
        next.enriched_revision = sub.revision;
        next.version = current.version + 1;
        next.updated_at = Utc::now();
        match deps.tickets.update_ticket(&next, current.version).await {
            Ok(TicketUpdate::Updated | TicketUpdate::NotFound) => return,
            Ok(TicketUpdate::Conflict(_)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the failed enrichment; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// Runs the analytics consumer of `topic` until the bus closes.
pub async fn run_analytics(
    ctx: Consuming,
    topic: String,
    counters: Arc<dyn CounterStore>,
    batch: usize,
    dedup_ttl: Duration,
) {
    let mut consumer = ctx.subscribe(&topic, ANALYTICS_GROUP).await;
    loop {
        let first = match consumer.next().await {
            Err(BusError::Closed) => return,
            r => r,
        };
        let mut records = vec![first];
        while records.len() < batch.max(1) {
            match consumer.next().now_or_never() {
                Some(r) => records.push(r),
                None => break,
            }
        }
        let mut updates = Vec::new();
        let mut last: Vec<(u32, u64)> = Vec::new();
        let mut closed = false;
        for r in records {
            let at = match r {
                Ok(rec) => {
                    updates.extend(cairn_desk::analytics::fold(&rec.envelope));
                    (rec.partition, rec.offset)
                }
                // Refused records go to the DLQ through the other groups;
                // analytics only step over them.
                Err(BusError::Undecodable {
                    partition, offset, ..
                }) => (partition, offset),
                Err(BusError::Closed) => {
                    closed = true;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, topic = %topic, "bus read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match last.iter_mut().find(|(p, _)| *p == at.0) {
                Some(slot) => slot.1 = slot.1.max(at.1),
                None => last.push(at),
            }
        }
        let mut delay = Duration::from_millis(100);
        while let Err(e) = counters.apply_counters(&updates, dedup_ttl).await {
            tracing::warn!(error = %e, "analytics counters not stored; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
        for (p, o) in last {
            while let Err(e) = consumer.commit(p, o).await {
                tracing::warn!(error = %e, "analytics offset not committed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if closed {
            return;
        }
    }
}
