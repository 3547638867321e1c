//! The embedded VectorStore over Qdrant Edge.

use async_trait::async_trait;
use cairn_core::ids::TenantId;
use cairn_core::ports::*;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    AnyVariants, Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard,
    EdgeSparseVectorParams, EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, Fusion,
    JsonPath, Match, Modifier, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, Prefetch, QueryEnum, QueryRequest, Range,
    ScoringQuery, ScrollRequest, UpdateOperation, ValueVariants, VectorInternal, VectorPersisted,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::payload::{
    DATE_KEY, FieldKind, INDEXED_FIELDS, TENANT_KEY, checked_dense, chunk_payload,
};
pub use crate::payload::{DENSE, SPARSE};
/// Default weight of the dense ranking in hybrid fusion (sparse has weight 1).
/// Qdrant's weighted RRF divides the rank by the weight (a hit at rank r adds
/// 1 / (r / w + k - 1)), so a weight only matters much when `k` is small; the
/// grid over k and w is in BENCHMARKS.md.
pub const DEFAULT_DENSE_WEIGHT: f32 = 2.0;
/// The default `k` of reciprocal rank fusion (k = 1, w = 2 measured best on
/// `eval/questions.json`).
pub const DEFAULT_RRF_K: usize = 1;
/// Candidates taken from each side before fusion, per hit wanted.
const PREFETCH_FACTOR: usize = 4;

/// Namespace of point ids (UUIDv5 of tenant, document and chunk index).
const POINT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6361_6972_6e2d_6b6e_6f77_6c65_6467_6521);

/// The Qdrant Edge store. Cheap to clone.
#[derive(Clone)]
pub struct EdgeVectorStore {
    shard: Arc<EdgeShard>,
    /// Weight of the dense ranking against the sparse one in hybrid fusion.
    dense_weight: f32,
    /// The `k` of reciprocal rank fusion.
    rrf_k: usize,
    /// Readers share it; a document replacement holds it exclusively, so no search
    /// runs between its delete and its insert.
    replacing: Arc<std::sync::RwLock<()>>,
    dense_dim: Option<usize>,
    keys: Arc<Keys>,
    /// Set by every write, cleared by [`VectorStore::maintain`].
    dirty: Arc<std::sync::atomic::AtomicBool>,
    /// Points written since the optimizers last ran.
    unoptimized: Arc<std::sync::atomic::AtomicUsize>,
}

/// Segment sizes for the optimizers. The indexing threshold is lower than
/// Qdrant's default (10 MB) because BM25 vectors are small: at 10 MB the mutable
/// segment would hold ~100,000 chunks, and inserting into its sparse index gets
/// slower with every chunk.
fn optimizers() -> qdrant_edge::EdgeOptimizersConfig {
    qdrant_edge::EdgeOptimizersConfig {
        indexing_threshold: Some(INDEXING_THRESHOLD_KB),
        ..Default::default()
    }
}

/// See [`optimizers`].
const INDEXING_THRESHOLD_KB: usize = 1_000;

/// Points written after which a write runs the optimizers itself: the mutable
/// segment's sparse index gets slower to insert into as it grows, so it is
/// turned into an indexed segment regularly during bulk ingestion.
const OPTIMIZE_AFTER_POINTS: usize = 10_000;

fn unavailable(e: impl std::fmt::Display) -> VectorError {
    VectorError::Unavailable(e.to_string())
}

/// The payload fields queries filter on, parsed once.
struct Keys {
    tenant: JsonPath,
    document: JsonPath,
    source: JsonPath,
    tags: JsonPath,
    version: JsonPath,
    date: JsonPath,
}

impl Keys {
    fn parse() -> Result<Self, VectorError> {
        let k = |p: &str| {
            JsonPath::try_from(p).map_err(|_| VectorError::Invalid(format!("bad payload key {p}")))
        };
        Ok(Self {
            tenant: k(TENANT_KEY)?,
            document: k("document_id")?,
            source: k("source")?,
            tags: k("tags")?,
            version: k("version")?,
            date: k(DATE_KEY)?,
        })
    }

    fn matches(key: &JsonPath, value: &str) -> Condition {
        Condition::Field(FieldCondition::new_match(
            key.clone(),
            Match::new_value(ValueVariants::String(value.to_owned())),
        ))
    }

