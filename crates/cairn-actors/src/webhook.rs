//! Turn webhooks: a message posted with `webhook` gets its turn's outcome
//! (`turn.completed`, `turn.failed` or `turn.cancelled`) POSTed there.
//!
//! The ending turn publishes a `turn.webhook` event on `conversation_events`
//! before it is marked finished, with an event id derived from the turn id, so
//! a turn resumed after a crash publishes a duplicate, never nothing
//! (at-least-once). [`run_webhooks`] consumes those events (consumer group
//! `cairn-webhooks`) and delivers each as Standard Webhooks do it — the event
//! id as `webhook-id` on every attempt, `webhook-timestamp`,
//! `webhook-signature: v1,<HMAC>` — retrying like the alert webhooks (5xx, 408,
//! 429, timeouts, connection errors; `Retry-After` honoured up to
//! `max_backoff`). A delivery refused for good, or out of attempts, goes to the
//! DLQ with its reason. Redirects are not followed.

use crate::bridge::Consuming;
use crate::settings::AgentDeps;
use cairn_alerts::notify::{SendError, refusal, retry_after, transport_class};
use cairn_core::config::TurnWebhooksConfig;
use cairn_core::envelope::{Envelope, TURN_WEBHOOK, derived_event_id};
use cairn_core::*;
use chrono::Utc;
use serde_json::{Value, json};
use std::sync::Arc;

/// The consumer group delivering turn webhooks.
pub const WEBHOOK_GROUP: &str = "cairn-webhooks";

/// Publishes the outcome of `cp`'s turn for its webhook, if it has one.
/// `status` is `completed`, `failed` or `cancelled`; `answer` / `error` the
/// outcome's details.
pub async fn publish(
    deps: &AgentDeps,
    cp: &TurnCheckpoint,
    status: &str,
    message_id: &MessageId,
    answer: Option<Value>,
    error: Option<Value>,
) {
    let (Some(url), Some(relay)) = (&cp.request.webhook, &deps.webhooks) else {
        return;
    };
    let usage = (cp.usage != Usage::default()).then_some(cp.usage);
    let body = json!({
        "type": format!("turn.{status}"),
        "timestamp": Utc::now(),
        "data": {
            "conversation_id": cp.request.conversation_id,
            "turn_id": cp.request.turn_id,
            "message_id": message_id,
            "status": status,
            "answer": answer,
            "error": error,
            "usage": usage,
        },
    });
    let env = Envelope::with_id(
        derived_event_id(&format!("turn.webhook/{}", cp.request.turn_id)),
        TURN_WEBHOOK,
        cp.request.tenant_id.clone(),
        json!({"url": url, "body": body}),
    );
    let key = cp.request.conversation_id.to_string();
    // Until durable: the turn's end waits, so that no ended turn lacks its
    // webhook (the bus being down delays the end, it does not lose the call).
    crate::bridge::publish_until_durable(relay.bus.as_ref(), &relay.topic, &key, &env, &[]).await;
}

/// Sends turn webhooks.
struct Sender {
    client: reqwest::Client,
    signer: Option<standardwebhooks::Webhook>,
    config: TurnWebhooksConfig,
}

impl Sender {
    async fn send(&self, id: &str, url: &str, body: &[u8]) -> Result<(), SendError> {
        let mut req = self
            .client
            .post(url)
            .header("webhook-id", id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("cairn/", env!("CARGO_PKG_VERSION")),
            );
        let ts = Utc::now().timestamp();
        req = req.header("webhook-timestamp", ts.to_string());
        if let Some(signer) = &self.signer {
            let sig = signer
                .sign(id, ts, body)
                .map_err(|_| SendError::Permanent {
                    reason: "cannot sign the body".into(),
                })?;
            req = req.header("webhook-signature", sig);
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| SendError::Retry {
                reason: transport_class(&e),
                after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, Utc::now()));
        let reason = format!("HTTP {}", status.as_u16());
        Err(refusal(status.as_u16(), reason, after))
    }

    /// Delivers one webhook; `Err` carries the reason and the attempts made.
    async fn deliver(&self, id: &str, url: &str, body: &[u8]) -> Result<u32, (String, u32)> {
        let d = &self.config.delivery;
        let mut delay = d.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send(id, url, body).await {
                Ok(()) => return Ok(attempt),
                Err(SendError::Permanent { reason }) => return Err((reason, attempt)),
                Err(SendError::Retry { reason, after }) => {
                    if attempt >= d.max_attempts.max(1) {
                        return Err((reason, attempt));
                    }
                    let wait = after.unwrap_or(delay).min(d.max_backoff);
                    tracing::info!(webhook_id = %id, attempt, reason = %reason, "turn webhook not delivered yet; retrying");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(d.max_backoff);
                }
            }
        }
    }
}

/// Runs the turn webhook consumer until the bus closes.
pub async fn run_webhooks(ctx: Consuming, config: TurnWebhooksConfig) {
    let signer = config
        .secret_env
        .as_deref()
        .and_then(|name| std::env::var(name).ok())
        .and_then(|secret| match standardwebhooks::Webhook::new(&secret) {
            Ok(w) => Some(w),
            Err(_) => {
                tracing::error!("turn_webhooks.secret_env does not hold a usable secret (whsec_…); webhooks go unsigned");
                None
            }
        });
    let client = match reqwest::Client::builder()
        .timeout(config.delivery.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; turn webhooks are off");
            return;
        }
    };
    let sender = Arc::new(Sender {
        client,
        signer,
        config,
    });
    let consumer = ctx
        .subscribe(&ctx.topics.conversation_events, WEBHOOK_GROUP)
        .await;
    let c = ctx.clone();
    crate::bridge::pump(consumer, ctx, WEBHOOK_GROUP, move |rec| {
        let (ctx, sender) = (c.clone(), sender.clone());
        Box::pin(async move {
            if rec.envelope.kind != TURN_WEBHOOK {
                return;
            }
            let d = &rec.envelope.data;
            let (Some(url), Some(body)) = (d["url"].as_str(), d.get("body")) else {
                ctx.dlq(&rec, WEBHOOK_GROUP, "schema", "no url or body", 1)
                    .await;
                return;
            };
            // The allow-list is checked again: the topic may carry what the API
            // never saw.
            let tenant = rec.envelope.tenant_id.as_str();
            if let Err(e) = sender.config.check(tenant, url) {
                ctx.dlq(&rec, WEBHOOK_GROUP, "refused", &e, 1).await;
                return;
            }
            let body = serde_json::to_vec(body).unwrap_or_default();
            let id = rec.envelope.event_id.clone();
            match sender.deliver(&id, url, &body).await {
                Ok(attempts) => {
                    metrics::counter!("cairn_turn_webhooks_total", "outcome" => "delivered")
                        .increment(1);
                    tracing::debug!(webhook_id = %id, attempts, "turn webhook delivered");
                }
                Err((reason, attempts)) => {
                    metrics::counter!("cairn_turn_webhooks_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(webhook_id = %id, attempts, reason = %reason, "turn webhook failed for good");
                    ctx.dlq(&rec, WEBHOOK_GROUP, "delivery", &reason, attempts)
                        .await;
                }
            }
        })
    })
    .await;
}
