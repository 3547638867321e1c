//! Sentiment and emotion by lexicon and rules, in the VADER tradition (Hutto &
//! Gilbert, 2014): the VADER lexicon (`data/vader_lexicon.tsv`, MIT), its
//! boosters, negation, capitalisation, "but" and punctuation rules, and a
//! normalised compound score; extended for support language by
//! `data/support_lexicon.tsv`:
//!
//! - phrases a word lexicon misses ("doesn't work", "charged twice", "down
//!   again", "works now") are read as one token with their own valence;
//! - politeness and request words VADER reads as positive ("please", "help",
//!   "would like", "support", "free trial") are neutral in a support request;
//! - sarcasm: a gushing word in a sentence that also complains ("great,
//!   another outage") counts against, not for;
//! - a wider neutral band, since support requests are mostly neutral.
//!
//! Emotion comes from cue words over the label (gratitude, anger, anxiety,
//! confusion, disappointment), with `frustrated` / `satisfied` / `neutral` as
//! the defaults of each label.

use cairn_core::insights::{Sentiment, SentimentLabel};
use std::collections::HashMap;
use std::sync::LazyLock;

const B_INCR: f32 = 0.293;
const B_DECR: f32 = -0.293;
const C_INCR: f32 = 0.733;
const N_SCALAR: f32 = -0.74;
/// Compound at or above: positive.
const POSITIVE_AT: f32 = 0.3;
/// Compound at or below: negative.
const NEGATIVE_AT: f32 = -0.1;

const NEGATE: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
    "no",
];

const BOOST_UP: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerably",
    "decidedly",
    "deeply",
    "enormously",
    "entirely",
    "especially",
    "exceptionally",
    "extremely",
    "fully",
    "greatly",
    "highly",
    "hugely",
    "incredibly",
    "intensely",
    "majorly",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "totally",
    "tremendously",
    "unbelievably",
    "unusually",
    "utterly",
    "very",
    "still",
    "seriously",
    "constantly",
];
const BOOST_DOWN: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "kinda",
    "less",
    "little",
    "marginally",
    "occasionally",
    "partly",
    "scarcely",
    "slightly",
    "somewhat",
    "sorta",
];

/// Gushing words that turn sour in a complaining sentence.
const SARCASM_POSITIVE: &[&str] = &[
    "great",
    "perfect",
    "fantastic",
    "wonderful",
    "awesome",
    "brilliant",
    "love",
    "lovely",
    "amazing",
    "nice",
    "superb",
    "excellent",
    "terrific",
    "thanks",
    "yay",
    "outstanding",
    "impressive",
    "genius",
    "splendid",
    "marvelous",
    "fabulous",
    "cool",
];

struct Lexicon {
    words: HashMap<String, f32>,
    /// Phrases (space-joined lowercase tokens) → valence; longest first.
    phrases: Vec<(Vec<String>, f32)>,
}

static LEX: LazyLock<Lexicon> = LazyLock::new(|| {
    let mut words = HashMap::new();
    for line in include_str!("../data/vader_lexicon.tsv").lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut it = line.split('\t');
        if let (Some(w), Some(v)) = (it.next(), it.next())
            && let Ok(v) = v.trim().parse::<f32>()
        {
            words.insert(w.to_owned(), v);
        }
    }
    let mut phrases = Vec::new();
    for line in include_str!("../data/support_lexicon.tsv").lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut it = line.split('\t');
        if let (Some(w), Some(v)) = (it.next(), it.next())
            && let Ok(v) = v.trim().parse::<f32>()
        {
            let toks: Vec<String> = w.split(' ').map(str::to_owned).collect();
            if toks.len() == 1 {
                words.insert(w.to_owned(), v);
            } else {
                phrases.push((toks, v));
            }
        }
    }
    phrases.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    Lexicon { words, phrases }
});