    fn matches_any(key: &JsonPath, values: &[String]) -> Condition {
        Condition::Field(FieldCondition::new_match(
            key.clone(),
            Match::new_any(AnyVariants::Strings(values.iter().cloned().collect())),
        ))
    }

    /// The tenant condition plus the request's filters.
    fn filter(&self, tenant: &TenantId, extra: &SearchFilter) -> Filter {
        let mut must = vec![Self::matches(&self.tenant, tenant.as_str())];
        if !extra.document_ids.is_empty() {
            must.push(Self::matches_any(&self.document, &extra.document_ids));
        }
        if !extra.sources.is_empty() {
            must.push(Self::matches_any(&self.source, &extra.sources));
        }
        if !extra.tags.is_empty() {
            must.push(Self::matches_any(&self.tags, &extra.tags));
        }
        if extra.after.is_some() || extra.before.is_some() {
            let at = |d: chrono::DateTime<chrono::Utc>| OrderedFloat(d.timestamp() as f64);
            must.push(Condition::Field(FieldCondition::new_range(
                self.date.clone(),
                Range {
                    gte: extra.after.map(at),
                    lt: extra.before.map(at),
                    gt: None,
                    lte: None,
                },
            )));
        }
        Filter {
            must: Some(must),
            ..Default::default()
        }
    }

    /// The tenant condition and one document.
    fn document_filter(&self, tenant: &TenantId, document: &str) -> Filter {
        Filter {
            must: Some(vec![
                Self::matches(&self.tenant, tenant.as_str()),
                Self::matches(&self.document, document),
            ]),
            ..Default::default()
        }
    }
}

fn point_id(tenant: &TenantId, document: &str, index: u32) -> PointId {
    let name = format!("{tenant}\0{document}\0{index}");
    PointId::Uuid(uuid::Uuid::new_v5(&POINT_NAMESPACE, name.as_bytes()))
}

