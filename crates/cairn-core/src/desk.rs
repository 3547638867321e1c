//! The support desk's shared types: tickets and their enrichment, the queries
//! the [`TicketStore`](crate::ports::TicketStore) answers, answer feedback, and
//! the counter updates analytics are kept in ([`crate::ports::CounterStore`]).
//!
//! Wire formats: a ticket submission travels as `ticket.submitted` on the
//! `tickets` topic (`schemas/events/ticket.submitted.v1.json`); its enrichment
//! as `ticket.enriched`; a turn's figures as `turn.summary`, a message's analysis
//! as `message.analysed` and answer feedback as `feedback.recorded` on
//! `conversation_events`. Analytics are folded from those events.

use crate::ids::TenantId;
use crate::{Citation, Usage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How urgent the submitter says a ticket is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Can wait.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Needs attention soon.
    High,
    /// Needs attention now.
    Urgent,
}

impl Priority {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

/// Where a ticket stands in the desk's workflow (set by people, `PATCH`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// New, not yet picked up.
    #[default]
    Open,
    /// Someone works on it.
    InProgress,
    /// Waiting for the customer.
    Waiting,
    /// Answered.
    Resolved,
    /// Done.
    Closed,
}

impl TicketStatus {
    /// Every status, for error messages.
    pub const ALL: [&'static str; 5] = ["open", "in_progress", "waiting", "resolved", "closed"];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Open => "open",
            TicketStatus::InProgress => "in_progress",
            TicketStatus::Waiting => "waiting",
            TicketStatus::Resolved => "resolved",
            TicketStatus::Closed => "closed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => TicketStatus::Open,
            "in_progress" => TicketStatus::InProgress,
            "waiting" => TicketStatus::Waiting,
            "resolved" => TicketStatus::Resolved,
            "closed" => TicketStatus::Closed,
            _ => return None,
        })
    }
}

/// Where a ticket's enrichment stands: `pending → enriched | failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentState {
    /// Accepted; enrichment has not finished (again, after an edit).
    #[default]
    Pending,
    /// Category, sentiment, risk, summary and suggested reply are set.
    Enriched,
    /// Enrichment gave up; `failure_reason` says why.
    Failed,
}

impl EnrichmentState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrichmentState::Pending => "pending",
            EnrichmentState::Enriched => "enriched",
            EnrichmentState::Failed => "failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => EnrichmentState::Pending,
            "enriched" => EnrichmentState::Enriched,
            "failed" => EnrichmentState::Failed,
            _ => return None,
        })
    }
}

/// A ticket as submitted: the `data` of a `ticket.submitted` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketSubmission {
    /// The ticket id (given by the caller, derived from `Idempotency-Key`, or
    /// generated).
    pub ticket_id: String,
    /// The tenant.
    pub tenant_id: TenantId,
    /// Subject line.
    pub subject: String,
    /// The customer's text.
    pub body: String,
    /// Where it came from (`email`, `chat`, `web`, …; `tickets.channels`).
    pub channel: String,
    /// Submitter's priority.
    #[serde(default)]
    pub priority: Priority,
    /// The customer (for history in the risk score).
    pub customer_id: String,
    /// Content revision this submission carries: 1 for a new ticket, bumped
    /// by every edit of subject or body.
    #[serde(default = "one")]
    pub revision: u64,
    /// When it was accepted.
    pub submitted_at: DateTime<Utc>,
}

fn one() -> u64 {
    1
}

/// The parts of the risk score, each in [0, 1], with the weights applied
/// (`cairn_desk::risk` documents the formula).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RiskFactors {
    /// From the analysis' urgency (and the submitter's priority).
    pub urgency: f64,
    /// From negative sentiment.
    pub sentiment: f64,
    /// From the customer's recent tickets.
    pub history: f64,
    /// From personal data exposed in the text.
    pub pii: f64,
}

/// A reply drafted by the agent for a support person to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuggestedReply {
    /// The draft.
    pub text: String,
    /// The knowledge it relied on.
    pub citations: Vec<Citation>,
    /// `offline` (the extractive planner) or the provider's name.
    pub drafted_by: String,
}

