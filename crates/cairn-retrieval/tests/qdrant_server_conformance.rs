//! The Qdrant server adapter against the shared VectorStore conformance suite,
//! on a real Qdrant server (release 1.18.3) that `scripts/test.sh` installs and
//! starts on loopback ports, passing its gRPC URL in `CAIRN_TEST_QDRANT_URL`
//! (`QDRANT_URL` and `QDRANT_API_KEY` point it at another server). A run without
//! either fails: the adapter must meet its server in CI. Each case uses a fresh
//! collection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_retrieval::conformance::DIM;
use cairn_retrieval::{QdrantServerStore, vector_store_conformance};

async fn fresh() -> QdrantServerStore {
    let url = std::env::var("QDRANT_URL")
        .or_else(|_| std::env::var("CAIRN_TEST_QDRANT_URL"))
        .expect(
            "CAIRN_TEST_QDRANT_URL is not set: run the tests with scripts/test.sh, which starts a Qdrant server",
        );
    let api_key = std::env::var("QDRANT_API_KEY").ok();
    let collection = format!("cairn_test_{}", uuid::Uuid::new_v4().simple());
    QdrantServerStore::connect(&url, api_key, &collection, Some(DIM))
        .await
        .expect("the Qdrant server at CAIRN_TEST_QDRANT_URL answers")
}

mod conformance {
    use super::*;
    vector_store_conformance!(fresh().await);
}
