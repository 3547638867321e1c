//! The Qdrant server adapter against the shared VectorStore conformance suite.
//! No Qdrant server can be installed on the CI machines, so these cases run only
//! when `QDRANT_URL` (gRPC, e.g. `http://127.0.0.1:6334`) is set, and print that
//! they were skipped otherwise. Each case uses a fresh collection.

#![allow(clippy::unwrap_used)]

use cairn_retrieval::conformance::DIM;
use cairn_retrieval::{QdrantServerStore, vector_store_conformance};

async fn fresh() -> Option<QdrantServerStore> {
    let url = std::env::var("QDRANT_URL").ok()?;
    let api_key = std::env::var("QDRANT_API_KEY").ok();
    let collection = format!("cairn_test_{}", uuid::Uuid::new_v4().simple());
    Some(
        QdrantServerStore::connect(&url, api_key, &collection, Some(DIM))
            .await
            .expect("the Qdrant server at QDRANT_URL answers"),
    )
}

mod conformance {
    use super::*;
    vector_store_conformance!(optional fresh().await);
}
