//! Cases every `VectorStore` adapter must pass. Each takes a fresh store opened
//! with dense vectors of size 4.

#![allow(clippy::unwrap_used, missing_docs)]

use cairn_core::ids::TenantId;
use cairn_core::ports::*;

/// Dense size the cases use.
pub const DIM: usize = 4;

fn chunk(doc: &str, index: u32, text: &str, version: &str) -> ChunkRecord {
    ChunkRecord {
        document_id: doc.into(),
        chunk_index: index,
        title: format!("{doc} title"),
        section_path: vec!["Intro".into()],
        text: text.into(),
        start: 0,
        end: text.chars().count(),
        source: Some(format!("{doc}.md")),
        tags: vec![if doc.starts_with('b') {
            "billing".into()
        } else {
            "account".into()
        }],
        page: None,
        version: version.into(),
        date: Some(date_of(doc)),
    }
}

/// alpha is dated 2024, beta 2025, the others 2026 (1 June).
fn date_of(doc: &str) -> chrono::DateTime<chrono::Utc> {
    let year = match doc {
        "alpha" => 2024,
        "beta" => 2025,
        _ => 2026,
    };
    chrono::NaiveDate::from_ymd_opt(year, 6, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

fn sparse(terms: &[u32]) -> SparseVector {
    SparseVector {
        indices: terms.to_vec(),
        values: vec![1.0; terms.len()],
    }
}

fn point(doc: &str, index: u32, dense: [f32; DIM], terms: &[u32]) -> VectorPoint {
    VectorPoint {
        chunk: chunk(doc, index, &format!("{doc} chunk {index}"), "v1"),
        dense: Some(dense.to_vec()),
        sparse: sparse(terms),
    }
}

fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn req(t: &TenantId, mode: SearchMode, dense: [f32; DIM], terms: &[u32]) -> SearchRequest {
    SearchRequest {
        tenant: t.clone(),
        dense: Some(dense.to_vec()),
        sparse: Some(sparse(terms)),
        mode,
        filter: SearchFilter::default(),
        limit: 5,
    }
}

async fn seed<S: VectorStore>(s: &S, t: &TenantId) {
    s.upsert(
        t,
        vec![
            point("alpha", 0, [1.0, 0.0, 0.0, 0.0], &[1, 2]),
            point("alpha", 1, [0.9, 0.1, 0.0, 0.0], &[3]),
            point("beta", 0, [0.0, 1.0, 0.0, 0.0], &[4, 5]),
            point("gamma", 0, [0.0, 0.0, 1.0, 0.0], &[6]),
        ],
    )
    .await
    .unwrap();
}

pub async fn every_mode_ranks_the_nearest_first<S: VectorStore>(s: S) {
    let t = tenant("acme");
    seed(&s, &t).await;
    let dense = s
        .search(req(&t, SearchMode::Dense, [0.0, 1.0, 0.0, 0.0], &[]))
        .await
        .unwrap();
    assert_eq!(dense[0].chunk.document_id, "beta");
    let sparse = s
        .search(req(&t, SearchMode::Sparse, [0.0; DIM], &[6]))
        .await
        .unwrap();
    assert_eq!(sparse[0].chunk.document_id, "gamma");
    assert_eq!(
        sparse.len(),
        1,
        "sparse search returns only chunks sharing a term"
    );
    // Hybrid: dense points at alpha, sparse at gamma; both appear, fused.
    let hybrid = s
        .search(req(&t, SearchMode::Hybrid, [1.0, 0.0, 0.0, 0.0], &[6]))
        .await
        .unwrap();
    let docs: Vec<&str> = hybrid
        .iter()
        .map(|h| h.chunk.document_id.as_str())
        .collect();
    assert!(
        docs.contains(&"alpha") && docs.contains(&"gamma"),
        "{docs:?}"
    );
    assert_eq!(
        hybrid[0].chunk.title,
        format!("{} title", hybrid[0].chunk.document_id)
    );
}

pub async fn tenants_never_see_each_other<S: VectorStore>(s: S) {
    let acme = tenant("acme");
    let evil = tenant("evil");
    seed(&s, &acme).await;
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let hits = s
            .search(req(&evil, mode, [1.0, 0.0, 0.0, 0.0], &[1, 2, 6]))
            .await
            .unwrap();
        assert!(hits.is_empty(), "{mode:?}: {hits:?}");
    }
    assert_eq!(s.count(&acme, None).await.unwrap(), 4);
    assert_eq!(s.count(&evil, None).await.unwrap(), 0);
    // Same document id under another tenant is a different point.
    s.upsert(&evil, vec![point("alpha", 0, [1.0, 0.0, 0.0, 0.0], &[1])])
        .await
        .unwrap();
    assert_eq!(s.count(&acme, Some("alpha")).await.unwrap(), 2);
    assert_eq!(s.count(&evil, Some("alpha")).await.unwrap(), 1);
    s.delete_document(&evil, "alpha", None).await.unwrap();
    assert_eq!(s.count(&acme, Some("alpha")).await.unwrap(), 2);
}

pub async fn filters_restrict_results<S: VectorStore>(s: S) {
    let t = tenant("acme");
    seed(&s, &t).await;
    let mut r = req(&t, SearchMode::Dense, [1.0, 1.0, 1.0, 0.0], &[]);
    r.filter.document_ids = vec!["beta".into()];
    let hits = s.search(r.clone()).await.unwrap();
    assert!(hits.iter().all(|h| h.chunk.document_id == "beta") && !hits.is_empty());
    r.filter = SearchFilter {
        tags: vec!["billing".into()],
        ..Default::default()
    };
    assert!(
        s.search(r.clone())
            .await
            .unwrap()
            .iter()
            .all(|h| h.chunk.document_id == "beta")
    );
    r.filter = SearchFilter {
        sources: vec!["gamma.md".into()],
        ..Default::default()
    };
    let hits = s.search(r.clone()).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].chunk.document_id, "gamma");

    // Dates: `after` is inclusive, `before` exclusive.
    let docs = |hits: Vec<SearchHit>| {
        let mut d: Vec<String> = hits.into_iter().map(|h| h.chunk.document_id).collect();
        d.sort();
        d.dedup();
        d
    };
    r.filter = SearchFilter {
        after: Some(date_of("beta")),
        ..Default::default()
    };
    assert_eq!(docs(s.search(r.clone()).await.unwrap()), ["beta", "gamma"]);
    r.filter = SearchFilter {
        before: Some(date_of("beta")),
        ..Default::default()
    };
    assert_eq!(docs(s.search(r.clone()).await.unwrap()), ["alpha"]);
    r.filter = SearchFilter {
        after: Some(date_of("alpha")),
        before: Some(date_of("gamma")),
        ..Default::default()
    };
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        r.mode = mode;
        r.sparse = Some(sparse(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(
            docs(s.search(r.clone()).await.unwrap()),
            ["alpha", "beta"],
            "{mode:?}"
        );
    }
}