impl EdgeVectorStore {
    /// Opens (or creates) the shard at `path`. `dense_dim` is the dense embedding
    /// size, or `None` for a BM25-only store.
    pub fn open(path: &Path, dense_dim: Option<usize>) -> Result<Self, VectorError> {
        std::fs::create_dir_all(path).map_err(unavailable)?;
        let mut vectors = HashMap::new();
        if let Some(size) = dense_dim {
            vectors.insert(
                DENSE.to_owned(),
                EdgeVectorParams {
                    size,
                    distance: Distance::Cosine,
                    quantization_config: None,
                    multivector_config: None,
                    datatype: None,
                    on_disk: None,
                    hnsw_config: None,
                },
            );
        }
        let sparse = HashMap::from([(
            SPARSE.to_owned(),
            EdgeSparseVectorParams {
                full_scan_threshold: None,
                on_disk: None,
                modifier: Some(Modifier::Idf),
                datatype: None,
            },
        )]);
        let config = EdgeConfig {
            on_disk_payload: false,
            vectors,
            sparse_vectors: sparse,
            hnsw_config: Default::default(),
            quantization_config: None,
            optimizers: optimizers(),
            wal_options: None,
        };
        let shard = EdgeShard::load(path, Some(config)).map_err(unavailable)?;
        // A store created by an older version keeps its own settings otherwise.
        shard
            .set_optimizers_config(optimizers())
            .map_err(unavailable)?;
        // Without payload indexes ingestion also slows down as the store grows.
        for (field, kind) in INDEXED_FIELDS {
            let kind = match kind {
                FieldKind::Keyword => PayloadSchemaType::Keyword,
                FieldKind::Integer => PayloadSchemaType::Integer,
            };
            let field_name = JsonPath::try_from(field)
                .map_err(|_| VectorError::Invalid(format!("bad payload key {field}")))?;
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name,
                        field_schema: Some(PayloadFieldSchema::FieldType(kind)),
                    }),
                ))
                .map_err(unavailable)?;
        }
        Ok(Self {
            shard: Arc::new(shard),
            dense_weight: DEFAULT_DENSE_WEIGHT,
            rrf_k: DEFAULT_RRF_K,
            replacing: Arc::default(),
            dense_dim,
            keys: Arc::new(Keys::parse()?),
            dirty: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            unoptimized: Arc::default(),
        })
    }

    /// Sets hybrid fusion: the `k` of reciprocal rank fusion and the weight of
    /// the dense ranking (sparse has weight 1).
    pub fn with_fusion(mut self, k: usize, dense_weight: f32) -> Self {
        self.rrf_k = k.max(1);
        self.dense_weight = dense_weight.max(0.0);
        self
    }

    /// Runs a write of `points` points: `f` on the blocking pool (as the only
    /// user of the shard when `exclusive`), then marks the store for
    /// [`VectorStore::maintain`] and runs the optimizers itself once enough
    /// points piled up since they last ran.
    async fn write<F>(&self, exclusive: bool, points: usize, f: F) -> Result<(), VectorError>
    where
        F: FnOnce(&EdgeShard) -> Result<(), VectorError> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        let result = self.blocking(exclusive, f).await;
        self.dirty.store(true, Ordering::Relaxed);
        result?;
        let before = self.unoptimized.fetch_add(points, Ordering::Relaxed);
        if before < OPTIMIZE_AFTER_POINTS && before + points >= OPTIMIZE_AFTER_POINTS {
            self.unoptimized.store(0, Ordering::Relaxed);
            self.blocking(false, |shard| shard.optimize().map_err(unavailable))
                .await?;
        }
        Ok(())
    }

    /// Runs `f` on the blocking pool, as a reader (`exclusive` false) or as the
    /// only user of the shard.
    async fn blocking<T, F>(&self, exclusive: bool, f: F) -> Result<T, VectorError>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, VectorError> + Send + 'static,
    {
        let shard = self.shard.clone();
        let lock = self.replacing.clone();
        tokio::task::spawn_blocking(move || {
            if exclusive {
                let _guard = lock.write().unwrap_or_else(|p| p.into_inner());
                f(&shard)
            } else {
                let _guard = lock.read().unwrap_or_else(|p| p.into_inner());
                f(&shard)
            }
        })
        .await
        .map_err(unavailable)?
    }

    fn to_structs(
        &self,
        tenant: &TenantId,
        points: Vec<VectorPoint>,
    ) -> Result<Vec<qdrant_edge::PointStructPersisted>, VectorError> {
        let mut structs = Vec::with_capacity(points.len());
        for p in points {
            let mut vectors: HashMap<String, VectorPersisted> = HashMap::new();
            if let Some(v) = checked_dense(p.dense, self.dense_dim)? {
                vectors.insert(DENSE.to_owned(), VectorPersisted::Dense(v));
            }
            vectors.insert(
                SPARSE.to_owned(),
                VectorPersisted::Sparse(qdrant_edge::SparseVector {
                    indices: p.sparse.indices,
                    values: p.sparse.values,
                }),
            );
            let payload = chunk_payload(tenant, &p.chunk)?;
            let id = point_id(tenant, &p.chunk.document_id, p.chunk.chunk_index);
            let mut point = PointStruct::new(id, Vec::<f32>::new(), payload);
            point.0.vector = VectorStructPersisted::Named(vectors);
            structs.push(point.into());
        }
        Ok(structs)
    }
}

fn upsert(structs: Vec<qdrant_edge::PointStructPersisted>) -> UpdateOperation {
    UpdateOperation::PointOperation(PointOperations::UpsertPoints(
        PointInsertOperations::PointsList(structs),
    ))
}

fn delete_by(filter: Filter) -> UpdateOperation {
    UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(filter))
}

fn chunk_of(payload: Option<qdrant_edge::Payload>) -> Option<ChunkRecord> {
    let map = payload?.0;
    serde_json::from_value(Value::Object(map.into_iter().collect())).ok()
}

