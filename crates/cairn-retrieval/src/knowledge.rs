//! The knowledge base: parse → chunk → embed → store, and search, for one
//! VectorStore and its embedders. Ingestion is idempotent: a document's version
//! is the hash of its content, identical content does no embedding work, and
//! changed content is written first and the old version deleted after, so a
//! reader sees the old chunks or the new ones, never a mix of both.
//!
//! The ingestion actors (parse/chunk actor, embedding worker pool), job status
//! and the HTTP/CLI surfaces build on this.

use crate::chunk::{ChunkSettings, ParsedDocument, chunk};
use async_trait::async_trait;
use cairn_core::ids::TenantId;
use cairn_core::ports::*;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;

/// What ingesting a document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// New document.
    Added {
        /// Chunks written.
        chunks: usize,
    },
    /// Same content as stored: nothing done.
    Unchanged,
    /// Content changed: new chunks written, old ones removed.
    Replaced {
        /// Chunks written.
        chunks: usize,
    },
}

/// Metadata of a document to ingest.
#[derive(Debug, Clone, Default)]
pub struct DocumentMeta {
    /// Stable id (e.g. derived from the source path).
    pub document_id: String,
    /// Where it came from.
    pub source: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Title to use instead of the one found in the document.
    pub title: Option<String>,
    /// The document's date; unset means "when it was ingested".
    pub date: Option<DateTime<Utc>>,
}

/// A document parsed and chunked, before embedding.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The stored version has the same content and metadata: nothing to do.
    Unchanged,
    /// Chunks to embed and store.
    Chunks {
        /// The chunks, in order.
        records: Vec<ChunkRecord>,
        /// An older version is stored and must be replaced.
        replace: bool,
    },
}

/// A knowledge base over one vector store.
#[derive(Clone)]
pub struct KnowledgeBase {
    store: Arc<dyn VectorStore>,
    sparse: Arc<dyn SparseEmbedder>,
    dense: Option<Arc<dyn DenseEmbedder>>,
    settings: ChunkSettings,
}

/// Longest document id.
pub const MAX_DOCUMENT_ID: usize = 128;

/// A document id from a path or name: `/` and `\` become `.`, letters, digits
/// and `-_.` stay, anything else becomes `-`; at most 128 characters.
pub fn document_id_from(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            '/' | '\\' => '.',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' => c,
            _ => '-',
        })
        .take(MAX_DOCUMENT_ID)
        .collect()
}

/// True when `id` is a valid document id (1–128 of letters, digits, `-_.`).
pub fn is_document_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DOCUMENT_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Version of a content: a stable 64-bit FNV-1a hash, hex.
pub fn content_version(text: &str) -> String {
    format!("{:016x}", fnv1a(0xcbf2_9ce4_8422_2325, text.as_bytes()))
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Version of a document: its text and the metadata stored with every chunk, so
/// that new tags or a new title replace the chunks too.
fn document_version(meta: &DocumentMeta, title: &str, text: &str) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for part in [
        text,
        title,
        meta.source.as_deref().unwrap_or(""),
        &meta.tags.join("\u{1}"),
        &meta.date.map(|d| d.to_rfc3339()).unwrap_or_default(),
    ] {
        h = fnv1a(h, part.as_bytes());
        h = fnv1a(h, &[0]);
    }
    format!("{h:016x}")
}

/// The text an embedder sees for a chunk: title and section give it context.
fn embedding_text(title: &str, c: &ChunkRecord) -> String {
    let mut s = title.to_owned();
    for p in &c.section_path {
        s.push_str(" > ");
        s.push_str(p);
    }
    s.push('\n');
    s.push_str(&c.text);
    s
}

impl KnowledgeBase {
    /// A knowledge base; without a dense embedder, retrieval is BM25 only.
    pub fn new(
        store: Arc<dyn VectorStore>,
        sparse: Arc<dyn SparseEmbedder>,
        dense: Option<Arc<dyn DenseEmbedder>>,
        settings: ChunkSettings,
    ) -> Self {
        Self {
            store,
            sparse,
            dense,
            settings,
        }
    }

