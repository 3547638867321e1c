//! [`MeteredBus`]: any [`EventBus`] with Prometheus metrics — records published
//! per topic and outcome, records consumed per topic and group, records refused
//! on consume, and consumer lag in seconds (now minus the event's
//! `occurred_at`, as of the last record read).

use async_trait::async_trait;
use cairn_core::envelope::Envelope;
use cairn_core::ports::{Assignment, BusConsumer, BusError, BusRecord, EventBus};
use std::sync::Arc;

/// A bus that counts what passes through it.
pub struct MeteredBus(pub Arc<dyn EventBus>);

fn published(topic: &str, r: &Result<(), BusError>) {
    let outcome = if r.is_ok() { "ok" } else { "error" };
    metrics::counter!("cairn_bus_published_total", "topic" => topic.to_owned(), "outcome" => outcome)
        .increment(1);
}

#[async_trait]
impl EventBus for MeteredBus {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.0.ping().await
    }

    async fn publish(&self, topic: &str, key: &str, envelope: &Envelope) -> Result<(), BusError> {
        let r = self.0.publish(topic, key, envelope).await;
        published(topic, &r);
        r
    }

    async fn publish_with_headers(
        &self,
        topic: &str,
        key: &str,
        envelope: &Envelope,
        headers: &[(&str, String)],
    ) -> Result<(), BusError> {
        let r = self
            .0
            .publish_with_headers(topic, key, envelope, headers)
            .await;
        published(topic, &r);
        r
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        let inner = self.0.subscribe(topic, group).await?;
        Ok(Box::new(MeteredConsumer {
            inner,
            topic: topic.to_owned(),
            group: group.to_owned(),
        }))
    }
}

struct MeteredConsumer {
    inner: Box<dyn BusConsumer>,
    topic: String,
    group: String,
}

#[async_trait]
impl BusConsumer for MeteredConsumer {
    async fn next(&mut self) -> Result<BusRecord, BusError> {
        let r = self.inner.next().await;
        match &r {
            Ok(record) => {
                let labels = [("topic", self.topic.clone()), ("group", self.group.clone())];
                metrics::counter!("cairn_bus_consumed_total", &labels).increment(1);
                let lag = (chrono::Utc::now() - record.envelope.occurred_at)
                    .to_std()
                    .unwrap_or_default();
                metrics::gauge!("cairn_bus_consumer_lag_seconds", &labels).set(lag.as_secs_f64());
            }
            Err(BusError::Undecodable { class, .. }) => {
                metrics::counter!(
                    "cairn_bus_refused_total",
                    "topic" => self.topic.clone(), "class" => class.as_str()
                )
                .increment(1);
            }
            Err(_) => {}
        }
        r
    }

    async fn commit(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.inner.commit(partition, offset).await
    }

    fn assignment(&self) -> Option<tokio::sync::watch::Receiver<Assignment>> {
        self.inner.assignment()
    }
}
