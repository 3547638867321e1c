//! The Qdrant Edge store against the VectorStore conformance suite.

#![allow(clippy::unwrap_used)]

use cairn_retrieval::conformance::DIM;
use cairn_retrieval::{EdgeVectorStore, vector_store_conformance};

fn fresh() -> EdgeVectorStore {
    let dir = tempfile::tempdir().unwrap();
    let s = EdgeVectorStore::open(&dir.path().join("shard"), Some(DIM)).unwrap();
    std::mem::forget(dir); // removed with the test's temp dir
    s
}

mod conformance {
    use super::*;
    vector_store_conformance!(fresh());
}