/// A ticket with its enrichment and workflow fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// The ticket id, unique per tenant.
    pub ticket_id: String,
    /// The tenant.
    pub tenant_id: TenantId,
    /// Subject line.
    pub subject: String,
    /// The customer's text.
    pub body: String,
    /// Where it came from.
    pub channel: String,
    /// Submitter's priority.
    pub priority: Priority,
    /// The customer.
    pub customer_id: String,
    /// Workflow status.
    pub status: TicketStatus,
    /// Who works on it.
    #[serde(default)]
    pub assignee: Option<String>,
    /// Free labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Enrichment state.
    pub enrichment: EnrichmentState,
    /// Why enrichment failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The intent taxonomy's category.
    #[serde(default)]
    pub category: Option<String>,
    /// `positive`, `neutral` or `negative`.
    #[serde(default)]
    pub sentiment: Option<String>,
    /// Risk in [0, 1].
    #[serde(default)]
    pub risk: Option<f64>,
    /// The parts of the risk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_factors: Option<RiskFactors>,
    /// Urgency from the analysis (`low` … `critical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
    /// Types of personal data found in the text (never the values).
    #[serde(default)]
    pub pii_types: Vec<String>,
    /// A short summary.
    #[serde(default)]
    pub summary: Option<String>,
    /// The agent's draft reply.
    #[serde(default)]
    pub suggested_reply: Option<SuggestedReply>,
    /// Content revision (bumped when subject or body change).
    pub revision: u64,
    /// The revision the enrichment fields belong to (0: none yet).
    #[serde(default)]
    pub enriched_revision: u64,
    /// Write version, for compare-and-set updates.
    pub version: u64,
    /// True once the high-risk alert was raised (it is raised once per ticket).
    #[serde(default)]
    pub risk_alerted: bool,
    /// When it was first accepted.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Ticket {
    /// A pending ticket from a submission.
    pub fn from_submission(s: &TicketSubmission) -> Self {
        Self {
            ticket_id: s.ticket_id.clone(),
            tenant_id: s.tenant_id.clone(),
            subject: s.subject.clone(),
            body: s.body.clone(),
            channel: s.channel.clone(),
            priority: s.priority,
            customer_id: s.customer_id.clone(),
            status: TicketStatus::Open,
            assignee: None,
            tags: Vec::new(),
            enrichment: EnrichmentState::Pending,
            failure_reason: None,
            category: None,
            sentiment: None,
            risk: None,
            risk_factors: None,
            urgency: None,
            pii_types: Vec::new(),
            summary: None,
            suggested_reply: None,
            revision: s.revision,
            enriched_revision: 0,
            version: 1,
            risk_alerted: false,
            created_at: s.submitted_at,
            updated_at: s.submitted_at,
        }
    }

    /// Makes this ticket `revision` (an edit of its text): pending enrichment
    /// again, without the last failure's reason.
    pub fn start_revision(&mut self, revision: u64) {
        self.revision = revision;
        self.enrichment = EnrichmentState::Pending;
        self.failure_reason = None;
    }

    /// The submission that (re-)enriches this ticket's current revision.
    pub fn submission(&self) -> TicketSubmission {
        TicketSubmission {
            ticket_id: self.ticket_id.clone(),
            tenant_id: self.tenant_id.clone(),
            subject: self.subject.clone(),
            body: self.body.clone(),
            channel: self.channel.clone(),
            priority: self.priority,
            customer_id: self.customer_id.clone(),
            revision: self.revision,
            submitted_at: self.updated_at,
        }
    }

    /// This ticket's key in `sort`'s index: keys sort bytewise in that order,
    /// and end with the ticket id so they are unique.
    pub fn sort_key(&self, sort: TicketSort) -> String {
        match sort {
            TicketSort::CreatedAt => {
                format!(
                    "{:015}:{}",
                    self.created_at.timestamp_millis().max(0),
                    self.ticket_id
                )
            }
            TicketSort::UpdatedAt => {
                format!(
                    "{:015}:{}",
                    self.updated_at.timestamp_millis().max(0),
                    self.ticket_id
                )
            }
            TicketSort::Risk => {
                // No risk yet sorts below every scored ticket.
                let r = self
                    .risk
                    .map(|r| (r.clamp(0.0, 1.0) * 1000.0).round() as u64 + 1)
                    .unwrap_or(0);
                format!(
                    "{r:04}:{:015}:{}",
                    self.created_at.timestamp_millis().max(0),
                    self.ticket_id
                )
            }
        }
    }

    /// Every index entry of this ticket: (index name, sort key). One per
    /// [`TicketSort`], plus the customer's own creation-order index (so a
    /// customer's history is read without walking the tenant's tickets).
    pub fn index_entries(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = TicketSort::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), self.sort_key(*s)))
            .collect();
        out.push((
            customer_index(&self.customer_id),
            self.sort_key(TicketSort::CreatedAt),
        ));
        out
    }

    /// True when the ticket passes every filter of `q` (paging aside).
    pub fn matches(&self, q: &TicketQuery) -> bool {
        if let Some(min) = q.risk_min
            && self.risk.is_none_or(|r| r < min)
        {
            return false;
        }
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        if !eq(&q.category, self.category.as_deref())
            || !eq(&q.sentiment, self.sentiment.as_deref())
            || !eq(&q.channel, Some(&self.channel))
            || !eq(&q.customer_id, Some(&self.customer_id))
            || !eq(&q.assignee, self.assignee.as_deref())
        {
            return false;
        }
        if let Some(s) = q.status
            && s != self.status
        {
            return false;
        }
        if let Some(e) = q.enrichment
            && e != self.enrichment
        {
            return false;
        }
        if let Some(t) = &q.tag
            && !self.tags.iter().any(|x| x == t)
        {
            return false;
        }
        if q.created_from.is_some_and(|f| self.created_at < f)
            || q.created_to.is_some_and(|t| self.created_at >= t)
        {
            return false;
        }
        if let Some(text) = &q.text {
            let needle = text.to_lowercase();
            if !self.subject.to_lowercase().contains(&needle)
                && !self.body.to_lowercase().contains(&needle)
            {
                return false;
            }
        }
        true
    }
}

