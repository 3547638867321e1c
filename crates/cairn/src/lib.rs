//! The `cairn` binary's library half: the composition root that turns a
//! [`Config`](cairn_core::config::Config) into a running service, shared by the
//! CLI (`main.rs`), the load generator (`bin/loadgen.rs`) and the end-to-end tests.
//!
//! - [`app`]: picks an adapter for each port (embedded by default; Redis when
//!   `redis.url` is set; the configured LLM), starts the runtime, builds the router.
//! - [`secret`]: the JWT secret — configured, from an environment variable, or
//!   generated once in the data dir for development.
//! - [`builtin_tools`]: tools every conversation gets.
//! - [`datadir`]: the data dir made private (0700, files 0600).
//! - [`alerts_cli`]: `cairn alerts …` against a running server.
//! - [`telemetry`]: the OpenTelemetry tracer provider (OTLP/HTTP), when configured.
//! - [`ingest`]: `cairn ingest` / `cairn search` over the embedded knowledge base.

pub mod alerts_cli;
pub mod app;
pub mod builtin_tools;
pub mod datadir;
pub mod ingest;
pub mod insights_eval;
pub mod secret;

/// Resident memory in MB of process `pid` (this process when `None`), from
/// `/proc`; 0 where it cannot be read. Used by the benchmarks.
pub fn rss_mb(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/status".to_owned(),
        |p| format!("/proc/{p}/status"),
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
pub mod telemetry;