    /// Name of the dense embedder, when there is one.
    pub fn dense_model(&self) -> Option<String> {
        self.dense.as_ref().map(|d| d.name().to_owned())
    }

    /// The dense embedder, when there is one (shared with the intent classifier).
    pub fn dense(&self) -> Option<Arc<dyn DenseEmbedder>> {
        self.dense.clone()
    }

    /// The vector store's backend name (`qdrant-edge`, `qdrant`).
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// True when dense vectors are computed (hybrid search available).
    pub fn has_dense(&self) -> bool {
        self.dense.is_some()
    }

    /// Ingests a parsed document: prepare, embed, store.
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        meta: &DocumentMeta,
        doc: &ParsedDocument,
    ) -> Result<IngestOutcome, VectorError> {
        match self.prepare(tenant, meta, doc).await? {
            Prepared::Unchanged => Ok(IngestOutcome::Unchanged),
            Prepared::Chunks { records, replace } => {
                let n = records.len();
                let points = self.embed(records).await?;
                self.store(tenant, &meta.document_id, points, replace)
                    .await?;
                Ok(if replace {
                    IngestOutcome::Replaced { chunks: n }
                } else {
                    IngestOutcome::Added { chunks: n }
                })
            }
        }
    }

    /// Chunks a parsed document, or finds that the stored version is the same.
    /// Hashing and chunking are CPU work linear in the document (up to the
    /// upload limit), so they run on the blocking pool, never on a runtime worker.
    pub async fn prepare(
        &self,
        tenant: &TenantId,
        meta: &DocumentMeta,
        doc: &ParsedDocument,
    ) -> Result<Prepared, VectorError> {
        let title = meta.title.clone().unwrap_or_else(|| doc.title.clone());
        let (meta, doc, settings) = (meta.clone(), doc.clone(), self.settings);
        let (version, drafts) = {
            let (meta, title) = (meta.clone(), title.clone());
            tokio::task::spawn_blocking(move || {
                let version = document_version(&meta, &title, &doc.text);
                (version, chunk(&doc, settings))
            })
            .await
            .map_err(|e| VectorError::Invalid(format!("chunking stopped: {e}")))?
        };
        let existing = self
            .store
            .document_version(tenant, &meta.document_id)
            .await?;
        if existing.as_deref() == Some(version.as_str()) {
            return Ok(Prepared::Unchanged);
        }
        let date = meta.date.unwrap_or_else(Utc::now);
        let records: Vec<ChunkRecord> = drafts
            .into_iter()
            .enumerate()
            .map(|(i, c)| ChunkRecord {
                document_id: meta.document_id.clone(),
                chunk_index: i as u32,
                title: title.clone(),
                section_path: c.section_path,
                text: c.text,
                start: c.start,
                end: c.end,
                source: meta.source.clone(),
                tags: meta.tags.clone(),
                page: c.page,
                version: version.clone(),
                date: Some(date),
            })
            .collect();
        Ok(Prepared::Chunks {
            records,
            replace: existing.is_some(),
        })
    }

    /// Embeds chunks (dense when configured, and BM25).
    pub async fn embed(&self, records: Vec<ChunkRecord>) -> Result<Vec<VectorPoint>, VectorError> {
        let texts: Vec<String> = records
            .iter()
            .map(|c| embedding_text(&c.title, c))
            .collect();
        let dense = match &self.dense {
            Some(e) => Some(
                e.embed(&texts)
                    .await
                    .map_err(|e| VectorError::Unavailable(e.0))?,
            ),
            None => None,
        };
        if dense.as_ref().is_some_and(|d| d.len() != records.len()) {
            return Err(VectorError::Unavailable(
                "the embedder returned a different number of vectors than texts".into(),
            ));
        }
        Ok(records
            .into_iter()
            .zip(texts)
            .enumerate()
            .map(|(i, (chunk, text))| VectorPoint {
                sparse: self.sparse.embed_document(&text),
                dense: dense.as_ref().map(|d| d[i].clone()),
                chunk,
            })
            .collect())
    }

    /// Stores a document's embedded chunks, replacing an older version atomically
    /// for readers when `replace` is set.
    pub async fn store(
        &self,
        tenant: &TenantId,
        document_id: &str,
        points: Vec<VectorPoint>,
        replace: bool,
    ) -> Result<(), VectorError> {
        if replace {
            self.store
                .replace_document(tenant, document_id, points)
                .await
        } else {
            self.store.upsert(tenant, points).await
        }
    }

    /// Store housekeeping after writes (see [`VectorStore::maintain`]).
    pub async fn maintain(&self) -> Result<(), VectorError> {
        self.store.maintain().await
    }

    /// Chunks stored for a tenant.
    pub async fn count_all(&self, tenant: &TenantId) -> Result<usize, VectorError> {
        self.store.count(tenant, None).await
    }

    /// Chunks stored for a document.
    pub async fn count(&self, tenant: &TenantId, document_id: &str) -> Result<usize, VectorError> {
        self.store.count(tenant, Some(document_id)).await
    }

    /// Deletes a document's chunks.
    pub async fn delete(&self, tenant: &TenantId, document_id: &str) -> Result<(), VectorError> {
        self.store.delete_document(tenant, document_id, None).await
    }

    /// Searches; `Hybrid` falls back to `Sparse` without a dense embedder.
    pub async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        mode: SearchMode,
        filter: SearchFilter,
        limit: usize,
    ) -> Result<Vec<SearchHit>, VectorError> {
        let mode = match (mode, &self.dense) {
            (SearchMode::Hybrid, None) => SearchMode::Sparse,
            (SearchMode::Dense, None) => {
                return Err(VectorError::Invalid(
                    "no dense embedder is configured".into(),
                ));
            }
            (m, _) => m,
        };
        let dense = match (&self.dense, mode) {
            (Some(e), SearchMode::Dense | SearchMode::Hybrid) => Some(
                e.embed(&[query.to_owned()])
                    .await
                    .map_err(|e| VectorError::Unavailable(e.0))?
                    .pop()
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        self.store
            .search(SearchRequest {
                tenant: tenant.clone(),
                dense,
                sparse: Some(self.sparse.embed_query(query)),
                mode,
                filter,
                limit,
            })
            .await
    }
}

/// The `search_knowledge` tool offered to every conversation.
pub struct SearchKnowledgeTool {
    kb: KnowledgeBase,
    spec: ToolSpec,
    limit: usize,
}

impl SearchKnowledgeTool {
    /// The tool over `kb`, returning up to `limit` passages.
    pub fn new(kb: KnowledgeBase, limit: usize) -> Self {
        Self {
            kb,
            limit,
            spec: ToolSpec {
                name: "search_knowledge".into(),
                description:
                    "Searches the knowledge base (support articles and uploaded documents) \
                              and returns the most relevant passages with their document id, title \
                              and section."
                        .into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "What to look for"}},
                    "required": ["query"],
                    "additionalProperties": false
                }),
            },
        }
    }
}

#[async_trait]
impl Tool for SearchKnowledgeTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let query = arguments["query"]
            .as_str()
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| {
                ToolError::InvalidArguments("`query` must be a non-empty string".into())
            })?;
        let hits = self
            .kb
            .search(
                &ctx.tenant_id,
                query,
                SearchMode::Hybrid,
                SearchFilter {
                    tags: ctx.knowledge_tags.clone(),
                    ..SearchFilter::default()
                },
                self.limit,
            )
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let passages: Vec<Value> = hits
            .iter()
            .map(|h| {
                json!({
                    "document_id": h.chunk.document_id,
                    "title": h.chunk.title,
                    "section": h.chunk.section_path.join(" > "),
                    "text": h.chunk.text,
                    "score": h.score,
                })
            })
            .collect();
        Ok(ToolOutput {
            content: json!({ "passages": passages }).to_string(),
            is_error: false,
        })
    }
}
