//! What both VectorStore adapters (Qdrant Edge and the Qdrant server) store per
//! point: vector names, the payload (the chunk record plus the tenant and the
//! date as Unix seconds) and the payload fields they index.

use cairn_core::ids::TenantId;
use cairn_core::ports::{ChunkRecord, VectorError};
use serde_json::{Value, json};

/// Name of the dense vector.
pub const DENSE: &str = "dense";
/// Name of the sparse vector.
pub const SPARSE: &str = "bm25";
/// Payload key of the owning tenant; every query filters on it.
pub const TENANT_KEY: &str = "tenant_id";
/// Payload key of the document date as Unix seconds (what date filters compare).
pub const DATE_KEY: &str = "date_ts";

/// How a payload field is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Exact-match strings.
    Keyword,
    /// Integers (ranges).
    Integer,
}

/// The payload fields both adapters index: without these indexes every filter
/// (the tenant's, a document's) scans all points.
pub const INDEXED_FIELDS: [(&str, FieldKind); 6] = [
    (TENANT_KEY, FieldKind::Keyword),
    ("document_id", FieldKind::Keyword),
    ("source", FieldKind::Keyword),
    ("tags", FieldKind::Keyword),
    ("version", FieldKind::Keyword),
    (DATE_KEY, FieldKind::Integer),
];

/// The payload of a chunk's point.
pub fn chunk_payload(tenant: &TenantId, chunk: &ChunkRecord) -> Result<Value, VectorError> {
    let mut payload =
        serde_json::to_value(chunk).map_err(|e| VectorError::Unavailable(e.to_string()))?;
    payload[TENANT_KEY] = json!(tenant.as_str());
    if let Some(d) = chunk.date {
        payload[DATE_KEY] = json!(d.timestamp());
    }
    Ok(payload)
}

/// The dense vector to store: `None` when the point or the store has none; an
/// error when its size is not the store's.
pub fn checked_dense(
    dense: Option<Vec<f32>>,
    dim: Option<usize>,
) -> Result<Option<Vec<f32>>, VectorError> {
    match (dense, dim) {
        (Some(v), Some(dim)) if v.len() == dim => Ok(Some(v)),
        (Some(v), Some(dim)) => Err(VectorError::Invalid(format!(
            "dense vector has {} dimensions, the store {dim}",
            v.len()
        ))),
        _ => Ok(None),
    }
}