/// The orders tickets can be listed in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketSort {
    /// By creation time (the default).
    #[default]
    CreatedAt,
    /// By last change.
    UpdatedAt,
    /// By risk, then creation time.
    Risk,
}

impl TicketSort {
    /// Every order.
    pub const ALL: [TicketSort; 3] = [
        TicketSort::CreatedAt,
        TicketSort::UpdatedAt,
        TicketSort::Risk,
    ];

    /// The index name.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketSort::CreatedAt => "created_at",
            TicketSort::UpdatedAt => "updated_at",
            TicketSort::Risk => "risk",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A page request over a tenant's tickets. Filters are evaluated in the store
/// while it walks the sort index; a page stops after `limit` matches or
/// `max_scan` tickets looked at, whichever comes first, and then carries a
/// cursor (so a filter matching nothing costs at most `max_scan` reads a page).
#[derive(Debug, Clone, PartialEq)]
pub struct TicketQuery {
    /// The tenant.
    pub tenant: TenantId,
    /// Only tickets with risk ≥ this.
    pub risk_min: Option<f64>,
    /// Only this category.
    pub category: Option<String>,
    /// Only this sentiment.
    pub sentiment: Option<String>,
    /// Only this workflow status.
    pub status: Option<TicketStatus>,
    /// Only this enrichment state.
    pub enrichment: Option<EnrichmentState>,
    /// Only this channel.
    pub channel: Option<String>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Only tickets with this tag.
    pub tag: Option<String>,
    /// Case-insensitive text in subject or body.
    pub text: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// The order.
    pub sort: TicketSort,
    /// Newest / highest first.
    pub descending: bool,
    /// Continue after this sort key (a previous page's `next_cursor`).
    pub cursor: Option<String>,
    /// At most this many tickets.
    pub limit: usize,
    /// At most this many tickets looked at.
    pub max_scan: usize,
}

impl TicketQuery {
    /// Every ticket of `tenant`, newest first, `limit` at a time.
    pub fn new(tenant: TenantId, limit: usize) -> Self {
        Self {
            tenant,
            risk_min: None,
            category: None,
            sentiment: None,
            status: None,
            enrichment: None,
            channel: None,
            customer_id: None,
            assignee: None,
            tag: None,
            text: None,
            created_from: None,
            created_to: None,
            sort: TicketSort::CreatedAt,
            descending: true,
            cursor: None,
            limit,
            max_scan: 5_000,
        }
    }
}

/// A page of tickets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketPage {
    /// The matching tickets, in order.
    pub items: Vec<Ticket>,
    /// Where the next page starts; `None` at the end of the index.
    pub next_cursor: Option<String>,
    /// How many tickets the store looked at.
    pub scanned: usize,
}

