//! Intent: one label of a taxonomy (`data/taxonomy.json` by default, per tenant
//! overridable), chosen by nearest examples.
//!
//! With a dense embedder (MiniLM, the model Cairn already loads for retrieval)
//! each intent's score is the mean of its two most similar examples (cosine of
//! normalised sentence embeddings), nudged by the intent's keywords; below
//! `threshold` the message is out of scope and falls back to the taxonomy's
//! `fallback` label (`general_question`). Without an embedder, the same
//! examples and keywords are matched lexically (a weaker model; the analyser
//! says which one ran).

use cairn_core::ports::DenseEmbedder;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// One intent of a taxonomy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentDef {
    /// The label (`[a-z0-9_]+`).
    pub label: String,
    /// What it covers.
    pub description: String,
    /// Words and phrases that suggest it.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Example messages.
    pub examples: Vec<String>,
    /// Added to the intent's score when one of its keywords is present, for
    /// intents that must win over ones they overlap (a refund request talks
    /// about charges too). Between 0 and 1.
    #[serde(default)]
    pub priority: f32,
}

/// An intent taxonomy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taxonomy {
    /// Version of the taxonomy (reported in `analyzer`).
    #[serde(default)]
    pub version: String,
    /// The label of out-of-scope messages.
    pub fallback: String,
    /// The intents.
    pub intents: Vec<IntentDef>,
}

/// Why a taxonomy was refused.
#[derive(Debug, thiserror::Error)]
#[error("intent taxonomy: {0}")]
pub struct TaxonomyError(pub String);

impl Taxonomy {
    /// The taxonomy shipped with Cairn.
    pub fn default_taxonomy() -> Taxonomy {
        #[allow(clippy::expect_used)] // shipped data, checked by a test
        Taxonomy::parse(include_str!("../data/taxonomy.json"))
            .expect("the shipped taxonomy is valid")
    }

    /// Parses and checks a taxonomy (JSON).
    pub fn parse(json: &str) -> Result<Taxonomy, TaxonomyError> {
        let t: Taxonomy = serde_json::from_str(json).map_err(|e| TaxonomyError(e.to_string()))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 64
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let mut seen = HashSet::new();
        for i in &t.intents {
            if !label_ok(&i.label) || !seen.insert(i.label.as_str()) {
                return Err(TaxonomyError(format!(
                    "label `{}` must be unique and match [a-z0-9_]{{1,64}}",
                    i.label
                )));
            }
            if !(0.0..=1.0).contains(&i.priority) {
                return Err(TaxonomyError(format!(
                    "intent `{}`: priority must be between 0 and 1",
                    i.label
                )));
            }
            if i.examples.is_empty() || i.examples.len() > 200 {
                return Err(TaxonomyError(format!(
                    "intent `{}` needs 1 to 200 examples",
                    i.label
                )));
            }
        }
        if !seen.contains(t.fallback.as_str()) {
            return Err(TaxonomyError(format!(
                "fallback `{}` is not one of the intents",
                t.fallback
            )));
        }
        Ok(t)
    }

    /// Reads a taxonomy file.
    pub fn load(path: &std::path::Path) -> Result<Taxonomy, TaxonomyError> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| TaxonomyError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&s)
    }
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| w.len() > 1 && !STOP.contains(w))
        .map(str::to_owned)
        .collect()
}

const STOP: &[&str] = &[
    "the", "a", "an", "and", "or", "to", "of", "in", "on", "for", "is", "it", "my", "me", "i",
    "you", "your", "we", "our", "this", "that", "be", "was", "are", "with", "at", "by", "from",
    "can", "do", "have", "has", "please", "hi", "hello", "thanks", "there", "so", "but", "just",
    "its", "i'm", "am", "im", "what", "why", "how", "when", "where",
];

fn keyword_hits(lower: &str, keywords: &[String]) -> f32 {
    let mut hits = 0.0f32;
    for k in keywords {
        let found = lower.match_indices(k.as_str()).any(|(i, _)| {
            let pre = lower[..i].chars().next_back();
            let post = lower[i + k.len()..].chars().next();
            !pre.is_some_and(char::is_alphanumeric) && !post.is_some_and(char::is_alphanumeric)
        });
        if found {
            hits += if k.contains(' ') { 1.5 } else { 1.0 };
        }
    }
    hits.min(3.0)
}

/// Embedded examples: one unit vector per example, with its intent index.
struct Embedded {
    vectors: Vec<(usize, Vec<f32>)>,
}

/// Classifies messages into a taxonomy's intents.
pub struct IntentClassifier {
    taxonomy: Taxonomy,
    embedder: Option<Arc<dyn DenseEmbedder>>,
    threshold: f32,
    embedded: OnceCell<Embedded>,
    example_words: Vec<Vec<HashSet<String>>>,
}

impl IntentClassifier {
    /// A classifier of `taxonomy`, dense when `embedder` is given.
    pub fn new(
        taxonomy: Taxonomy,
        embedder: Option<Arc<dyn DenseEmbedder>>,
        threshold: f32,
    ) -> Self {
        let example_words = taxonomy
            .intents
            .iter()
            .map(|i| {
                i.examples
                    .iter()
                    .map(|e| words(e).into_iter().collect())
                    .collect()
            })
            .collect();
        Self {
            taxonomy,
            embedder,
            threshold,
            embedded: OnceCell::new(),
            example_words,
        }
    }

    /// `minilm` or `lexical`, and the taxonomy version.
    pub fn model(&self) -> String {
        let m = match &self.embedder {
            Some(e) => e.name().to_owned(),
            None => "lexical".to_owned(),
        };
        format!("{m}+taxonomy-{}", self.taxonomy.version)
    }

