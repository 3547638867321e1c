//! Cairn's HTTP API (axum).
//!
//! Module map:
//! - [`error`]: the error contract — one table of stable codes and statuses;
//!   every non-2xx body is `{"error":{"code","message","details","request_id"}}`.
//! - [`request_id`]: `X-Request-Id` on every response (echoed or generated), and
//!   the id made available to error bodies.
//! - [`auth`]: JWT validation — HS256 with a secret, and RS/PS/ES/EdDSA with
//!   keys from the identity provider's JWKS ([`jwks`]), each key pinned to one
//!   algorithm; tenant, user and scopes from configurable claims — and token
//!   minting for `cairn token`.
//! - [`extract`]: JSON bodies and ids parsed into the error contract.
//! - [`conversations`], [`messages`], [`events`]: the `/v1` routes.
//! - [`approvals`]: listing and deciding the approvals a turn waits for.
//! - [`control`]: cancelling a turn, and what a message does while one runs
//!   (`if_busy`: enqueue, reject, interrupt, rollback).
//! - [`schedules`]: scheduled turns (`/v1/schedules`) and the scheduler.
//! - [`fork`]: forking a conversation at a message, and a turn's recorded steps.
//! - [`streams`]: open-stream limits per user and process, and the end of a
//!   stream when its token expires or its conversation is deleted.
//! - [`ws`]: WebSocket streams (`/v1/conversations/{id}/ws`, the seed path
//!   `/ws/conversations/{id}/stream`) and `POST /v1/ws-ticket`.
//! - [`search`]: `GET /v1/search` over the knowledge base.
//! - [`documents`]: `/v1/documents` upload, list, get with job status, delete.
//! - [`tools`]: `GET /v1/tools` and `POST /v1/admin/tools/reload`.
//! - [`alerts`]: `/v1/alerts` (raise, list, notification log, test) and `/v1/silences`.
//! - [`insights`]: `POST /v1/messages`, `POST /v1/analyze`,
//!   `GET /v1/conversations/{id}/insights`, analyses on transcript items, and
//!   redaction before the bus under `redact_store`.
//! - [`desk`]: `/v1/tickets`, `/v1/categories`, `/v1/sentiments`, answer
//!   feedback, `/v1/feedback/summary` and `/v1/analytics/*`.
//! - [`openai`]: the OpenAI-compatible facade (`/v1/chat/completions`,
//!   `/v1/models`) over the agent.
//! - [`mcp`]: Cairn as an MCP server at `/mcp` (`ask`, `search_knowledge`; JWT).
//! - [`limits`]: request rate limits per tenant and user (GCRA, in process or
//!   Redis) with `RateLimit-*` headers, and `GET /v1/usage` (token budgets).
//! - [`metrics`]: Prometheus `/metrics` and the HTTP request metrics.
//! - [`cors`]: CORS for the configured browser origins.
//! - [`health`]: `/health`, `/ready`, `/live`.
//! - [`console`]: the web console at `/console` (plain JS and CSS embedded in
//!   the binary, served with a strict Content-Security-Policy).
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers'
//!   annotations (`/openapi.json`) and the embedded reference page (`/docs`).
//! - [`router`]: assembles everything into one `axum::Router`, registering
//!   every route through the OpenAPI router so the document cannot drift.

pub mod alerts;
pub mod approvals;
pub mod auth;
pub mod console;
pub mod control;
pub mod conversations;
pub mod cors;
pub mod desk;
pub mod documents;
pub mod error;
pub mod events;
pub mod extract;
pub mod fork;
pub mod health;
pub mod insights;
pub mod jwks;
pub mod limits;
pub mod mcp;
pub mod messages;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod request_id;
pub mod router;
pub mod schedules;
pub mod search;
pub mod state;
pub mod streams;
pub mod tools;
pub mod ws;

pub use router::router;
pub use state::{ApiSettings, AppState};
