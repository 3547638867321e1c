//! `X-Request-Id`: echoed when the client sends a sane one, generated otherwise,
//! set on every response, and available to error bodies through a task-local.
//! The W3C `traceparent` of the request is kept the same way (a valid incoming one,
//! else a new trace), so the events a request causes carry it onto the bus.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The header name.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
    static TRACEPARENT: String;
}

/// The W3C trace context of the request being handled (a fresh one outside a request).
pub fn traceparent() -> String {
    TRACEPARENT
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_traceparent())
}

/// A valid `traceparent`: version 00, non-zero 32-hex trace id and 16-hex parent id.
fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

fn http_span(method: &str, path: &str, incoming: Option<&str>) -> opentelemetry::Context {
    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
    let parent = cairn_actors::trace::remote_parent(incoming);
    let tracer = opentelemetry::global::tracer(cairn_actors::trace::SCOPE);
    let span = tracer
        .span_builder(method.to_owned())
        .with_kind(SpanKind::Server)
        .with_attributes([
            opentelemetry::KeyValue::new("http.request.method", method.to_owned()),
            opentelemetry::KeyValue::new("url.path", path.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

fn end_http_span(cx: &opentelemetry::Context, method: &str, resp: &Response) {
    use opentelemetry::trace::{Status, TraceContextExt};
    let span = cx.span();
    if !span.span_context().is_valid() {
        return;
    }
    let status = resp.status().as_u16();
    if let Some(route) = crate::metrics::route_of(resp) {
        span.update_name(format!("{method} {route}"));
        span.set_attribute(opentelemetry::KeyValue::new("http.route", route.to_owned()));
    }
    span.set_attribute(opentelemetry::KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
}

/// The id of the request being handled (empty outside a request).
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

fn acceptable(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Middleware: assigns the id and sets the response header.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(HEADER, value.clone());
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned);
    // The request's span (a no-op unless a tracer provider is installed); the
    // trace context handed to the bus is this span's, so the turn joins it.
    let method = req.method().as_str().to_owned();
    let cx = http_span(&method, req.uri().path(), incoming.as_deref());
    let trace = cairn_actors::trace::traceparent_of(&cx)
        .or(incoming)
        .unwrap_or_else(new_traceparent);
    let trace_id = trace.split('-').nth(1).unwrap_or_default().to_owned();
    let span = tracing::info_span!("request", request_id = %id, trace_id = %trace_id, method = %req.method(), path = %req.uri().path());
    let work = TRACEPARENT.scope(trace, next.run(req));
    let work = opentelemetry::context::FutureExt::with_context(work, cx.clone());
    let mut resp = REQUEST_ID
        .scope(id, tracing::Instrument::instrument(work, span))
        .await;
    end_http_span(&cx, &method, &resp);
    resp.headers_mut().insert(HEADER, value);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_trace_contexts_are_kept() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
        assert!(valid_traceparent(&new_traceparent()));
    }
}