pub async fn replacing_a_document_keeps_only_the_new_version<S: VectorStore>(s: S) {
    let t = tenant("acme");
    seed(&s, &t).await;
    // Version 2 of alpha has one chunk; write it, then drop the other versions.
    let mut v2 = point("alpha", 5, [0.0, 0.0, 0.0, 1.0], &[9]);
    v2.chunk.version = "v2".into();
    s.upsert(&t, vec![v2]).await.unwrap();
    s.delete_document(&t, "alpha", Some("v2")).await.unwrap();
    assert_eq!(s.count(&t, Some("alpha")).await.unwrap(), 1);
    let hits = s
        .search(req(&t, SearchMode::Sparse, [0.0; DIM], &[9]))
        .await
        .unwrap();
    assert_eq!(hits[0].chunk.version, "v2");
    // Upserting the same chunk again replaces it rather than adding one.
    let mut again = point("alpha", 5, [0.0, 0.0, 0.0, 1.0], &[9]);
    again.chunk.version = "v2".into();
    again.chunk.text = "changed".into();
    s.upsert(&t, vec![again]).await.unwrap();
    assert_eq!(s.count(&t, Some("alpha")).await.unwrap(), 1);
    s.delete_document(&t, "alpha", None).await.unwrap();
    assert_eq!(s.count(&t, Some("alpha")).await.unwrap(), 0);
    assert_eq!(s.count(&t, None).await.unwrap(), 2);
}

