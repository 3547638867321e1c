//! The production VectorStore: a Qdrant server over gRPC (`qdrant-client`).
//!
//! One collection holds every tenant (multitenancy by payload): `tenant_id` is a
//! keyword index marked `is_tenant`, and every filter this adapter builds starts
//! with the caller's tenant. Vectors are named as in the embedded store: `dense`
//! (cosine) and `bm25` (sparse, IDF modifier); hybrid search is two prefetches
//! fused server-side by weighted RRF.
//!
//! A Qdrant server has no transactions, so replacing a document is done so that
//! readers still never see a mix, nor an older version once a newer one is
//! stored: the new version's points get new ids (the version is part of the
//! id) and a `written_at` stamp, the old version is deleted afterwards, and a
//! search keeps, per document, only the chunks of the most recently written
//! version — checking, in one facet call, that no document it found has points
//! written later (a newer version that scored lower). A search reads ids and
//! scores first and payloads in a second call: Qdrant drops points deleted
//! between its scoring and its payload read, so a replacement's delete could
//! otherwise empty a result silently. A search that comes back short because
//! it met a replacement (older versions dropped, or points gone) runs again
//! without those older versions, a bounded number of times.

use async_trait::async_trait;
use cairn_core::ids::TenantId;
use cairn_core::ports::*;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FacetCountsBuilder, FieldType, Filter, GetPointsBuilder,
    KeywordIndexParamsBuilder, Modifier, NamedVectors, PointId, PointStruct, PrefetchQueryBuilder,
    Query, QueryPointsBuilder, Range, RrfBuilder, ScrollPointsBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder,
    VectorsConfigBuilder,
};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

use crate::edge::{DEFAULT_DENSE_WEIGHT, DEFAULT_RRF_K};
use crate::payload::{
    DATE_KEY, DENSE, FieldKind, INDEXED_FIELDS, SPARSE, TENANT_KEY, checked_dense, chunk_payload,
};
/// Payload key of when a version was written (Unix milliseconds).
const WRITTEN_KEY: &str = "written_at";
/// Candidates taken from each side before fusion, per hit wanted.
const PREFETCH_FACTOR: u64 = 4;
/// How many times a search that met a document being replaced, and so came
/// back short, is run again without the older versions it saw.
const REPLACEMENT_RETRIES: usize = 5;
/// Namespace of point ids (UUIDv5 of tenant, document, version and chunk index).
const POINT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6361_6972_6e2d_7164_7261_6e74_2d73_7276);

/// What one query found: the hits (newest version per document), the older
/// versions it dropped, and how many scored points were deleted before their
/// payloads could be read.
#[derive(Default)]
struct Found {
    hits: Vec<SearchHit>,
    superseded: HashSet<(String, String)>,
    vanished: usize,
}

/// The Qdrant server store. Cheap to clone.
#[derive(Clone)]
pub struct QdrantServerStore {
    client: std::sync::Arc<Qdrant>,
    collection: String,
    dense_dim: Option<usize>,
    rrf_k: usize,
    dense_weight: f32,
}

fn unavailable(e: impl std::fmt::Display) -> VectorError {
    VectorError::Unavailable(e.to_string())
}

fn tenant_condition(tenant: &TenantId) -> Condition {
    Condition::matches(TENANT_KEY, tenant.as_str().to_owned())
}

fn document_filter(tenant: &TenantId, document: &str) -> Filter {
    Filter::must([
        tenant_condition(tenant),
        Condition::matches("document_id", document.to_owned()),
    ])
}

fn search_filter(tenant: &TenantId, extra: &SearchFilter) -> Filter {
    let mut must = vec![tenant_condition(tenant)];
    if !extra.document_ids.is_empty() {
        must.push(Condition::matches(
            "document_id",
            extra.document_ids.clone(),
        ));
    }
    if !extra.sources.is_empty() {
        must.push(Condition::matches("source", extra.sources.clone()));
    }
    if !extra.tags.is_empty() {
        must.push(Condition::matches("tags", extra.tags.clone()));
    }
    if extra.after.is_some() || extra.before.is_some() {
        must.push(Condition::range(
            DATE_KEY,
            Range {
                gte: extra.after.map(|d| d.timestamp() as f64),
                lt: extra.before.map(|d| d.timestamp() as f64),
                ..Default::default()
            },
        ));
    }
    Filter::must(must)
}

fn chunk_of(payload: HashMap<String, qdrant_client::qdrant::Value>) -> Option<(ChunkRecord, i64)> {
    let value: Value = qdrant_client::Payload::from(payload).into();
    let written = value[WRITTEN_KEY].as_i64().unwrap_or(0);
    serde_json::from_value(value).ok().map(|c| (c, written))
}

