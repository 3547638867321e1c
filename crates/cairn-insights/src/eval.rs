//! Scoring of the labelled set `eval/insights.jsonl` (`cairn-eval insights`):
//! PII precision, recall and F1 per type (a detection counts when its span
//! overlaps a labelled span of the same type), the share of labelled PII values
//! still visible after redaction, sentiment accuracy and macro-F1, intent
//! accuracy and macro-F1, urgency accuracy. The same scorer reads the anchors'
//! predictions (Presidio, VADER), so every figure is computed one way.

use cairn_core::insights::{PiiEntity, redact};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One labelled PII span (character offsets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Cairn's PII type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Start (characters).
    pub start: usize,
    /// End, exclusive (characters).
    pub end: usize,
}

/// One labelled message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Id.
    pub id: String,
    /// The text.
    pub text: String,
    /// negative | neutral | positive.
    pub sentiment: String,
    /// Intent label.
    pub intent: String,
    /// low | medium | high.
    pub urgency: String,
    /// The PII in it.
    pub pii: Vec<Span>,
}

/// The PII spans an analysis found.
pub fn spans_of(a: &cairn_core::insights::Analysis) -> Vec<Span> {
    a.pii
        .entities
        .iter()
        .map(|e| Span {
            kind: e.kind.clone(),
            start: e.start,
            end: e.end,
        })
        .collect()
}

/// Reads a JSON-lines set.
pub fn load(text: &str) -> Result<Vec<Item>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Precision, recall and F1 of one PII type (or of all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Prf {
    /// Detections that overlap a labelled span of their type.
    pub true_positives: usize,
    /// Detections of this type.
    pub predicted: usize,
    /// Labelled spans found by some detection of their type.
    pub found: usize,
    /// Labelled spans.
    pub labelled: usize,
}

impl Prf {
    /// Precision (1 when nothing was predicted).
    pub fn precision(&self) -> f64 {
        if self.predicted == 0 {
            1.0
        } else {
            self.true_positives as f64 / self.predicted as f64
        }
    }
    /// Recall (1 when nothing was labelled).
    pub fn recall(&self) -> f64 {
        if self.labelled == 0 {
            1.0
        } else {
            self.found as f64 / self.labelled as f64
        }
    }
    /// F1.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    fn add(&mut self, o: Prf) {
        self.true_positives += o.true_positives;
        self.predicted += o.predicted;
        self.found += o.found;
        self.labelled += o.labelled;
    }
}

fn overlaps(a: &Span, b: &Span) -> bool {
    a.kind == b.kind && a.start < b.end && b.start < a.end
}

/// PII scores per type and overall, over `items` with `predicted[i]` the
/// detections in item `i`. Predicted types without any label in the set are
/// ignored (an anchor's extra types).
pub fn score_pii(items: &[Item], predicted: &[Vec<Span>]) -> BTreeMap<String, Prf> {
    let known: std::collections::BTreeSet<&str> = items
        .iter()
        .flat_map(|i| i.pii.iter().map(|s| s.kind.as_str()))
        .collect();
    let mut per: BTreeMap<String, Prf> = BTreeMap::new();
    for (item, pred) in items.iter().zip(predicted) {
        for p in pred.iter().filter(|p| known.contains(p.kind.as_str())) {
            let e = per.entry(p.kind.clone()).or_default();
            e.predicted += 1;
            if item.pii.iter().any(|g| overlaps(g, p)) {
                e.true_positives += 1;
            }
        }
        for g in &item.pii {
            let e = per.entry(g.kind.clone()).or_default();
            e.labelled += 1;
            if pred.iter().any(|p| overlaps(g, p)) {
                e.found += 1;
            }
        }
    }
    let mut all = Prf::default();
    for v in per.values() {
        all.add(*v);
    }
    per.insert("ALL".into(), all);
    per
}