pub async fn replace_document_swaps_versions_and_reports_them<S: VectorStore>(s: S) {
    let t = tenant("acme");
    seed(&s, &t).await;
    assert_eq!(
        s.document_version(&t, "alpha").await.unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(s.document_version(&t, "nope").await.unwrap(), None);
    assert_eq!(
        s.document_version(&tenant("evil"), "alpha").await.unwrap(),
        None
    );
    let mut v2 = point("alpha", 0, [0.0, 0.0, 0.0, 1.0], &[9]);
    v2.chunk.version = "v2".into();
    s.replace_document(&t, "alpha", vec![v2]).await.unwrap();
    assert_eq!(
        s.count(&t, Some("alpha")).await.unwrap(),
        1,
        "the old second chunk is gone"
    );
    assert_eq!(
        s.document_version(&t, "alpha").await.unwrap().as_deref(),
        Some("v2")
    );
    assert_eq!(s.count(&t, None).await.unwrap(), 3);
}

/// Searches beside a run of replacements always find `limit` chunks of one
/// version: never none, never a mix, never an older version after a newer one —
/// even when every chunk scores the same, so that an older version can fill the
/// top of a result while its delete runs.
pub async fn searches_beside_replacements_find_one_whole_version<S: VectorStore>(s: S) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    const LAST: usize = 9;
    let s = Arc::new(s);
    let t = tenant("acme");
    let version = |v: usize| -> Vec<VectorPoint> {
        let n = if v % 2 == 1 { 40 } else { 60 };
        (0..n)
            .map(|i| {
                let mut p = point("manual", i, [1.0, 0.0, 0.0, 0.0], &[1, 2]);
                p.chunk.version = format!("v{v:02}");
                p
            })
            .collect()
    };
    let request = |mode| SearchRequest {
        tenant: tenant("acme"),
        dense: Some(vec![1.0, 0.0, 0.0, 0.0]),
        sparse: Some(sparse(&[1, 2])),
        mode,
        filter: SearchFilter::default(),
        limit: 10,
    };
    s.upsert(&t, version(1)).await.unwrap();
    let modes = [SearchMode::Hybrid, SearchMode::Dense, SearchMode::Sparse];
    let stop = Arc::new(AtomicBool::new(false));
    let searched = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = modes
        .into_iter()
        .map(|mode| {
            let (s, stop, request) = (s.clone(), stop.clone(), request(mode));
            let searched = searched.clone();
            tokio::spawn(async move {
                let (mut searches, mut last) = (0, String::new());
                while !stop.load(Ordering::SeqCst) {
                    let hits = s.search(request.clone()).await.unwrap();
                    searches += 1;
                    let versions: Vec<&str> =
                        hits.iter().map(|h| h.chunk.version.as_str()).collect();
                    assert_eq!(hits.len(), 10, "{mode:?} search {searches}: {versions:?}");
                    assert!(
                        versions.iter().all(|v| *v == versions[0]),
                        "{mode:?} search {searches} mixes versions: {versions:?}"
                    );
                    assert!(
                        versions[0] >= last.as_str(),
                        "{mode:?} search {searches} went back from {last} to {}",
                        versions[0]
                    );
                    last = versions[0].to_owned();
                    searched.fetch_add(1, Ordering::SeqCst);
                }
                searches
            })
        })
        .collect();
    // Between two replacements the readers search a few times, however slow
    // the machine; a reader that stopped early failed, and says why below.
    let settle = async || {
        let (before, until) = (
            searched.load(Ordering::SeqCst),
            Instant::now() + Duration::from_secs(30),
        );
        while searched.load(Ordering::SeqCst) < before + modes.len() {
            if readers.iter().any(|r| r.is_finished()) {
                return false;
            }
            assert!(Instant::now() < until, "the readers stopped searching");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    };
    for v in 2..=LAST {
        if !settle().await {
            break;
        }
        s.replace_document(&t, "manual", version(v)).await.unwrap();
    }
    settle().await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() >= 1, "each reader searched");
    }
    for mode in modes {
        let hits = s.search(request(mode)).await.unwrap();
        assert_eq!(hits.len(), 10);
        assert!(
            hits.iter()
                .all(|h| h.chunk.version == format!("v{LAST:02}"))
        );
    }
    assert_eq!(s.count(&t, Some("manual")).await.unwrap(), 40);
}

/// One `#[tokio::test]` per case; `$make` yields a fresh store with `DIM`-sized
/// dense vectors.
#[macro_export]
macro_rules! vector_store_conformance {
    ($make:expr) => {
        $crate::vector_store_conformance!(@case $make; every_mode_ranks_the_nearest_first);
        $crate::vector_store_conformance!(@case $make; tenants_never_see_each_other);
        $crate::vector_store_conformance!(@case $make; filters_restrict_results);
        $crate::vector_store_conformance!(@case $make; replacing_a_document_keeps_only_the_new_version);
        $crate::vector_store_conformance!(@case $make; replace_document_swaps_versions_and_reports_them);
        $crate::vector_store_conformance!(@case $make; searches_beside_replacements_find_one_whole_version);
    };
    (@case $make:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let s = $make;
            $crate::conformance::$name(s).await;
        }
    };
}