impl QdrantServerStore {
    /// Connects to `url` (gRPC, e.g. `http://127.0.0.1:6334`) and creates the
    /// collection and its payload indexes when missing. `dense_dim` is the dense
    /// embedding size, or `None` for BM25 only.
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        dense_dim: Option<usize>,
    ) -> Result<Self, VectorError> {
        // The client's version check prints to stdout when the server's minor
        // version is more than one behind (client 1.20, server 1.18 here); the
        // conformance suite runs against Qdrant 1.18.3, so the check is noise.
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .skip_compatibility_check()
            .build()
            .map_err(unavailable)?;
        let store = Self {
            client: std::sync::Arc::new(client),
            collection: collection.to_owned(),
            dense_dim,
            rrf_k: DEFAULT_RRF_K,
            dense_weight: DEFAULT_DENSE_WEIGHT,
        };
        store.ensure_collection().await?;
        Ok(store)
    }

    /// Sets hybrid fusion: RRF `k` and the dense ranking's weight (sparse is 1).
    pub fn with_fusion(mut self, k: usize, dense_weight: f32) -> Self {
        self.rrf_k = k.max(1);
        self.dense_weight = dense_weight.max(0.0);
        self
    }

    async fn ensure_collection(&self) -> Result<(), VectorError> {
        let c = &self.client;
        if c.collection_exists(&self.collection)
            .await
            .map_err(unavailable)?
        {
            return Ok(());
        }
        let mut vectors = VectorsConfigBuilder::default();
        if let Some(dim) = self.dense_dim {
            vectors.add_named_vector_params(
                DENSE,
                VectorParamsBuilder::new(dim as u64, Distance::Cosine),
            );
        }
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            SPARSE,
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
        );
        let create = CreateCollectionBuilder::new(&self.collection)
            .vectors_config(vectors)
            .sparse_vectors_config(sparse);
        if let Err(e) = c.create_collection(create).await {
            // Another replica may have created it meanwhile.
            if !c
                .collection_exists(&self.collection)
                .await
                .map_err(unavailable)?
            {
                return Err(unavailable(e));
            }
        }
        for (field, kind) in INDEXED_FIELDS {
            let kind = match kind {
                FieldKind::Keyword => FieldType::Keyword,
                FieldKind::Integer => FieldType::Integer,
            };
            let mut index =
                CreateFieldIndexCollectionBuilder::new(&self.collection, field, kind).wait(true);
            if field == TENANT_KEY {
                // Multitenancy by payload: Qdrant co-locates each tenant's points.
                index =
                    index.field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true));
            }
            c.create_field_index(index).await.map_err(unavailable)?;
        }
        Ok(())
    }

    fn to_points(
        &self,
        tenant: &TenantId,
        points: Vec<VectorPoint>,
    ) -> Result<Vec<PointStruct>, VectorError> {
        let written = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::with_capacity(points.len());
        for p in points {
            let mut vectors = NamedVectors::default();
            if let Some(v) = checked_dense(p.dense, self.dense_dim)? {
                vectors = vectors.add_vector(DENSE, Vector::new_dense(v));
            }
            vectors = vectors.add_vector(
                SPARSE,
                Vector::new_sparse(p.sparse.indices, p.sparse.values),
            );
            let mut payload = chunk_payload(tenant, &p.chunk)?;
            payload[WRITTEN_KEY] = json!(written);
            let name = format!(
                "{tenant}\0{}\0{}\0{}",
                p.chunk.document_id, p.chunk.version, p.chunk.chunk_index
            );
            let id = uuid::Uuid::new_v5(&POINT_NAMESPACE, name.as_bytes()).to_string();
            let payload = qdrant_client::Payload::try_from(payload).map_err(unavailable)?;
            out.push(PointStruct::new(id, vectors, payload));
        }
        Ok(out)
    }

    /// Waits until the server reports the collection green (every segment
    /// indexed, no optimisation pending), up to `timeout`; for benchmarks and
    /// tests that time queries against built indexes.
    pub async fn wait_optimized(&self, timeout: std::time::Duration) -> Result<(), VectorError> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let info = self
                .client
                .collection_info(&self.collection)
                .await
                .map_err(unavailable)?;
            let green = info
                .result
                .is_some_and(|i| i.status == qdrant_client::qdrant::CollectionStatus::Green as i32);
            if green {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(VectorError::Unavailable(format!(
                    "collection {} still optimising after {timeout:?}",
                    self.collection
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Deletes the whole collection (every tenant's points): for benchmarks and
    /// tests that made a collection of their own.
    pub async fn drop_collection(&self) -> Result<(), VectorError> {
        self.client
            .delete_collection(&self.collection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Runs a query for ids and scores, then reads those points' payloads, and
    /// keeps per document only its most recently written version.
    ///
    /// Qdrant reads payloads after scoring and silently drops points deleted in
    /// between: when the end of a replacement deletes the old version's points
    /// while they fill the top of a result, a query with payloads comes back
    /// short or empty although the new version is there. Reading payloads
    /// apart makes that visible (`vanished`), so `search` can search again.
    async fn query_then_fetch(
        &self,
        tenant: &TenantId,
        q: QueryPointsBuilder,
    ) -> Result<Found, VectorError> {
        let scored = self.client.query(q).await.map_err(unavailable)?.result;
        let ids: Vec<PointId> = scored.iter().filter_map(|p| p.id.clone()).collect();
        let asked = ids.len();
        if asked == 0 {
            return Ok(Found::default());
        }
        let read = self
            .client
            .get_points(
                GetPointsBuilder::new(&self.collection, ids)
                    .with_payload(true)
                    .with_vectors(false),
            )
            .await
            .map_err(unavailable)?
            .result;
        let vanished = asked.saturating_sub(read.len());
        let mut payloads: HashMap<PointId, HashMap<String, qdrant_client::qdrant::Value>> = read
            .into_iter()
            .filter_map(|p| Some((p.id?, p.payload)))
            .collect();
        let hits: Vec<(ChunkRecord, i64, f32)> = scored
            .into_iter()
            .filter_map(|p| {
                let payload = payloads.remove(p.id.as_ref()?)?;
                chunk_of(payload).map(|(c, w)| (c, w, p.score))
            })
            .collect();
        // Per document, only the most recently written version among the hits,
        // and only if no newer version is stored (one that scored lower).
        let mut newest: HashMap<String, (i64, String)> = HashMap::new();
        for (c, w, _) in &hits {
            match newest.get_mut(&c.document_id) {
                Some(e) if *w <= e.0 => {}
                Some(e) => *e = (*w, c.version.clone()),
                None => {
                    newest.insert(c.document_id.clone(), (*w, c.version.clone()));
                }
            }
        }
        for document in self.written_since(tenant, &newest).await? {
            newest.remove(&document);
        }
        let mut found = Found {
            vanished,
            ..Found::default()
        };
        for (chunk, _, score) in hits {
            let current = newest
                .get(&chunk.document_id)
                .is_some_and(|(_, v)| *v == chunk.version);
            if current {
                found.hits.push(SearchHit { chunk, score });
            } else {
                found.superseded.insert((chunk.document_id, chunk.version));
            }
        }
        Ok(found)
    }

    /// The documents of `newest` (document → the newest written stamp and
    /// version among a search's hits) that have a point written later: a
    /// version stored after the one the search found, which it must not show.
    /// One facet call over the document ids, whatever their number.
    async fn written_since(
        &self,
        tenant: &TenantId,
        newest: &HashMap<String, (i64, String)>,
    ) -> Result<Vec<String>, VectorError> {
        if newest.is_empty() {
            return Ok(Vec::new());
        }
        // Another version written later; the same version written again (a
        // repeated upload of the same content) is not a newer one.
        let later = newest.iter().map(|(document, (written, version))| {
            let mut f = Filter::must([
                Condition::matches("document_id", document.clone()),
                Condition::range(
                    WRITTEN_KEY,
                    Range {
                        gt: Some(*written as f64),
                        ..Default::default()
                    },
                ),
            ]);
            f.must_not = vec![Condition::matches("version", version.clone())];
            Condition::from(f)
        });
        let filter = Filter {
            must: vec![tenant_condition(tenant)],
            should: later.collect(),
            ..Default::default()
        };
        let r = self
            .client
            .facet(
                FacetCountsBuilder::new(&self.collection, "document_id")
                    .filter(filter)
                    .limit(newest.len() as u64)
                    .exact(true),
            )
            .await
            .map_err(unavailable)?;
        Ok(r.hits
            .into_iter()
            .filter(|h| h.count > 0)
            .filter_map(|h| match h.value?.variant? {
                qdrant_client::qdrant::facet_value::Variant::StringValue(d) => Some(d),
                _ => None,
            })
            .collect())
    }

    async fn delete_by(&self, filter: Filter) -> Result<(), VectorError> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantServerStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    async fn upsert(&self, tenant: &TenantId, points: Vec<VectorPoint>) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        let points = self.to_points(tenant, points)?;
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn replace_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
        points: Vec<VectorPoint>,
    ) -> Result<(), VectorError> {
        let Some(version) = points.first().map(|p| p.chunk.version.clone()) else {
            return self.delete_by(document_filter(tenant, document_id)).await;
        };
        self.upsert(tenant, points).await?;
        self.delete_document(tenant, document_id, Some(&version))
            .await
    }

    async fn document_version(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<String>, VectorError> {
        let r = self
            .client
            .scroll(
                ScrollPointsBuilder::new(&self.collection)
                    .filter(document_filter(tenant, document_id))
                    .limit(64)
                    .with_payload(true)
                    .with_vectors(false),
            )
            .await
            .map_err(unavailable)?;
        // During a replacement two versions exist: the newest is the document's.
        Ok(r.result
            .into_iter()
            .filter_map(|p| chunk_of(p.payload))
            .max_by_key(|(_, written)| *written)
            .map(|(c, _)| c.version))
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
        keep_version: Option<&str>,
    ) -> Result<(), VectorError> {
        let mut f = document_filter(tenant, document_id);
        if let Some(v) = keep_version {
            f.must_not = vec![Condition::matches("version", v.to_owned())];
        }
        self.delete_by(f).await
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<SearchHit>, VectorError> {
        let mut f = search_filter(&request.tenant, &request.filter);
        let limit = request.limit.max(1) as u64;
        let dense = || -> Result<VectorInput, VectorError> {
            if self.dense_dim.is_none() {
                return Err(VectorError::Invalid(
                    "this store holds no dense vectors".into(),
                ));
            }
            request
                .dense
                .clone()
                .map(VectorInput::new_dense)
                .ok_or_else(|| VectorError::Invalid("no dense query vector".into()))
        };
        let sparse = || -> Result<VectorInput, VectorError> {
            request
                .sparse
                .clone()
                .map(|s| VectorInput::new_sparse(s.indices, s.values))
                .ok_or_else(|| VectorError::Invalid("no sparse query vector".into()))
        };
        // Fetch a little more than asked, so that dropping an older version's
        // chunks during a replacement usually still leaves `limit` hits.
        let fetch = limit * 2;
        let query = |f: &Filter| -> Result<QueryPointsBuilder, VectorError> {
            // Scores and ids only: payloads are read in a second call (see
            // `query_then_fetch`), so that points deleted in between are seen.
            let q = QueryPointsBuilder::new(&self.collection)
                .filter(f.clone())
                .limit(fetch)
                .with_payload(false);
            Ok(match request.mode {
                SearchMode::Dense => q.query(Query::new_nearest(dense()?)).using(DENSE),
                SearchMode::Sparse => q.query(Query::new_nearest(sparse()?)).using(SPARSE),
                SearchMode::Hybrid => {
                    let side = |input: VectorInput, using: &str| {
                        PrefetchQueryBuilder::default()
                            .query(Query::new_nearest(input))
                            .using(using)
                            .filter(f.clone())
                            .limit(fetch * PREFETCH_FACTOR)
                    };
                    q.add_prefetch(side(dense()?, DENSE))
                        .add_prefetch(side(sparse()?, SPARSE))
                        .query(Query::new_rrf(
                            RrfBuilder::with_k(self.rrf_k as u32)
                                .weights(vec![self.dense_weight, 1.0]),
                        ))
                }
            })
        };
        let mut retried = 0;
        loop {
            let found = self.query_then_fetch(&request.tenant, query(&f)?).await?;
            let mut hits = found.hits;
            let short = hits.len() < limit as usize;
            let raced = found.vanished > 0 || !found.superseded.is_empty();
            if !short || !raced || retried == REPLACEMENT_RETRIES {
                hits.truncate(limit as usize);
                return Ok(hits);
            }
            // A replacement is under way: older versions took places in the
            // result, or its delete took points between scoring and reading.
            // Search again without the older versions seen.
            retried += 1;
            tracing::debug!(
                collection = %self.collection,
                vanished = found.vanished,
                superseded = found.superseded.len(),
                retried,
                "a search met a document being replaced; searching again"
            );
            for (document, version) in found.superseded {
                f.must_not.push(
                    Filter::must([
                        Condition::matches("document_id", document),
                        Condition::matches("version", version),
                    ])
                    .into(),
                );
            }
        }
    }

    async fn count(
        &self,
        tenant: &TenantId,
        document_id: Option<&str>,
    ) -> Result<usize, VectorError> {
        let f = match document_id {
            Some(d) => document_filter(tenant, d),
            None => search_filter(tenant, &SearchFilter::default()),
        };
        let r = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(f)
                    .exact(true),
            )
            .await
            .map_err(unavailable)?;
        Ok(r.result.map_or(0, |c| c.count as usize))
    }
}
