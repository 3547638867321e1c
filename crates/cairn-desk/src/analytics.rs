//! Analytics: bus events folded into counter updates, and reports read back
//! from the counters.
//!
//! Every counted event adds to two buckets: its UTC hour (`h2026120113`) and
//! its UTC day (`d20261201`). A report over a range reads whole days from day
//! buckets and the ragged ends from hour buckets ([`plan`]), so its cost
//! depends on the range, never on how many tickets or messages there are.
//!
//! What each event counts (the dedup key in brackets; a redelivery or a
//! duplicate publication counts nothing):
//!
//! | event               | counters                                                    |
//! |---------------------|-------------------------------------------------------------|
//! | `user.message`      | `messages`, `messages.user` [message id]                    |
//! | `support.message`   | `messages`, `messages.customer` / `messages.agent` [message id] |
//! | `turn.summary`      | `turns`, `turns.answered`/`failed`, `conversations` (first turn), `latency.N` (histogram), `latency.sum_ms`, `tool.T.calls`/`errors`, `tokens.in`/`out`, `agent.A.turns` [turn id] |
//! | `message.analysed`  | `intent.I`, `sentiment.S`, `urgency.U`, `escalations` [message id] |
//! | `ticket.submitted`  | `tickets`, `tickets.channel.C` (revision 1) [ticket id]       |
//! | `ticket.enriched`   | slot `ticket:ID`: `tickets.enriched`/`failed`, `tickets.category.C`, `tickets.sentiment.S`, `tickets.risk.N` (tenths), `tickets.risk_milli`, `tickets.high_risk` — in the ticket's creation hour; a newer revision replaces it |
//! | `feedback.recorded` | slot `feedback:CONV/MSG/USER`: `feedback.count`, `feedback.rated`, `feedback.rating_sum`, `feedback.rating.N`, `feedback.up`/`down`, and the same under `feedback.agent.A.` and `feedback.intent.I.`; a newer one replaces it |

use cairn_core::desk::*;
use cairn_core::envelope::*;
use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Growth factor between latency histogram buckets: percentiles are exact to
/// within 15 %.
const LATENCY_GROWTH: f64 = 1.15;
/// Histogram buckets (1.15^99 ms ≈ 10^6 s; slower turns land in the last).
const LATENCY_BUCKETS: i32 = 100;

/// The histogram bucket of a latency.
pub fn latency_bucket(ms: u64) -> i32 {
    if ms <= 1 {
        return 0;
    }
    ((ms as f64).ln() / LATENCY_GROWTH.ln())
        .ceil()
        .clamp(0.0, f64::from(LATENCY_BUCKETS - 1)) as i32
}

/// The upper bound (ms) of a histogram bucket.
pub fn latency_bound(bucket: i32) -> f64 {
    LATENCY_GROWTH.powi(bucket)
}

/// A counter-name part from outside text: a-z 0-9 _ - . only, at most 64.
fn part(s: &str) -> String {
    let out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() { "_".into() } else { out }
}

struct Builder {
    buckets: [String; 2],
    out: Vec<Increment>,
}

impl Builder {
    fn at(t: DateTime<Utc>) -> Self {
        Self {
            buckets: [hour_bucket(t), day_bucket(t)],
            out: Vec::new(),
        }
    }

    fn add(&mut self, field: impl Into<String>, delta: i64) -> &mut Self {
        let field = field.into();
        for b in &self.buckets {
            self.out.push(Increment {
                bucket: b.clone(),
                field: field.clone(),
                delta,
            });
        }
        self
    }
}

fn update(env: &Envelope, key: String, b: Builder) -> CounterUpdate {
    CounterUpdate {
        event_id: key,
        tenant: env.tenant_id.clone(),
        increments: b.out,
        slot: None,
    }
}

fn slot(env: &Envelope, key: String, version: u64, b: Builder) -> CounterUpdate {
    CounterUpdate {
        event_id: format!("{}#{version}", key),
        tenant: env.tenant_id.clone(),
        increments: Vec::new(),
        slot: Some(Slot {
            key,
            version,
            increments: b.out,
        }),
    }
}

