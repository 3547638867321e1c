//! The approval gate in front of each tool call (`[approvals]`).
//!
//! A call that matches a rule is not run: the turn records the approval in its
//! checkpoint together with an `approval.requested` event, then waits for the
//! first `approval.decided` event of that approval in the conversation's
//! stream, written by `POST /v1/conversations/{id}/approvals/{approval_id}`
//! (or the MCP `decide_approval` tool) on any replica, or by the turn itself
//! when the approval expires. The decision goes into the checkpoint before the
//! call runs, so a turn resumed after a crash neither asks again nor waits
//! again; an approved call runs with the turn's usual idempotency key
//! (`turn_id:step`). A rejection (or expiry) becomes the call's observation.

use crate::cancel::CancelWatch;
use crate::settings::AgentDeps;
use cairn_core::approvals::{Decision, PendingApproval, Verdict};
use cairn_core::ports::StoreError;
use cairn_core::*;
use chrono::Utc;
use futures::StreamExt;
use std::time::Duration;

/// The scope a user needs to decide approvals.
pub const APPROVER_SCOPE: &str = "approve";

/// How often a waiting turn looks whether the process is draining.
const DRAIN_CHECK: Duration = Duration::from_millis(250);

/// What the gate lets happen to a tool step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Run the call (no rule matched, or it was approved / edited).
    Run,
    /// Not run: the rejection (or expiry) is recorded as its observation.
    Decided,
    /// The turn was cancelled while it waited.
    Cancelled,
    /// The process is draining: leave the turn checkpointed for the next owner.
    Suspended,
}

/// Runs the gate for tool step `i` of the turn.
pub async fn gate(
    deps: &AgentDeps,
    cp: &mut TurnCheckpoint,
    i: usize,
    cancel: &CancelWatch,
) -> Result<Gate, StoreError> {
    let Step::Tool {
        index,
        call,
        outcome: None,
    } = &cp.steps[i]
    else {
        return Ok(Gate::Run);
    };
    let (index, call) = (*index, call.clone());
    let k = match cp.approvals.iter().position(|a| a.step == index) {
        Some(k) => k,
        None => {
            let rules = &deps.settings.approvals;
            let agent = crate::turn::current_agent(cp).map(|(name, _)| name);
            let tenant = cp.request.tenant_id.as_str();
            let Some(rule) = rules.rule_for(&call.name, &call.arguments, agent.as_deref(), tenant)
            else {
                return Ok(Gate::Run);
            };
            let expiry = rule.expires_after.unwrap_or(rules.default_expiry);
            let now = Utc::now();
            let (t, c) = (&cp.request.tenant_id, &cp.request.conversation_id);
            let approval = PendingApproval {
                id: uuid::Uuid::now_v7().to_string(),
                step: index,
                tool: call.name.clone(),
                arguments: call.arguments.clone(),
                reason: rule
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("calls to {} need a person's approval", call.name)),
                after_event: deps.events.last_event_id(t, c).await?,
                requested_at: now,
                expires_at: now
                    + chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::days(1)),
                decision: None,
            };
            let event = TurnEvent::ApprovalRequested {
                turn_id: cp.request.turn_id.clone(),
                approval_id: approval.id.clone(),
                step: index,
                tool: call.name.clone(),
                arguments: call.arguments.clone(),
                reason: approval.reason.clone(),
                approver_scope: APPROVER_SCOPE.into(),
                expires_at: approval.expires_at,
            };
            tracing::info!(turn = %cp.request.turn_id, approval = %approval.id, tool = %call.name, "tool call waits for approval");
            metrics::counter!("cairn_approvals_total", "outcome" => "requested").increment(1);
            cp.approvals.push(approval);
            deps.memory.save_checkpoint(cp, &[event]).await?;
            cp.approvals.len() - 1
        }
    };
    let decision = match cp.approvals[k].decision.clone() {
        Some(d) => d,
        None => match wait(deps, cp, &cp.approvals[k].clone(), cancel).await? {
            Waited::Decided(d) => {
                metrics::counter!("cairn_approvals_total", "outcome" => verdict(d.decision))
                    .increment(1);
                cp.approvals[k].decision = Some(d.clone());
                d
            }
            Waited::Cancelled => return Ok(Gate::Cancelled),
            Waited::Draining => return Ok(Gate::Suspended),
        },
    };
    apply(deps, cp, i, &decision).await
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "approved",
        Verdict::Reject => "rejected",
        Verdict::Edit => "edited",
        Verdict::Expired => "expired",
    }
}