#[derive(Debug, Clone)]
struct Token {
    /// Lowercase form.
    lower: String,
    /// ALL CAPS in the text.
    caps: bool,
    /// Valence from a phrase match, when the token is a phrase.
    phrase: Option<f32>,
    /// Index of the sentence it belongs to.
    sentence: usize,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut sentence = 0;
    for raw in text.split_whitespace() {
        let ends_sentence = raw.ends_with(['.', '!', '?', ';']);
        let w = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
        let w = w.trim_matches('\'');
        if !w.is_empty() {
            let w = w.replace('’', "'");
            let letters: Vec<char> = w.chars().filter(|c| c.is_alphabetic()).collect();
            let caps = letters.len() > 1 && letters.iter().all(|c| c.is_uppercase());
            out.push(Token {
                lower: w.to_lowercase(),
                caps,
                phrase: None,
                sentence,
            });
        }
        if ends_sentence {
            sentence += 1;
        }
    }
    merge_phrases(out)
}

fn merge_phrases(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    'outer: while i < tokens.len() {
        for (p, v) in &LEX.phrases {
            if i + p.len() <= tokens.len() && p.iter().zip(&tokens[i..]).all(|(a, t)| *a == t.lower)
            {
                let caps = tokens[i..i + p.len()].iter().all(|t| t.caps);
                out.push(Token {
                    lower: p.join(" "),
                    caps,
                    phrase: Some(*v),
                    sentence: tokens[i].sentence,
                });
                i += p.len();
                continue 'outer;
            }
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

fn negated(t: &str) -> bool {
    NEGATE.contains(&t) || t.contains("n't")
}

fn booster(t: &Token, valence: f32, cap_diff: bool) -> f32 {
    let b = if BOOST_UP.contains(&t.lower.as_str()) {
        B_INCR
    } else if BOOST_DOWN.contains(&t.lower.as_str()) {
        B_DECR
    } else {
        return 0.0;
    };
    let mut s = if valence < 0.0 { -b } else { b };
    if t.caps && cap_diff {
        s += if valence > 0.0 { C_INCR } else { -C_INCR };
    }
    s
}

/// The valence of each token (0 for none), with VADER's rules applied.
fn valences(tokens: &[Token]) -> Vec<f32> {
    let cap_diff = tokens.iter().any(|t| t.caps) && tokens.iter().any(|t| !t.caps);
    let lex = &LEX.words;
    let mut out = vec![0.0f32; tokens.len()];
    for (i, t) in tokens.iter().enumerate() {
        if t.phrase.is_none()
            && (BOOST_UP.contains(&t.lower.as_str()) || BOOST_DOWN.contains(&t.lower.as_str()))
        {
            continue;
        }
        let Some(mut v) = t.phrase.or_else(|| lex.get(&t.lower).copied()) else {
            continue;
        };
        if v == 0.0 {
            continue;
        }
        if t.caps && cap_diff {
            v += if v > 0.0 { C_INCR } else { -C_INCR };
        }
        for back in 0..3 {
            if i <= back {
                break;
            }
            let prev = &tokens[i - back - 1];
            if prev.phrase.is_none() && !lex.contains_key(&prev.lower) {
                let mut s = booster(prev, v, cap_diff);
                if back == 1 {
                    s *= 0.95;
                } else if back == 2 {
                    s *= 0.9;
                }
                v += s;
            }
            // Negation (only for words; a phrase carries its own polarity).
            if t.phrase.is_none() && negated(&prev.lower) {
                let never_so = back > 0
                    && prev.lower == "never"
                    && matches!(tokens[i - back].lower.as_str(), "so" | "this");
                v *= if never_so { 1.25 } else { N_SCALAR };
                break;
            }
        }
        out[i] = v;
    }
    // "but": what follows weighs more than what precedes.
    if let Some(b) = tokens
        .iter()
        .position(|t| t.lower == "but" || t.lower == "however")
    {
        for (i, v) in out.iter_mut().enumerate() {
            if i < b {
                *v *= 0.5;
            } else if i > b {
                *v *= 1.5;
            }
        }
    }
    sarcasm(tokens, &mut out);
    out
}

/// A gushing word in a sentence that also complains counts against.
fn sarcasm(tokens: &[Token], v: &mut [f32]) {
    let sentences = tokens.last().map_or(0, |t| t.sentence + 1);
    for s in 0..sentences {
        let idx: Vec<usize> = (0..tokens.len())
            .filter(|i| tokens[*i].sentence == s)
            .collect();
        let complains = idx
            .iter()
            .any(|i| v[*i] <= -1.2 && tokens[*i].phrase.is_some())
            || idx
                .iter()
                .any(|i| matches!(tokens[*i].lower.as_str(), "another" | "again" | "yet"))
                && idx.iter().any(|i| v[*i] < -0.5);
        if !complains {
            continue;
        }
        for i in idx {
            if v[i] > 0.0 && SARCASM_POSITIVE.contains(&tokens[i].lower.as_str()) {
                v[i] = -v[i].abs() * 0.8;
            }
        }
    }
}

fn punctuation_emphasis(text: &str) -> f32 {
    let ep = text.matches('!').count().min(4) as f32 * 0.292;
    let qm = text.matches('?').count();
    let qp = if qm > 1 {
        if qm <= 3 { qm as f32 * 0.18 } else { 0.96 }
    } else {
        0.0
    };
    ep + qp
}

/// The compound score of VADER: the sum of valences, emphasised by punctuation,
/// normalised into [-1, 1].
fn compound(sum: f32, text: &str) -> f32 {
    if sum == 0.0 {
        return 0.0;
    }
    let p = punctuation_emphasis(text);
    let s = if sum > 0.0 { sum + p } else { sum - p };
    (s / (s * s + 15.0).sqrt()).clamp(-1.0, 1.0)
}

fn any_of(hay: &str, cues: &[&str]) -> bool {
    cues.iter().any(|c| hay.contains(c))
}

fn emotion(label: SentimentLabel, text: &str, tokens: &[Token]) -> &'static str {
    let l = text.to_lowercase();
    let caps_words = tokens
        .iter()
        .filter(|t| t.caps && t.lower.len() > 2)
        .count();
    let grateful = any_of(&l, &["thank", "appreciate", "grateful", "thx", "cheers"]);
    let angry = any_of(
        &l,
        &[
            "furious",
            "ridiculous",
            "unacceptable",
            "outrageous",
            "angry",
            "worst",
            "disgusting",
            "scam",
            "pathetic",
            "joke",
            "incompetent",
            "useless",
            "sick of",
            "fed up",
            "livid",
            "rip-off",
            "rip off",
            "lawyer",
            "sue ",
        ],
    ) || caps_words >= 2
        || l.contains("!!");
    let anxious = any_of(
        &l,
        &[
            "worried",
            "scared",
            "nervous",
            "anxious",
            "afraid",
            "panic",
            "fraud",
            "hacked",
            "stolen",
            "unauthori",
            "someone else",
            "asap",
            "urgent",
            "emergency",
            "deadline",
            "concerned",
            "losing money",
        ],
    );
    let confused = any_of(
        &l,
        &[
            "confus",
            "don't understand",
            "do not understand",
            "not sure",
            "unclear",
            "how do i",
            "how can i",
            "what does",
            "where do i",
            "where can i",
            "can't find",
            "cannot find",
            "doesn't make sense",
            "which one",
            "what is the difference",
        ],
    );
    let disappointed = any_of(
        &l,
        &[
            "disappoint",
            "let down",
            "expected better",
            "expected more",
            "sad",
            "shame",
            "regret",
        ],
    );
    match label {
        SentimentLabel::Negative if angry => "angry",
        SentimentLabel::Negative if anxious => "anxious",
        SentimentLabel::Negative if disappointed => "disappointed",
        SentimentLabel::Negative if confused => "confused",
        SentimentLabel::Negative => "frustrated",
        SentimentLabel::Positive if grateful => "grateful",
        SentimentLabel::Positive => "satisfied",
        SentimentLabel::Neutral if anxious => "anxious",
        SentimentLabel::Neutral if confused => "confused",
        SentimentLabel::Neutral if grateful => "grateful",
        SentimentLabel::Neutral => "neutral",
    }
}

/// The offline sentiment model.
#[derive(Debug, Clone, Copy, Default)]
pub struct SentimentModel;

impl SentimentModel {
    /// Loads the lexicons (once per process).
    pub fn new() -> Self {
        LazyLock::force(&LEX);
        Self
    }

    /// The compound score alone (for the eval's threshold sweeps).
    pub fn compound(&self, text: &str) -> f32 {
        let tokens = tokenize(text);
        let v = valences(&tokens);
        compound(v.iter().sum(), text)
    }

    /// The sentiment of `text`.
    pub fn analyze(&self, text: &str) -> Sentiment {
        let tokens = tokenize(text);
        let v = valences(&tokens);
        let score = compound(v.iter().sum(), text);
        let label = if score >= POSITIVE_AT {
            SentimentLabel::Positive
        } else if score <= NEGATIVE_AT {
            SentimentLabel::Negative
        } else {
            SentimentLabel::Neutral
        };
        let margin = match label {
            SentimentLabel::Positive => score - POSITIVE_AT,
            SentimentLabel::Negative => NEGATIVE_AT - score,
            SentimentLabel::Neutral => (score - NEGATIVE_AT).min(POSITIVE_AT - score),
        };
        let confidence = (0.55 + margin.max(0.0) * 0.9).min(0.99);
        // The strongest terms, for the one-line reasoning (lexicon terms only).
        let mut terms: Vec<(f32, &str)> = v
            .iter()
            .zip(&tokens)
            .filter(|(x, _)| **x != 0.0)
            .map(|(x, t)| (*x, t.lower.as_str()))
            .collect();
        terms.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
        let cues: Vec<String> = terms
            .iter()
            .filter(|(x, _)| match label {
                SentimentLabel::Positive => *x > 0.0,
                SentimentLabel::Negative => *x < 0.0,
                SentimentLabel::Neutral => true,
            })
            .take(3)
            .map(|(_, t)| format!("\"{t}\""))
            .collect();
        let reasoning = if cues.is_empty() {
            "no sentiment-bearing words".to_owned()
        } else {
            format!("{} ({})", label.as_str(), cues.join(", "))
        };
        Sentiment {
            label,
            score: (score * 1000.0).round() / 1000.0,
            confidence: (confidence * 100.0).round() / 100.0,
            emotion: emotion(label, text, &tokens).to_owned(),
            reasoning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(t: &str) -> SentimentLabel {
        SentimentModel::new().analyze(t).label
    }

    #[test]
    fn plain_cases() {
        assert_eq!(
            label("Thank you so much, that fixed it!"),
            SentimentLabel::Positive
        );
        assert_eq!(
            label("This is terrible, I want my money back"),
            SentimentLabel::Negative
        );
        assert_eq!(
            label("How do I change my billing address?"),
            SentimentLabel::Neutral
        );
    }

    #[test]
    fn support_language() {
        // Sarcasm.
        assert_eq!(label("Great, another outage."), SentimentLabel::Negative);
        assert_eq!(
            label("Oh perfect, the app crashed again"),
            SentimentLabel::Negative
        );
        // Politeness does not make a problem positive.
        assert_eq!(
            label("Thanks, but it still doesn't work"),
            SentimentLabel::Negative
        );
        assert_eq!(
            label("Hi, could you please help me update my plan? Thanks"),
            SentimentLabel::Neutral
        );
        // Negation.
        assert_eq!(
            label("The new export is not bad at all"),
            SentimentLabel::Positive
        );
    }

    #[test]
    fn emotions() {
        let m = SentimentModel::new();
        assert_eq!(
            m.analyze("This is RIDICULOUS, worst service ever!!")
                .emotion,
            "angry"
        );
        assert_eq!(
            m.analyze("Thanks a lot, works perfectly now").emotion,
            "grateful"
        );
        assert_eq!(
            m.analyze("I'm worried someone hacked my account, there are charges I didn't make")
                .emotion,
            "anxious"
        );
        let s = m.analyze("fine");
        assert!((-1.0..=1.0).contains(&s.score) && (0.0..=1.0).contains(&s.confidence));
    }
}