fn time(v: &Value, field: &str) -> Option<DateTime<Utc>> {
    v.get(field)?.as_str()?.parse().ok()
}

/// The counter update an event makes, if it counts (`None` for events
/// analytics ignore, or that do not decode).
pub fn fold(env: &Envelope) -> Option<CounterUpdate> {
    let d = &env.data;
    match env.kind.as_str() {
        USER_MESSAGE => {
            let id = d.get("message_id")?.as_str()?;
            let mut b = Builder::at(time(d, "accepted_at")?);
            b.add("messages", 1).add("messages.user", 1);
            Some(update(env, format!("msg:{id}"), b))
        }
        SUPPORT_MESSAGE => {
            let id = d.get("message_id")?.as_str()?;
            let sender = part(d.get("sender")?.as_str()?);
            let mut b = Builder::at(time(d, "accepted_at")?);
            b.add("messages", 1).add(format!("messages.{sender}"), 1);
            Some(update(env, format!("msg:{id}"), b))
        }
        TURN_SUMMARY => {
            let s: TurnSummary = serde_json::from_value(d.clone()).ok()?;
            let mut b = Builder::at(s.ended_at);
            b.add("turns", 1)
                .add(format!("turns.{}", part(&s.outcome)), 1);
            if s.first_turn {
                b.add("conversations", 1);
            }
            b.add(format!("latency.{}", latency_bucket(s.latency_ms)), 1)
                .add("latency.sum_ms", s.latency_ms as i64)
                .add("tokens.in", s.usage.input_tokens as i64)
                .add("tokens.out", s.usage.output_tokens as i64);
            if let Some(a) = &s.agent {
                b.add(format!("agent.{}.turns", part(a)), 1);
            }
            for t in &s.tools {
                let name = part(&t.tool);
                b.add(format!("tool.{name}.calls"), 1);
                if t.is_error {
                    b.add(format!("tool.{name}.errors"), 1);
                }
            }
            Some(update(env, format!("turn:{}", s.turn_id), b))
        }
        MESSAGE_ANALYSED => {
            let m: AnalysedMessage = serde_json::from_value(d.clone()).ok()?;
            let mut b = Builder::at(m.accepted_at);
            b.add(format!("intent.{}", part(&m.intent)), 1)
                .add(format!("sentiment.{}", part(&m.sentiment)), 1)
                .add(format!("urgency.{}", part(&m.urgency)), 1);
            if m.escalate {
                b.add("escalations", 1);
            }
            Some(update(env, format!("analysed:{}", m.message_id), b))
        }
        TICKET_SUBMITTED => {
            let s: TicketSubmission = serde_json::from_value(d.clone()).ok()?;
            if s.revision != 1 {
                return None;
            }
            let mut b = Builder::at(s.submitted_at);
            b.add("tickets", 1)
                .add(format!("tickets.channel.{}", part(&s.channel)), 1);
            Some(update(env, format!("ticket:{}", s.ticket_id), b))
        }
        TICKET_ENRICHED => {
            let e: TicketEnriched = serde_json::from_value(d.clone()).ok()?;
            let mut b = Builder::at(e.created_at);
            match e.state {
                EnrichmentState::Enriched => {
                    b.add("tickets.enriched", 1);
                    if let Some(c) = &e.category {
                        b.add(format!("tickets.category.{}", part(c)), 1);
                    }
                    if let Some(s) = &e.sentiment {
                        b.add(format!("tickets.sentiment.{}", part(s)), 1);
                    }
                    if let Some(r) = e.risk {
                        let r = r.clamp(0.0, 1.0);
                        b.add(format!("tickets.risk.{}", ((r * 10.0) as i64).min(9)), 1)
                            .add("tickets.risk_milli", (r * 1000.0).round() as i64)
                            .add("tickets.scored", 1);
                    }
                    if e.high_risk {
                        b.add("tickets.high_risk", 1);
                    }
                }
                EnrichmentState::Failed => {
                    b.add("tickets.failed", 1);
                }
                EnrichmentState::Pending => return None,
            }
            Some(slot(env, format!("ticket:{}", e.ticket_id), e.revision, b))
        }
        FEEDBACK_RECORDED => {
            let f: Feedback = serde_json::from_value(d.clone()).ok()?;
            let mut b = Builder::at(f.recorded_at);
            let mut scopes = vec!["feedback".to_owned()];
            if let Some(a) = &f.agent {
                scopes.push(format!("feedback.agent.{}", part(a)));
            }
            if let Some(i) = &f.intent {
                scopes.push(format!("feedback.intent.{}", part(i)));
            }
            for s in &scopes {
                b.add(format!("{s}.count"), 1);
                if let Some(r) = f.rating {
                    b.add(format!("{s}.rated"), 1)
                        .add(format!("{s}.rating_sum"), i64::from(r));
                    if s == "feedback" {
                        b.add(format!("feedback.rating.{r}"), 1);
                    }
                }
                match f.thumb {
                    Some(Thumb::Up) => {
                        b.add(format!("{s}.up"), 1);
                    }
                    Some(Thumb::Down) => {
                        b.add(format!("{s}.down"), 1);
                    }
                    None => {}
                }
            }
            let key = format!(
                "feedback:{}/{}/{}",
                f.conversation_id, f.message_id, f.user_id
            );
            let version = f.recorded_at.timestamp_micros().max(0) as u64;
            Some(slot(env, key, version, b))
        }
        _ => None,
    }
}