    /// The taxonomy.
    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    async fn examples(&self, e: &Arc<dyn DenseEmbedder>) -> Result<&Embedded, String> {
        self.embedded
            .get_or_try_init(|| async {
                let mut texts = Vec::new();
                let mut owners = Vec::new();
                for (i, d) in self.taxonomy.intents.iter().enumerate() {
                    for ex in &d.examples {
                        texts.push(ex.clone());
                        owners.push(i);
                    }
                }
                let vecs = e.embed(&texts).await.map_err(|e| e.to_string())?;
                Ok(Embedded {
                    vectors: owners.into_iter().zip(vecs.into_iter().map(unit)).collect(),
                })
            })
            .await
    }

    /// The intent and its confidence for each text.
    pub async fn classify(&self, texts: &[&str]) -> Result<Vec<(String, f32)>, String> {
        let n = self.taxonomy.intents.len();
        let lowers: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
        let hits: Vec<Vec<f32>> = lowers
            .iter()
            .map(|l| {
                self.taxonomy
                    .intents
                    .iter()
                    .map(|i| keyword_hits(l, &i.keywords))
                    .collect()
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        match &self.embedder {
            Some(e) => {
                let ex = self.examples(e).await?;
                let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
                let vecs = e.embed(&owned).await.map_err(|e| e.to_string())?;
                for (k, v) in vecs.into_iter().enumerate() {
                    let v = unit(v);
                    let mut per: Vec<Vec<f32>> = vec![Vec::new(); n];
                    for (i, x) in &ex.vectors {
                        per[*i].push(dot(&v, x));
                    }
                    let dense: Vec<f32> = per.into_iter().map(top2_mean).collect();
                    let scores: Vec<f32> = dense
                        .iter()
                        .zip(&hits[k])
                        .zip(&self.taxonomy.intents)
                        .map(|((d, h), i)| {
                            d + 0.04 * h + if *h > 0.0 { 0.1 * i.priority } else { 0.0 }
                        })
                        .collect();
                    out.push(self.pick(&scores, &dense, self.threshold));
                }
            }
            None => {
                for (k, l) in lowers.iter().enumerate() {
                    let lexical = self.lexical(l);
                    let scores: Vec<f32> = lexical
                        .iter()
                        .zip(&hits[k])
                        .zip(&self.taxonomy.intents)
                        .map(|((d, h), i)| {
                            d + 0.15 * h + if *h > 0.0 { 0.3 * i.priority } else { 0.0 }
                        })
                        .collect();
                    out.push(self.pick(&scores, &scores, 0.12));
                }
            }
        }
        Ok(out)
    }

    /// Per intent, the best word overlap (Jaccard) with one of its examples.
    fn lexical(&self, lower: &str) -> Vec<f32> {
        let w: HashSet<String> = words(lower).into_iter().collect();
        self.example_words
            .iter()
            .map(|exs| {
                exs.iter()
                    .map(|e| {
                        let inter = w.intersection(e).count() as f32;
                        let union = w.union(e).count().max(1) as f32;
                        inter / union
                    })
                    .fold(0.0f32, f32::max)
            })
            .collect()
    }

    /// The best intent, or the fallback when `gate` (the model's own score of
    /// the best) is under `threshold` and no keyword argued for it.
    fn pick(&self, scores: &[f32], gate: &[f32], threshold: f32) -> (String, f32) {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        let (Some(&best), second) = (order.first(), order.get(1).copied()) else {
            return (self.taxonomy.fallback.clone(), 0.0);
        };
        let margin = scores[best] - second.map_or(0.0, |s| scores[s]);
        if gate[best] < threshold && scores[best] - gate[best] < 0.01 {
            let conf = (0.5 + (threshold - gate[best])).clamp(0.3, 0.9);
            return (
                self.taxonomy.fallback.clone(),
                (conf * 100.0).round() / 100.0,
            );
        }
        let conf = (0.45 + margin * 4.0 + (scores[best] - threshold).max(0.0)).clamp(0.3, 0.99);
        (
            self.taxonomy.intents[best].label.clone(),
            (conf * 100.0).round() / 100.0,
        )
    }
}

fn top2_mean(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| b.total_cmp(a));
    match v.len() {
        0 => 0.0,
        1 => v[0],
        _ => (v[0] + v[1]) / 2.0,
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        for x in &mut v {
            *x /= n;
        }
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_taxonomy_is_valid() {
        let t = Taxonomy::default_taxonomy();
        assert_eq!(t.fallback, "general_question");
        assert_eq!(t.intents.len(), 9);
    }

    #[test]
    fn bad_taxonomies_are_refused() {
        assert!(Taxonomy::parse(r#"{"fallback":"x","intents":[{"label":"Bad Label","description":"","examples":["a"]}]}"#).is_err());
        assert!(
            Taxonomy::parse(
                r#"{"fallback":"x","intents":[{"label":"y","description":"","examples":["a"]}]}"#
            )
            .is_err()
        );
        assert!(
            Taxonomy::parse(
                r#"{"fallback":"y","intents":[{"label":"y","description":"","examples":[]}]}"#
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn lexical_classification() {
        let c = IntentClassifier::new(Taxonomy::default_taxonomy(), None, 0.35);
        let r = c
            .classify(&[
                "I want a refund for my order",
                "I can't log in, password reset never arrives",
                "zzz qqq",
            ])
            .await
            .unwrap();
        assert_eq!(r[0].0, "refund_request");
        assert_eq!(r[1].0, "account_access");
        assert_eq!(r[2].0, "general_question");
    }
}