#[async_trait]
impl VectorStore for EdgeVectorStore {
    fn backend(&self) -> &'static str {
        "qdrant-edge"
    }

    async fn upsert(&self, tenant: &TenantId, points: Vec<VectorPoint>) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        let structs = self.to_structs(tenant, points)?;
        self.write(false, structs.len(), move |shard| {
            shard.update(upsert(structs)).map_err(unavailable)
        })
        .await
    }

    async fn replace_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
        points: Vec<VectorPoint>,
    ) -> Result<(), VectorError> {
        let structs = self.to_structs(tenant, points)?;
        let f = self.keys.document_filter(tenant, document_id);
        self.write(true, structs.len(), move |shard| {
            shard.update(delete_by(f)).map_err(unavailable)?;
            if structs.is_empty() {
                return Ok(());
            }
            shard.update(upsert(structs)).map_err(unavailable)
        })
        .await
    }

    async fn document_version(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<String>, VectorError> {
        let f = self.keys.document_filter(tenant, document_id);
        let (records, _) = self
            .blocking(false, move |shard| {
                shard
                    .scroll(ScrollRequest {
                        offset: None,
                        limit: Some(1),
                        filter: Some(f),
                        with_payload: Some(WithPayloadInterface::Bool(true)),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    })
                    .map_err(unavailable)
            })
            .await?;
        Ok(records
            .into_iter()
            .next()
            .and_then(|r| chunk_of(r.payload))
            .map(|c| c.version))
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
        keep_version: Option<&str>,
    ) -> Result<(), VectorError> {
        let mut f = self.keys.document_filter(tenant, document_id);
        if let Some(v) = keep_version {
            f.must_not = Some(vec![Keys::matches(&self.keys.version, v)]);
        }
        self.write(false, 0, move |shard| {
            shard.update(delete_by(f)).map_err(unavailable)
        })
        .await
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<SearchHit>, VectorError> {
        let f = self.keys.filter(&request.tenant, &request.filter);
        let limit = request.limit.max(1);
        let dense = || -> Result<QueryEnum, VectorError> {
            let v = request
                .dense
                .clone()
                .ok_or_else(|| VectorError::Invalid("no dense query vector".into()))?;
            if self.dense_dim.is_none() {
                return Err(VectorError::Invalid(
                    "this store holds no dense vectors".into(),
                ));
            }
            Ok(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::from(v),
                using: Some(DENSE.to_owned()),
            }))
        };
        let sparse = || -> Result<QueryEnum, VectorError> {
            let v = request
                .sparse
                .clone()
                .ok_or_else(|| VectorError::Invalid("no sparse query vector".into()))?;
            Ok(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::from(qdrant_edge::SparseVector {
                    indices: v.indices,
                    values: v.values,
                }),
                using: Some(SPARSE.to_owned()),
            }))
        };
        let (prefetches, query) = match request.mode {
            SearchMode::Dense => (vec![], ScoringQuery::Vector(dense()?)),
            SearchMode::Sparse => (vec![], ScoringQuery::Vector(sparse()?)),
            SearchMode::Hybrid => {
                let side = |q: QueryEnum| Prefetch {
                    prefetches: vec![],
                    query: Some(ScoringQuery::Vector(q)),
                    limit: limit * PREFETCH_FACTOR,
                    params: None,
                    filter: Some(f.clone()),
                    score_threshold: None,
                };
                (
                    vec![side(dense()?), side(sparse()?)],
                    ScoringQuery::Fusion(Fusion::Rrf {
                        k: self.rrf_k,
                        weights: Some(vec![OrderedFloat(self.dense_weight), OrderedFloat(1.0)]),
                    }),
                )
            }
        };
        let q = QueryRequest {
            prefetches,
            query: Some(query),
            filter: Some(f),
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let points = self
            .blocking(false, move |shard| shard.query(q).map_err(unavailable))
            .await?;
        Ok(points
            .into_iter()
            .filter_map(|p| {
                let score = p.score;
                chunk_of(p.payload).map(|chunk| SearchHit { chunk, score })
            })
            .collect())
    }

    async fn count(
        &self,
        tenant: &TenantId,
        document_id: Option<&str>,
    ) -> Result<usize, VectorError> {
        let f = match document_id {
            Some(d) => self.keys.document_filter(tenant, d),
            None => self.keys.filter(tenant, &SearchFilter::default()),
        };
        self.blocking(false, move |shard| {
            shard
                .count(CountRequest {
                    filter: Some(f),
                    exact: true,
                })
                .map_err(unavailable)
        })
        .await
    }

    /// Builds HNSW indexes for grown segments, merges small ones and vacuums
    /// deleted points (Qdrant Edge does not run its optimizers by itself).
    async fn maintain(&self) -> Result<(), VectorError> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let result = self
            .blocking(false, |shard| shard.optimize().map_err(unavailable))
            .await;
        if result.is_err() {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result.map(|_| ())
    }
}