/// A time range of a report, on hour boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
}

impl Range {
    /// `[from, to)` widened to whole hours.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let hour = Duration::hours(1);
        let from = from.duration_trunc(hour).unwrap_or(from);
        let mut to_h = to.duration_trunc(hour).unwrap_or(to);
        if to_h < to {
            to_h += hour;
        }
        Self {
            from,
            to: to_h.max(from),
        }
    }
}

/// The buckets that cover `r` exactly: hour buckets up to the first midnight,
/// day buckets for whole days, hour buckets after the last midnight.
pub fn plan(r: Range) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = r.from;
    let hour = Duration::hours(1);
    let day = Duration::days(1);
    while t < r.to {
        let midnight = t.duration_trunc(day).unwrap_or(t) == t;
        if midnight && t + day <= r.to {
            out.push(day_bucket(t));
            t += day;
        } else {
            out.push(hour_bucket(t));
            t += hour;
        }
    }
    out
}

/// The date of a bucket name.
fn bucket_date(b: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(b.get(1..9)?, "%Y%m%d").ok()
}

/// Counters summed over buckets, with the per-day sums kept for trends.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Field → sum over the range.
    pub sum: HashMap<String, i64>,
    /// Date → field → sum, for the fields trends need.
    pub by_day: BTreeMap<NaiveDate, HashMap<String, i64>>,
}

impl Totals {
    /// Sums `maps` (one per bucket of `buckets`).
    pub fn of(buckets: &[String], maps: &[HashMap<String, i64>]) -> Self {
        let mut t = Totals::default();
        for (b, m) in buckets.iter().zip(maps) {
            let day = bucket_date(b);
            for (k, v) in m {
                *t.sum.entry(k.clone()).or_default() += v;
                if let Some(d) = day
                    && (k.starts_with("sentiment.") || k == "messages")
                {
                    *t.by_day.entry(d).or_default().entry(k.clone()).or_default() += v;
                }
            }
        }
        t
    }

    fn get(&self, k: &str) -> i64 {
        self.sum.get(k).copied().unwrap_or(0)
    }

    /// `prefix.X` → count, for every X.
    fn family(&self, prefix: &str) -> BTreeMap<String, i64> {
        let p = format!("{prefix}.");
        self.sum
            .iter()
            .filter(|(k, v)| **v != 0 && k.starts_with(&p))
            .map(|(k, v)| (k[p.len()..].to_owned(), *v))
            .collect()
    }

