//! BM25 sparse vectors. Documents get term-frequency weights normalised by length;
//! the store applies IDF at query time (the sparse vector's IDF modifier).

use cairn_core::ports::{SparseEmbedder, SparseVector};
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};

/// The BM25 embedder.
pub struct Bm25Embedder {
    inner: EdgeBm25,
}

impl Bm25Embedder {
    /// English BM25 (k1 = 1.2, b = 0.75, stemming, stop words).
    pub fn english() -> Result<Self, String> {
        let config = EdgeBm25Config {
            language: Some("english".into()),
            lowercase: Some(true),
            ..EdgeBm25Config::default()
        };
        Ok(Self {
            inner: EdgeBm25::new(config).map_err(|e| e.to_string())?,
        })
    }
}

fn convert(v: qdrant_edge::SparseVector) -> SparseVector {
    SparseVector {
        indices: v.indices,
        values: v.values,
    }
}

impl SparseEmbedder for Bm25Embedder {
    fn embed_document(&self, text: &str) -> SparseVector {
        convert(self.inner.embed_document(text))
    }

    fn embed_query(&self, text: &str) -> SparseVector {
        convert(self.inner.embed_query(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_and_drops_stop_words() {
        let e = Bm25Embedder::english().unwrap();
        let a = e.embed_query("resetting passwords");
        let b = e.embed_query("reset password");
        assert_eq!(a.indices.len(), 2);
        let (mut ai, mut bi) = (a.indices.clone(), b.indices.clone());
        ai.sort_unstable();
        bi.sort_unstable();
        assert_eq!(ai, bi, "stemming maps both to the same terms");
        assert!(e.embed_query("the of and").indices.is_empty());
    }
}
