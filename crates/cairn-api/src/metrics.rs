//! Prometheus metrics: the process-wide recorder (`metrics` facade, rendered by
//! `metrics-exporter-prometheus` without its own listener), the HTTP middleware,
//! and `GET /metrics` (optionally behind a bearer token, `metrics.bearer_token_env`).
//!
//! Other crates record through the `metrics` macros; every metric Cairn emits is
//! named `cairn_*` and listed in the README. Label values are bounded: routes are
//! the router's templates (`/v1/conversations/{id}`), never ids; tenants and users
//! are never labels.

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::gateway_config::RequestClass;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds (HTTP, turns, model and tool calls).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the process-wide recorder once and returns its handle. A process
/// that already has another recorder gets a detached one (its metrics are empty).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was installed already; /metrics stays empty");
            }
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cairn_http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "cairn_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route and method"
    );
    describe_counter!(
        "cairn_rate_limited_total",
        "Requests refused by rate limits, by class"
    );
    describe_gauge!("cairn_streams_open", "Open SSE and WebSocket streams");
    describe_gauge!(
        "cairn_mcp_breaker_open",
        "1 when an MCP server's breaker is open"
    );
}

/// Counts a request refused by a rate limit.
pub fn rate_limited(class: RequestClass) {
    metrics::counter!("cairn_rate_limited_total", "class" => class.as_str()).increment(1);
}

/// The route template of a matched request, passed to [`middleware`] on the
/// response (a `route_layer`: it runs only where a route matched).
#[derive(Clone)]
struct Route(String);

/// The route template a response was tagged with (by [`tag_route`]).
pub fn route_of(response: &Response) -> Option<&str> {
    response.extensions().get::<Route>().map(|r| r.0.as_str())
}

/// Tags the response with the route template that matched.
pub async fn tag_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| Route(p.as_str().to_owned()));
    let mut response = next.run(request).await;
    if let Some(r) = route {
        response.extensions_mut().insert(r);
    }
    response
}

/// Records every request by its route template (`unmatched` for unknown
/// routes), method and status.
pub async fn middleware(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<Route>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "cairn_http_requests_total",
        "route" => route.clone(), "method" => method.clone(), "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "cairn_http_request_duration_seconds",
        "route" => route, "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health", summary = "Prometheus metrics (text exposition)", responses((status = 200, description = "`text/plain; version=0.0.4`", body = serde_json::Value)), security(()))]
pub async fn render(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.settings.metrics_token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = sent.is_some_and(|s| {
            // Constant-time comparison: the token guards operational data.
            s.len() == expected.len()
                && s.bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return ApiError::new(
                ErrorCode::MissingToken,
                "send `Authorization: Bearer <metrics token>`",
            )
            .into_response();
        }
    }
    let Some(handle) = HANDLE.get() else {
        return ApiError::new(ErrorCode::NotFound, "metrics are off (metrics.enabled)")
            .into_response();
    };
    metrics::gauge!("cairn_streams_open").set(state.streams.open() as f64);
    if let Some(hub) = &state.tools {
        for (server, open) in hub.host().breakers() {
            metrics::gauge!("cairn_mcp_breaker_open", "server" => server)
                .set(f64::from(u8::from(open)));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Counts Cairn's signals (turn crashes, ingestion failures, DLQ records) and
/// passes them on to the alert rules.
pub struct SignalMetrics {
    /// The alert rules, when on.
    pub next: Option<std::sync::Arc<dyn cairn_core::signals::SignalSink>>,
}

impl cairn_core::signals::SignalSink for SignalMetrics {
    fn emit(&self, signal: cairn_core::signals::Signal) {
        use cairn_core::signals::Signal;
        match &signal {
            Signal::TurnCrashed { .. } => {
                metrics::counter!("cairn_turns_crashed_total").increment(1)
            }
            Signal::IngestionFailed { .. } => {
                metrics::counter!("cairn_ingestion_jobs_total", "outcome" => "failed").increment(1)
            }
            Signal::DlqRecord { topic, .. } => {
                metrics::counter!("cairn_dlq_records_total", "topic" => topic.clone()).increment(1)
            }
            Signal::TurnEnded { .. }
            | Signal::ModelCall { .. }
            | Signal::ApprovalWaiting { .. } => {}
        }
        if let Some(next) = &self.next {
            next.emit(signal);
        }
    }
}