    /// `prefix.X.suffix` → count, for every X (X without dots).
    fn family_of(&self, prefix: &str, suffix: &str) -> BTreeMap<String, i64> {
        let (p, s) = (format!("{prefix}."), format!(".{suffix}"));
        self.sum
            .iter()
            .filter(|(k, _)| k.starts_with(&p) && k.ends_with(&s) && k.len() > p.len() + s.len())
            .map(|(k, v)| (k[p.len()..k.len() - s.len()].to_owned(), *v))
            .filter(|(x, v)| !x.contains('.') && *v != 0)
            .collect()
    }

    fn percentile(&self, q: f64) -> Option<f64> {
        let hist: Vec<(i32, i64)> = (0..LATENCY_BUCKETS)
            .map(|i| (i, self.get(&format!("latency.{i}"))))
            .filter(|(_, n)| *n > 0)
            .collect();
        let total: i64 = hist.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as i64).max(1);
        let mut seen = 0;
        for (i, n) in hist {
            seen += n;
            if seen >= rank {
                return Some((latency_bound(i) * 10.0).round() / 10.0);
            }
        }
        None
    }
}

fn share(n: i64, total: i64) -> Value {
    if total == 0 {
        json!(0.0)
    } else {
        json!(((n as f64 / total as f64) * 1000.0).round() / 1000.0)
    }
}

fn ratio(n: i64, d: i64) -> Value {
    if d == 0 {
        Value::Null
    } else {
        json!(((n as f64 / d as f64) * 1000.0).round() / 1000.0)
    }
}

fn to_json(m: BTreeMap<String, i64>) -> Value {
    Value::Object(m.into_iter().map(|(k, v)| (k, json!(v))).collect())
}

/// `GET /v1/analytics/tickets`.
pub fn tickets_report(t: &Totals) -> Value {
    let mut by_risk = Map::new();
    let bands = [("low", 0..4), ("medium", 4..7), ("high", 7..10)];
    for (name, tenths) in bands {
        let n: i64 = tenths.map(|i| t.get(&format!("tickets.risk.{i}"))).sum();
        by_risk.insert(name.into(), json!(n));
    }
    json!({
        "total_tickets": t.get("tickets"),
        "enriched": t.get("tickets.enriched"),
        "failed": t.get("tickets.failed"),
        "avg_risk": ratio(t.get("tickets.risk_milli"), t.get("tickets.scored") * 1000),
        "high_risk_count": t.get("tickets.high_risk"),
        "by_category": to_json(t.family("tickets.category")),
        "by_sentiment": to_json(t.family("tickets.sentiment")),
        "by_channel": to_json(t.family("tickets.channel")),
        "by_risk": by_risk,
    })
}

fn feedback_block(t: &Totals, p: &str) -> Value {
    let rated = t.get(&format!("{p}.rated"));
    let (up, down) = (t.get(&format!("{p}.up")), t.get(&format!("{p}.down")));
    json!({
        "responses": t.get(&format!("{p}.count")),
        "rated": rated,
        "average_rating": ratio(t.get(&format!("{p}.rating_sum")), rated),
        "thumbs_up": up,
        "thumbs_down": down,
        "thumbs_up_rate": ratio(up, up + down),
    })
}

/// `GET /v1/analytics/satisfaction` and `GET /v1/feedback/summary`.
pub fn satisfaction_report(t: &Totals) -> Value {
    let mut v = feedback_block(t, "feedback");
    let ratings: Map<String, Value> = (1..=5)
        .map(|r| (r.to_string(), json!(t.get(&format!("feedback.rating.{r}")))))
        .collect();
    let satisfied = t.get("feedback.rating.4") + t.get("feedback.rating.5");
    v["ratings"] = Value::Object(ratings);
    v["csat"] = ratio(satisfied, t.get("feedback.rated"));
    let group = |scope: &str| {
        let names: HashSet<String> = t.family_of(scope, "count").into_keys().collect();
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        Value::Object(
            names
                .into_iter()
                .map(|n| {
                    let b = feedback_block(t, &format!("{scope}.{n}"));
                    (n, b)
                })
                .collect(),
        )
    };
    v["by_agent"] = group("feedback.agent");
    v["by_intent"] = group("feedback.intent");
    v
}

