//! OpenTelemetry spans of a turn, through the `opentelemetry` API (a no-op until
//! the server installs a tracer provider): the turn (`invoke_agent`), each model
//! call (`chat {model}`) and each tool call (`execute_tool {tool}`), with the
//! GenAI semantic-convention attributes. The turn's span continues the trace of
//! the request that caused it (the `traceparent` the envelope carried over the
//! bus); model and tool spans are its children through the context the turn
//! runs in.

use cairn_core::TurnRequest;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use std::collections::HashMap;

/// The instrumentation scope of Cairn's spans.
pub const SCOPE: &str = "cairn";

/// Reads a remote parent from a `traceparent` value (an empty context for none).
pub fn remote_parent(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent else {
        return Context::new();
    };
    let carrier: HashMap<String, String> = [("traceparent".to_owned(), tp.to_owned())].into();
    global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// The context a turn runs in: a span `invoke_agent` child of the request's
/// trace context.
pub fn turn_context(request: &TurnRequest) -> Context {
    let parent = remote_parent(request.traceparent.as_deref());
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder("invoke_agent cairn")
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new(
                "gen_ai.agent.name",
                request.agent.clone().unwrap_or_else(|| "cairn".into()),
            ),
            KeyValue::new(
                "gen_ai.conversation.id",
                request.conversation_id.to_string(),
            ),
            KeyValue::new("cairn.turn.id", request.turn_id.to_string()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// A child span of the current context, as a context to run the work in.
pub fn child(name: String, kind: SpanKind, attributes: Vec<KeyValue>) -> Context {
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start(&tracer);
    Context::current_with_span(span)
}

/// Ends the span of `cx`, marking it failed with `error` when given.
pub fn end(cx: &Context, error: Option<&str>, attributes: Vec<KeyValue>) {
    let span = cx.span();
    span.set_attributes(attributes);
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.type", e.to_owned()));
        span.set_status(Status::error(e.to_owned()));
    }
    span.end();
}

/// The `traceparent` of the current span (none when tracing is off).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Context::current())
}

/// The `traceparent` of `cx`'s span (none when tracing is off).
pub fn traceparent_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut carrier));
    carrier.remove("traceparent")
}
