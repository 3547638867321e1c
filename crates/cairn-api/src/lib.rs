//! The HTTP API (axum): routes, auth, error contract, streaming.
