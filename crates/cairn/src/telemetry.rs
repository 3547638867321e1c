//! OpenTelemetry traces: an OTLP/HTTP (protobuf) span exporter with a batch
//! processor, the W3C trace-context propagator, and a parent-based ratio
//! sampler, installed as the process's global tracer provider when
//! `telemetry.otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_*` variables
//! name a receiver. The spans themselves come from `cairn-api` (the HTTP
//! request) and `cairn-actors` (turn, model call, tool call).

use cairn_core::gateway_config::TelemetryConfig;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};

/// The installed provider; flush it before exiting.
#[derive(Clone)]
pub struct Telemetry(SdkTracerProvider);

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(e) = self.0.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
        let _ = self.0.shutdown();
    }
}

/// Installs tracing when a receiver is configured; `None` otherwise.
pub fn install(
    config: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Telemetry>> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| env(v).is_some_and(|s| !s.is_empty()));
    if config.otlp_endpoint.is_none() && !from_env {
        return Ok(None);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_timeout(config.export_timeout)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Some(base) = &config.otlp_endpoint {
        builder = builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = builder
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry: cannot build the OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!("OpenTelemetry traces exported over OTLP/HTTP");
    Ok(Some(Telemetry(provider)))
}