/// Feedback on one answer (the `data` of `feedback.recorded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The conversation.
    pub conversation_id: String,
    /// The answer (an assistant message id).
    pub message_id: String,
    /// Who gave it (one feedback per user per answer; a new one replaces it).
    pub user_id: String,
    /// 1–5.
    #[serde(default)]
    pub rating: Option<u8>,
    /// `up` or `down`.
    #[serde(default)]
    pub thumb: Option<Thumb>,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
    /// The agent profile that gave the answer.
    #[serde(default)]
    pub agent: Option<String>,
    /// The intent of the question it answered.
    #[serde(default)]
    pub intent: Option<String>,
    /// When it was given.
    pub recorded_at: DateTime<Utc>,
}

/// Thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thumb {
    /// Helpful.
    Up,
    /// Not helpful.
    Down,
}

/// What a turn did, for analytics (the `data` of `turn.summary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnSummary {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The conversation.
    pub conversation_id: String,
    /// The turn.
    pub turn_id: String,
    /// True for a conversation's first turn.
    pub first_turn: bool,
    /// `answered` or `failed`.
    pub outcome: String,
    /// From acceptance of the message to the end of the turn.
    pub latency_ms: u64,
    /// The agent profile that finished the turn.
    #[serde(default)]
    pub agent: Option<String>,
    /// The routed intent, when routing classified the message.
    #[serde(default)]
    pub intent: Option<String>,
    /// Tool calls: (tool, is_error).
    #[serde(default)]
    pub tools: Vec<ToolUse>,
    /// Model tokens.
    #[serde(default)]
    pub usage: Usage,
    /// When the turn ended.
    pub ended_at: DateTime<Utc>,
}

/// One tool call in a [`TurnSummary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    /// The tool.
    pub tool: String,
    /// Whether it reported an error.
    pub is_error: bool,
}

/// A message's analysis as analytics needs it (the `data` of `message.analysed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysedMessage {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The conversation.
    pub conversation_id: String,
    /// The message.
    pub message_id: String,
    /// The intent.
    pub intent: String,
    /// `positive`, `neutral`, `negative`.
    pub sentiment: String,
    /// `low` … `critical`.
    pub urgency: String,
    /// Whether it escalated.
    pub escalate: bool,
    /// When the message was accepted.
    pub accepted_at: DateTime<Utc>,
}

/// A ticket's enrichment as analytics needs it (the `data` of `ticket.enriched`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEnriched {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The ticket.
    pub ticket_id: String,
    /// The revision enriched.
    pub revision: u64,
    /// `enriched` or `failed`.
    pub state: EnrichmentState,
    /// The category.
    #[serde(default)]
    pub category: Option<String>,
    /// The sentiment.
    #[serde(default)]
    pub sentiment: Option<String>,
    /// The risk.
    #[serde(default)]
    pub risk: Option<f64>,
    /// Whether the risk is at or above `tickets.risk_alert_threshold`.
    #[serde(default)]
    pub high_risk: bool,
    /// When the ticket was created (analytics count it in that hour).
    pub created_at: DateTime<Utc>,
}