/// The share of labelled PII values still present in the text after
/// redacting the predicted spans (whatever their type).
pub fn visible_after_redaction(items: &[Item], predicted: &[Vec<Span>]) -> f64 {
    let (mut visible, mut total) = (0usize, 0usize);
    for (item, pred) in items.iter().zip(predicted) {
        let entities: Vec<PiiEntity> = pred
            .iter()
            .map(|s| PiiEntity {
                kind: s.kind.clone(),
                start: s.start,
                end: s.end,
                score: 1.0,
                detector: String::new(),
                value: String::new(),
            })
            .collect();
        let redacted = redact(&item.text, &merge(entities));
        let chars: Vec<char> = item.text.chars().collect();
        for g in &item.pii {
            total += 1;
            let value: String = chars[g.start.min(chars.len())..g.end.min(chars.len())]
                .iter()
                .collect();
            if redacted.contains(&value) {
                visible += 1;
            }
        }
    }
    if total == 0 {
        0.0
    } else {
        visible as f64 / total as f64
    }
}

/// Overlapping spans merged into one (the redaction of overlapping anchor
/// detections covers their union).
fn merge(mut e: Vec<PiiEntity>) -> Vec<PiiEntity> {
    e.sort_by_key(|x| x.start);
    let mut out: Vec<PiiEntity> = Vec::new();
    for x in e {
        match out.last_mut() {
            Some(l) if x.start < l.end => l.end = l.end.max(x.end),
            _ => out.push(x),
        }
    }
    out
}

/// Accuracy and macro-F1 of labels.
pub fn accuracy_and_macro_f1(gold: &[String], pred: &[String]) -> (f64, f64) {
    let n = gold.len().max(1) as f64;
    let correct = gold.iter().zip(pred).filter(|(g, p)| g == p).count() as f64;
    let labels: std::collections::BTreeSet<&String> = gold.iter().collect();
    let mut f1s = Vec::new();
    for l in labels {
        let tp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| *g == l && *p == l)
            .count() as f64;
        let fp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| *g != l && *p == l)
            .count() as f64;
        let fneg = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| *g == l && *p != l)
            .count() as f64;
        let p = if tp + fp == 0.0 { 0.0 } else { tp / (tp + fp) };
        let r = if tp + fneg == 0.0 {
            0.0
        } else {
            tp / (tp + fneg)
        };
        f1s.push(if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        });
    }
    (
        correct / n,
        f1s.iter().sum::<f64>() / f1s.len().max(1) as f64,
    )
}

/// VADER's labels from its compound scores (its documented ±0.05 thresholds).
pub fn vader_label(compound: f64) -> &'static str {
    if compound >= 0.05 {
        "positive"
    } else if compound <= -0.05 {
        "negative"
    } else {
        "neutral"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str, pii: Vec<Span>) -> Item {
        Item {
            id: "x".into(),
            text: text.into(),
            sentiment: "neutral".into(),
            intent: "general_question".into(),
            urgency: "low".into(),
            pii,
        }
    }

    fn span(kind: &str, start: usize, end: usize) -> Span {
        Span {
            kind: kind.into(),
            start,
            end,
        }
    }

    #[test]
    fn overlap_scoring_per_type() {
        let items = vec![
            item(
                "mail a@b.io card 4111",
                vec![span("email", 5, 11), span("credit_card", 17, 21)],
            ),
            item("nothing here", vec![]),
        ];
        // One email found (partial overlap counts), the card missed, one false phone.
        let pred = vec![vec![span("email", 5, 9)], vec![span("phone", 0, 7)]];
        let s = score_pii(&items, &pred);
        assert_eq!(s["email"].f1(), 1.0);
        assert_eq!(s["credit_card"].recall(), 0.0);
        // `phone` has no label in the set: ignored.
        assert!(!s.contains_key("phone"));
        assert_eq!(s["ALL"].found, 1);
        assert_eq!(s["ALL"].labelled, 2);
        // The card stays visible; the email's remaining part does not match the whole value.
        assert_eq!(visible_after_redaction(&items, &pred), 0.5);
    }

    #[test]
    fn macro_f1() {
        let g: Vec<String> = ["a", "a", "b", "b"].iter().map(|s| (*s).into()).collect();
        let p: Vec<String> = ["a", "a", "b", "a"].iter().map(|s| (*s).into()).collect();
        let (acc, f1) = accuracy_and_macro_f1(&g, &p);
        assert_eq!(acc, 0.75);
        assert!((f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-9);
    }
}