/// `GET /v1/analytics/intents`.
pub fn intents_report(t: &Totals) -> Value {
    let intents = t.family("intent");
    let total: i64 = intents.values().sum();
    let mut list: Vec<(String, i64)> = intents.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    json!({
        "total": total,
        "intents": list.into_iter().map(|(i, n)| json!({
            "intent": i, "messages": n, "share": share(n, total),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /v1/analytics/overview`.
pub fn overview(t: &Totals) -> Value {
    let turns = t.get("turns");
    let tools: Vec<Value> = t
        .family_of("tool", "calls")
        .into_iter()
        .map(|(name, calls)| {
            let errors = t.get(&format!("tool.{name}.errors"));
            json!({"tool": name, "calls": calls, "errors": errors, "error_rate": share(errors, calls)})
        })
        .collect();
    let trend: Vec<Value> = t
        .by_day
        .iter()
        .map(|(d, m)| {
            let g = |k: &str| m.get(k).copied().unwrap_or(0);
            json!({
                "date": d.to_string(),
                "messages": g("messages"),
                "positive": g("sentiment.positive"),
                "neutral": g("sentiment.neutral"),
                "negative": g("sentiment.negative"),
            })
        })
        .collect();
    let mut by_source = t.family("messages");
    by_source.retain(|k, _| !k.contains('.'));
    json!({
        "conversations": t.get("conversations"),
        "messages": t.get("messages"),
        "messages_by_source": to_json(by_source),
        "turns": {
            "total": turns,
            "answered": t.get("turns.answered"),
            "failed": t.get("turns.failed"),
            "latency_ms": {
                "p50": t.percentile(0.50),
                "p95": t.percentile(0.95),
                "p99": t.percentile(0.99),
                "mean": ratio(t.get("latency.sum_ms"), turns),
            },
            "by_agent": to_json(t.family_of("agent", "turns")),
        },
        "tools": tools,
        "tokens": {"input": t.get("tokens.in"), "output": t.get("tokens.out")},
        "intents": to_json(t.family("intent")),
        "sentiment": {"distribution": to_json(t.family("sentiment")), "trend": trend},
        "urgency": to_json(t.family("urgency")),
        "escalations": t.get("escalations"),
        "tickets": tickets_report(t),
        "satisfaction": satisfaction_report(t),
    })
}

/// Counters kept in memory with the stores' semantics (dedup per event id,
/// slots replaced by newer versions): the slow recount over raw events, and a
/// reference for tests.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    seen: HashSet<(String, String)>,
    slots: HashMap<(String, String), Slot>,
    counters: HashMap<(String, String), HashMap<String, i64>>,
}

impl MemoryCounters {
    /// Applies one update (once per event id).
    pub fn apply(&mut self, u: &CounterUpdate) {
        let tenant = u.tenant.to_string();
        if !self.seen.insert((tenant.clone(), u.event_id.clone())) {
            return;
        }
        let mut incs = u.increments.clone();
        if let Some(s) = &u.slot {
            let k = (tenant.clone(), s.key.clone());
            if let Some(change) = slot_change(self.slots.get(&k), s) {
                incs.extend(change);
                self.slots.insert(k, s.clone());
            }
        }
        for i in incs {
            let m = self
                .counters
                .entry((tenant.clone(), i.bucket.clone()))
                .or_default();
            let v = m.entry(i.field.clone()).or_default();
            *v += i.delta;
            if *v == 0 {
                m.remove(&i.field);
            }
        }
    }

    /// The counters of `buckets` for `tenant`.
    pub fn read(&self, tenant: &str, buckets: &[String]) -> Vec<HashMap<String, i64>> {
        buckets
            .iter()
            .map(|b| {
                self.counters
                    .get(&(tenant.to_owned(), b.clone()))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::TenantId;
    use chrono::TimeZone;

    #[test]
    fn a_range_is_covered_by_days_and_ragged_hours() {
        let from = Utc.with_ymd_and_hms(2026, 11, 1, 22, 30, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 11, 4, 1, 10, 0).unwrap();
        let b = plan(Range::new(from, to));
        assert_eq!(
            b,
            [
                "h2026110122",
                "h2026110123",
                "d20261102",
                "d20261103",
                "h2026110400",
                "h2026110401"
            ]
        );
        let on_the_hour = Utc.with_ymd_and_hms(2026, 11, 4, 1, 0, 0).unwrap();
        assert!(plan(Range::new(on_the_hour, on_the_hour)).is_empty());
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let tenant = TenantId::parse("acme").unwrap();
        let mut mem = MemoryCounters::default();
        for (i, ms) in (1..=100u64).map(|x| x * 10).enumerate() {
            let s = TurnSummary {
                tenant_id: tenant.clone(),
                conversation_id: "c".into(),
                turn_id: format!("t{i}"),
                first_turn: i == 0,
                outcome: "answered".into(),
                latency_ms: ms,
                agent: Some("billing".into()),
                intent: None,
                tools: vec![ToolUse {
                    tool: "lookup".into(),
                    is_error: i % 4 == 0,
                }],
                usage: Default::default(),
                ended_at: Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, 0).unwrap(),
            };
            let env = Envelope::new(
                TURN_SUMMARY,
                tenant.clone(),
                serde_json::to_value(&s).unwrap(),
            );
            let u = fold(&env).unwrap();
            mem.apply(&u);
            mem.apply(&u);
        }
        let buckets = vec!["d20261101".to_owned()];
        let t = Totals::of(&buckets, &mem.read("acme", &buckets));
        let o = overview(&t);
        assert_eq!(o["turns"]["total"], 100, "duplicates count once");
        assert_eq!(o["conversations"], 1);
        let p50 = o["turns"]["latency_ms"]["p50"].as_f64().unwrap();
        let p99 = o["turns"]["latency_ms"]["p99"].as_f64().unwrap();
        assert!((500.0..=500.0 * LATENCY_GROWTH).contains(&p50), "{p50}");
        assert!((990.0..=990.0 * LATENCY_GROWTH).contains(&p99), "{p99}");
        assert_eq!(o["tools"][0]["calls"], 100);
        assert_eq!(o["tools"][0]["errors"], 25);
        assert_eq!(o["turns"]["by_agent"]["billing"], 100);
    }

    #[test]
    fn newer_feedback_replaces_older() {
        let tenant = TenantId::parse("acme").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, 0).unwrap();
        let f = |rating: u8, secs: i64| {
            let f = Feedback {
                tenant_id: tenant.clone(),
                conversation_id: "c".into(),
                message_id: "m".into(),
                user_id: "u".into(),
                rating: Some(rating),
                thumb: None,
                comment: None,
                agent: Some("billing".into()),
                intent: Some("billing".into()),
                recorded_at: at + Duration::seconds(secs),
            };
            fold(&Envelope::new(
                FEEDBACK_RECORDED,
                tenant.clone(),
                serde_json::to_value(f).unwrap(),
            ))
            .unwrap()
        };
        let mut mem = MemoryCounters::default();
        mem.apply(&f(2, 0));
        mem.apply(&f(5, 10));
        mem.apply(&f(1, 5)); // older, arrives late
        let buckets = vec!["d20261101".to_owned()];
        let s = satisfaction_report(&Totals::of(&buckets, &mem.read("acme", &buckets)));
        assert_eq!(s["responses"], 1);
        assert_eq!(s["average_rating"], 5.0);
        assert_eq!(s["ratings"]["2"], 0);
        assert_eq!(s["by_agent"]["billing"]["average_rating"], 5.0);
    }
}