/// One counter change: `delta` to `field` in `bucket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Increment {
    /// `h2026120113` (an hour) or `d20261201` (a day), UTC.
    pub bucket: String,
    /// The counter, e.g. `messages` or `intent.billing`.
    pub field: String,
    /// The change.
    pub delta: i64,
}

/// A replaceable contribution: the counters hold exactly the latest version's
/// increments for `key` (a ticket's category after re-enrichment, a user's
/// feedback after a new rating). Older versions are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// E.g. `ticket:T-1` or `feedback:conv/msg/user`.
    pub key: String,
    /// Higher wins.
    pub version: u64,
    /// What this version contributes.
    pub increments: Vec<Increment>,
}

/// The counter changes of one bus event, applied at most once per `event_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    /// The event (dedup key).
    pub event_id: String,
    /// The tenant.
    pub tenant: TenantId,
    /// Plain increments.
    pub increments: Vec<Increment>,
    /// A replaceable contribution.
    pub slot: Option<Slot>,
}

/// The hour bucket of `t`.
pub fn hour_bucket(t: DateTime<Utc>) -> String {
    t.format("h%Y%m%d%H").to_string()
}

/// The day bucket of `t`.
pub fn day_bucket(t: DateTime<Utc>) -> String {
    t.format("d%Y%m%d").to_string()
}

impl TicketQuery {
    /// The part of the sort index a page walks: `(low, high)` bounds on sort
    /// keys, from the cursor (exclusive, on the side the walk comes from) and,
    /// for the creation order, the date range.
    pub fn key_range(&self) -> (std::ops::Bound<String>, std::ops::Bound<String>) {
        use std::ops::Bound::*;
        let ms = |t: DateTime<Utc>| format!("{:015}", t.timestamp_millis().max(0));
        let (mut lo, mut hi) = (Unbounded, Unbounded);
        if self.sort == TicketSort::CreatedAt {
            if let Some(f) = self.created_from {
                lo = Included(ms(f));
            }
            if let Some(t) = self.created_to {
                hi = Excluded(ms(t));
            }
        }
        if let Some(c) = &self.cursor {
            if self.descending {
                hi = match hi {
                    Excluded(h) if h <= *c => Excluded(h),
                    _ => Excluded(c.clone()),
                };
            } else {
                lo = match lo {
                    Included(l) if l > *c => Included(l),
                    _ => Excluded(c.clone()),
                };
            }
        }
        (lo, hi)
    }
}

/// The name of a customer's creation-order index.
pub fn customer_index(customer: &str) -> String {
    format!("customer/{customer}")
}

impl TicketQuery {
    /// The index a page walks: the customer's own index when the query asks
    /// for one customer in creation order, else the sort order's.
    pub fn index(&self) -> String {
        match (&self.customer_id, self.sort) {
            (Some(c), TicketSort::CreatedAt) => customer_index(c),
            _ => self.sort.as_str().to_owned(),
        }
    }
}

/// The ticket id at the end of an index key of `sort`.
pub fn id_of_sort_key(sort: TicketSort, key: &str) -> Option<&str> {
    let skip = match sort {
        TicketSort::CreatedAt | TicketSort::UpdatedAt => 16,
        TicketSort::Risk => 21,
    };
    key.get(skip..).filter(|s| !s.is_empty())
}

/// What a slot's new version changes: the old contribution taken away and the
/// new one added, or `None` when `new` is not newer than `old`.
pub fn slot_change(old: Option<&Slot>, new: &Slot) -> Option<Vec<Increment>> {
    if old.is_some_and(|o| o.version >= new.version) {
        return None;
    }
    let mut out: Vec<Increment> = old
        .map(|o| {
            o.increments
                .iter()
                .map(|i| Increment {
                    delta: -i.delta,
                    ..i.clone()
                })
                .collect()
        })
        .unwrap_or_default();
    out.extend(new.increments.iter().cloned());
    Some(out)
}
