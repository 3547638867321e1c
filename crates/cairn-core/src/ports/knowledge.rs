//! Knowledge ports: the VectorStore that holds chunk vectors, the embedders
//! that make them, and the DocumentStore that keeps each document's record and
//! ingestion job. Every point carries its tenant, and every query is filtered
//! by the caller's tenant: the port has no way to ask without one.

use crate::ids::TenantId;
use crate::ports::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A sparse vector (BM25 term weights), indices ascending.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVector {
    /// Term ids.
    pub indices: Vec<u32>,
    /// Weights, one per index.
    pub values: Vec<f32>,
}

/// One chunk of a document, as stored and returned with search hits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// The document it belongs to (stable across re-ingestion).
    pub document_id: String,
    /// Position of the chunk within the document, from 0.
    pub chunk_index: u32,
    /// Document title.
    pub title: String,
    /// Headings above the chunk, outermost first.
    #[serde(default)]
    pub section_path: Vec<String>,
    /// The chunk text.
    pub text: String,
    /// Character offset of the chunk's start in the document text.
    pub start: usize,
    /// Character offset of the chunk's end (exclusive).
    pub end: usize,
    /// Where the document came from (file name, URL, …).
    #[serde(default)]
    pub source: Option<String>,
    /// Tags of the document.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Page number, for paged formats.
    #[serde(default)]
    pub page: Option<u32>,
    /// Version of the document content this chunk belongs to (content hash).
    pub version: String,
    /// The document's date (given at upload, else when it was ingested); search
    /// filters on it.
    #[serde(default)]
    pub date: Option<DateTime<Utc>>,
}

/// A chunk with its vectors, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    /// The chunk.
    pub chunk: ChunkRecord,
    /// Dense embedding, when a dense embedder is configured.
    pub dense: Option<Vec<f32>>,
    /// BM25 sparse vector (always present).
    pub sparse: SparseVector,
}

/// How to rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Dense and sparse, fused with reciprocal rank fusion.
    #[default]
    Hybrid,
    /// Dense only.
    Dense,
    /// Sparse (BM25) only.
    Sparse,
}

/// Restrictions on what a search may return (the tenant is separate and mandatory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchFilter {
    /// Only these documents.
    #[serde(default)]
    pub document_ids: Vec<String>,
    /// Only documents from these sources.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Only documents with at least one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only documents dated at or after this instant.
    #[serde(default)]
    pub after: Option<DateTime<Utc>>,
    /// Only documents dated before this instant.
    #[serde(default)]
    pub before: Option<DateTime<Utc>>,
}

/// A search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// The caller's tenant; nothing of another tenant is ever returned.
    pub tenant: TenantId,
    /// Query embedding for the dense side.
    pub dense: Option<Vec<f32>>,
    /// Query vector for the sparse side.
    pub sparse: Option<SparseVector>,
    /// Ranking mode.
    pub mode: SearchMode,
    /// Extra filters.
    pub filter: SearchFilter,
    /// Hits wanted.
    pub limit: usize,
}

/// One ranked chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The chunk.
    pub chunk: ChunkRecord,
    /// Score (RRF score for hybrid; similarity otherwise).
    pub score: f32,
}

/// A vector-store failure.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The store cannot be reached or refused the operation.
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// The request cannot be served (e.g. dense search without dense vectors).
    #[error("invalid vector request: {0}")]
    Invalid(String),
}

/// Stores chunk vectors and searches them, always within one tenant.
#[async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// A short name for `/health` (`qdrant-edge`, `qdrant`).
    fn backend(&self) -> &'static str;

    /// Inserts or replaces points (ids derive from tenant, document and chunk index).
    async fn upsert(&self, tenant: &TenantId, points: Vec<VectorPoint>) -> Result<(), VectorError>;

    /// Replaces every chunk of a document with `points`, atomically for readers:
    /// a concurrent search sees the old chunks or the new ones, never a mix.
    async fn replace_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
        points: Vec<VectorPoint>,
    ) -> Result<(), VectorError>;

    /// The content version of a stored document, if it has chunks.
    async fn document_version(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<String>, VectorError>;

    /// Removes a document's chunks; with `keep_version`, only chunks of other
    /// versions (used after a replacement has been written).
    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
        keep_version: Option<&str>,
    ) -> Result<(), VectorError>;

    /// Ranked chunks for a query.
    async fn search(&self, request: SearchRequest) -> Result<Vec<SearchHit>, VectorError>;

    /// Number of chunks stored for a tenant (optionally one document).
    async fn count(
        &self,
        tenant: &TenantId,
        document_id: Option<&str>,
    ) -> Result<usize, VectorError>;

    /// Housekeeping after writes (index building, vacuum); a no-op where the
    /// backend does it by itself. Cheap when nothing changed.
    async fn maintain(&self) -> Result<(), VectorError> {
        Ok(())
    }
}

/// An embedding failure.
#[derive(Debug, thiserror::Error)]
#[error("embedding failed: {0}")]
pub struct EmbedError(pub String);

/// Makes sparse vectors (BM25).
pub trait SparseEmbedder: Send + Sync + 'static {
    /// Vector of a document chunk.
    fn embed_document(&self, text: &str) -> SparseVector;
    /// Vector of a query.
    fn embed_query(&self, text: &str) -> SparseVector;
}

/// Makes dense vectors.
#[async_trait]
pub trait DenseEmbedder: Send + Sync + 'static {
    /// Model name, for `/health`.
    fn name(&self) -> &str;
    /// Vector size.
    fn dimension(&self) -> usize;
    /// Embeddings of a batch of texts, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Where a document's ingestion job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for the ingestion actors.
    Queued,
    /// Being parsed and chunked.
    Parsing,
    /// Chunks being embedded and stored.
    Embedding,
    /// Searchable (or unchanged).
    Done,
    /// Failed; the record's `error` says why.
    Failed,
}

impl JobStatus {
    /// Done or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// A document as the API lists it, with its latest ingestion job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// Stable id, unique within the tenant.
    pub document_id: String,
    /// Title (from the upload, else from the document).
    #[serde(default)]
    pub title: Option<String>,
    /// Where it came from (file name, URL, …).
    #[serde(default)]
    pub source: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The document's date, when given at upload.
    #[serde(default)]
    pub date: Option<DateTime<Utc>>,
    /// Format: `markdown`, `text`, `html`, `pdf` or `docx`.
    pub format: String,
    /// Size of the upload in bytes.
    pub bytes: u64,
    /// The latest ingestion job.
    pub job_id: String,
    /// Its status.
    pub status: JobStatus,
    /// What the job did once done: `added`, `replaced` or `unchanged`.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Why the job failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Chunks stored for the document, once done.
    #[serde(default)]
    pub chunks: Option<usize>,
    /// First upload.
    pub created_at: DateTime<Utc>,
    /// Last change of this record.
    pub updated_at: DateTime<Utc>,
}

/// Keeps one record per document and tenant: what was uploaded and where its
/// ingestion job is.
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// Creates or overwrites the record (a new upload starts a new job).
    async fn put_document(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<(), StoreError>;

    /// Writes `record` only if the stored record still belongs to the same job;
    /// false when the document was deleted or re-uploaded since (the job is stale).
    async fn update_job(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<bool, StoreError>;

    /// One record.
    async fn get_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError>;

    /// Records in document-id order, after `after`, at most `limit`.
    async fn list_documents(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError>;

    /// Removes the record; false when there was none.
    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<bool, StoreError>;
}
