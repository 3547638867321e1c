//! Knowledge: the VectorStore adapters, embedders, parsers, chunker and the
//! knowledge base that ties them together (the ingestion actors that drive it
//! live in `cairn-actors`).
//!
//! - [`edge::EdgeVectorStore`]: the embedded `VectorStore` over Qdrant Edge
//!   (`qdrant-edge = "=0.7.2"`, the newest release that builds on stable Rust):
//!   a named dense vector (`dense`, cosine) and a named sparse vector (`bm25`, IDF
//!   modifier) per chunk, the tenant in every point's payload and in every query's
//!   filter, hybrid search as two prefetches fused with reciprocal rank fusion.
//!   Its API is synchronous, so every call runs on the blocking pool.
//! - [`server::QdrantServerStore`]: the production `VectorStore` over a Qdrant
//!   server (gRPC, `qdrant-client`), same vectors and payload, one collection for
//!   all tenants with `tenant_id` as the tenant index.
//! - [`payload`]: the point layout both stores share (vector names, payload,
//!   indexed fields).
//! - [`bm25::Bm25Embedder`]: BM25 sparse vectors from Qdrant Edge's own tokenizer
//!   (lower-casing, English stemming and stop words); no model files.
//! - [`minilm::MiniLmEmbedder`]: all-MiniLM-L6-v2 dense vectors with candle from
//!   local files (no downloads), matching sentence-transformers; [`bert`] is its
//!   encoder (candle-transformers' BERT with a vectorised GELU).
//! - [`chunk`]: Markdown and plain-text parsing into blocks under headings, and
//!   token-bounded chunks with overlap and character offsets.
//! - [`knowledge::KnowledgeBase`]: parse → chunk → embed → store with versioned,
//!   idempotent replacement, search with BM25-only fallback, and the
//!   `search_knowledge` tool.
//! - [`formats`]: HTML, DOCX and PDF parsing (plus Markdown and text by type),
//!   with size limits and clear errors for corrupt, encrypted or empty files.
//! - [`isolation`]: parsing in a child process with memory, CPU and time
//!   limits, so a crafted document fails alone instead of crashing the service.
//! - [`conformance`]: cases every `VectorStore` adapter must pass.

pub mod bert;
pub mod bm25;
pub mod chunk;
pub mod conformance;
pub mod edge;
pub mod formats;
pub mod isolation;
pub mod knowledge;
pub mod minilm;
pub mod payload;
pub mod server;

pub use bm25::Bm25Embedder;
pub use edge::EdgeVectorStore;
pub use minilm::MiniLmEmbedder;
pub use server::QdrantServerStore;