/// Records the decision in the checkpoint and what it means for the step.
async fn apply(
    deps: &AgentDeps,
    cp: &mut TurnCheckpoint,
    i: usize,
    d: &Decision,
) -> Result<Gate, StoreError> {
    let Step::Tool { index, call, .. } = &mut cp.steps[i] else {
        return Ok(Gate::Run);
    };
    let index = *index;
    let observation = match d.decision {
        Verdict::Approve => None,
        Verdict::Edit => {
            if let Some(args) = d.arguments.clone().filter(serde_json::Value::is_object) {
                call.arguments = args;
            }
            None
        }
        Verdict::Reject => Some(format!(
            "Not run: {} rejected this call{}",
            d.by,
            d.comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        )),
        Verdict::Expired => {
            Some("Not run: nobody approved this call before its approval expired.".to_owned())
        }
    };
    let Some(content) = observation else {
        deps.memory.save_checkpoint(cp, &[]).await?;
        return Ok(Gate::Run);
    };
    let tool = call.name.clone();
    cp.steps[i] = match cp.steps[i].clone() {
        Step::Tool { index, call, .. } => Step::Tool {
            index,
            call,
            outcome: Some(ToolOutcome {
                is_error: true,
                content: content.clone(),
                duration_ms: 0,
            }),
        },
        other => other,
    };
    let completed = TurnEvent::ToolCompleted {
        turn_id: cp.request.turn_id.clone(),
        step: index,
        tool,
        is_error: true,
        output: content,
        duration_ms: 0,
    };
    deps.memory.save_checkpoint(cp, &[completed]).await?;
    Ok(Gate::Decided)
}

enum Waited {
    Decided(Decision),
    Cancelled,
    Draining,
}

fn decision_of(e: &StoredEvent, approval: &str) -> Option<Decision> {
    match &e.event {
        TurnEvent::ApprovalDecided {
            approval_id,
            decision,
            by,
            comment,
            arguments,
            ..
        } if approval_id == approval => Some(Decision {
            decision: *decision,
            by: by.clone(),
            at: e.at,
            comment: comment.clone(),
            arguments: arguments.clone(),
        }),
        _ => None,
    }
}

/// Waits for the first decision of `a` in the conversation's stream; writes
/// the expiry when it passes; raises the waiting alert once.
async fn wait(
    deps: &AgentDeps,
    cp: &TurnCheckpoint,
    a: &PendingApproval,
    cancel: &CancelWatch,
) -> Result<Waited, StoreError> {
    let (t, c) = (&cp.request.tenant_id, &cp.request.conversation_id);
    let until = |at: chrono::DateTime<Utc>| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    let expiry = tokio::time::sleep(until(a.expires_at));
    tokio::pin!(expiry);
    let alert_after = deps.settings.approvals.alert_after;
    let alert = tokio::time::sleep(if alert_after.is_zero() {
        Duration::from_secs(100 * 365 * 24 * 3600)
    } else {
        until(a.requested_at + chrono::Duration::from_std(alert_after).unwrap_or_default())
    });
    tokio::pin!(alert);
    let (mut expired, mut alerted) = (false, alert_after.is_zero());
    let mut drain = tokio::time::interval(DRAIN_CHECK);
    let mut after = a.after_event;
    loop {
        let mut events = deps.events.subscribe(t.clone(), c.clone(), after);
        loop {
            tokio::select! {
                biased;
                item = events.next() => match item {
                    Some(Ok(e)) => {
                        after = e.id;
                        if let Some(d) = decision_of(&e, &a.id) {
                            tracing::info!(turn = %cp.request.turn_id, approval = %a.id, decision = verdict(d.decision), by = %d.by, "approval decided");
                            return Ok(Waited::Decided(d));
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(approval = %a.id, error = %e, "lost the event stream while waiting for an approval; following it again");
                        break;
                    }
                    None => break,
                },
                () = cancel.token().cancelled() => return Ok(Waited::Cancelled),
                () = &mut expiry, if !expired => {
                    expired = true;
                    // The first decision in the stream counts: an approver's
                    // that came first wins over this one.
                    let event = TurnEvent::ApprovalDecided {
                        turn_id: cp.request.turn_id.clone(),
                        approval_id: a.id.clone(),
                        decision: Verdict::Expired,
                        by: "system".into(),
                        comment: None,
                        arguments: None,
                    };
                    deps.events.append(t, c, &event).await?;
                }
                () = &mut alert, if !alerted => {
                    alerted = true;
                    deps.signals.emit(cairn_core::signals::Signal::ApprovalWaiting {
                        tenant: t.to_string(),
                        conversation: c.to_string(),
                        tool: a.tool.clone(),
                    });
                }
                _ = drain.tick() => {
                    if deps.lifecycle.draining() {
                        return Ok(Waited::Draining);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The approvals of a turn for its transcript record (`metadata.approvals`).
pub fn for_record(cp: &TurnCheckpoint, metadata: &mut serde_json::Value) {
    if cp.approvals.is_empty() {
        return;
    }
    if !metadata.is_object() {
        *metadata = serde_json::json!({});
    }
    metadata["approvals"] = serde_json::to_value(&cp.approvals).unwrap_or_default();
}
