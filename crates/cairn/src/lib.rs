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
pub mod telemetry;
