//! The [`RateLimiter`] port on both backends, and the [`TokenBudget`] over any
//! [`CounterStore`].
//!
//! - [`LocalRateLimiter`]: GCRA in process (`governor`), one keyed limiter per
//!   distinct quota; for one replica (the embedded default).
//! - [`RedisRateLimiter`]: the same GCRA as one Lua script over every rule of a
//!   request, so all replicas share the limits and a refused request counts
//!   against none of them. The theoretical arrival time of each key is stored in
//!   microseconds with an expiry of its own reset.
//! - [`CounterBudget`]: token use in day (`ud20261201`) and month (`um202612`)
//!   counter buckets, recorded once per model call id.

use async_trait::async_trait;
use cairn_core::desk::{CounterUpdate, Increment};
use cairn_core::domain::Usage;
use cairn_core::gateway_config::BudgetsConfig;
use cairn_core::ids::TenantId;
use cairn_core::ports::{
    BudgetExceeded, CounterStore, RateDecision, RateLimiter, RateRule, StoreError, TokenBudget,
    UsageTotals,
};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, clock::Clock};
use redis::Script;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

type Keyed = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    StateInformationMiddleware,
>;

/// One keyed limiter per (per_minute, burst).
type ByQuota = HashMap<(u32, u32), Arc<Keyed>>;

/// GCRA in this process.
#[derive(Default, Clone)]
pub struct LocalRateLimiter {
    by_quota: Arc<Mutex<ByQuota>>,
}

impl LocalRateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, rule: &RateRule) -> Arc<Keyed> {
        let mut map = self
            .by_quota
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry((rule.per_minute, rule.burst))
            .or_insert_with(|| {
                let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(rule.interval())
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(nz(rule.burst));
                Arc::new(
                    governor::RateLimiter::keyed(quota)
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    /// Forgets keys that are back at full capacity (bounds memory to the active
    /// callers); call it now and then.
    pub fn sweep(&self) {
        let limiters: Vec<Arc<Keyed>> = self
            .by_quota
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for l in limiters {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, rules: &[RateRule]) -> Result<RateDecision, StoreError> {
        let mut out = RateDecision {
            allowed: true,
            limit: 0,
            remaining: u32::MAX,
            reset: Duration::ZERO,
            retry_after: None,
        };
        for rule in rules {
            let limiter = self.limiter(rule);
            match limiter.check_key(&rule.key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    if remaining < out.remaining {
                        out.remaining = remaining;
                        out.limit = rule.burst;
                        out.reset = rule.interval() * (rule.burst.saturating_sub(remaining));
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    out.allowed = false;
                    out.remaining = 0;
                    out.limit = rule.burst;
                    out.reset = rule.interval() * rule.burst;
                    out.retry_after = Some(out.retry_after.map_or(wait, |w| w.max(wait)));
                    // Later rules are not counted for a refused request.
                    break;
                }
            }
        }
        if out.remaining == u32::MAX {
            out.remaining = 0;
        }
        Ok(out)
    }
}

/// GCRA over every rule at once: KEYS are the rules' keys, ARGV their interval
/// (µs) and burst in pairs. Returns {allowed, limit, remaining, reset µs,
/// retry µs} of the tightest rule.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = 1
local limit, remaining, reset, retry = 0, -1, 0, 0
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  local left
  if allow_at > now then
    allowed = 0
    left = 0
    if allow_at - now > retry then retry = allow_at - now end
  else
    left = math.floor((now - allow_at) / interval)
  end
  tats[i] = new_tat
  if remaining < 0 or left < remaining then
    remaining = left
    limit = burst
    if left == 0 and allow_at > now then reset = tat - now else reset = new_tat - now end
  end
end
if allowed == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1)
  end
end
if remaining < 0 then remaining = 0 end
return {allowed, limit, remaining, reset, retry}",
    )
});

/// GCRA in Redis, shared by every replica.
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisRateLimiter {
    /// A limiter over `conn`; keys start with `prefix`.
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, rules: &[RateRule]) -> Result<RateDecision, StoreError> {
        if rules.is_empty() {
            return Ok(RateDecision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: None,
            });
        }
        let mut inv = GCRA.prepare_invoke();
        for r in rules {
            // Keys start with the tenant (`acme:…`, `acme/ana:…`): one hash tag
            // per tenant keeps a request's keys in one cluster slot.
            let tag = r.key.split(['/', ':']).next().unwrap_or_default();
            inv.key(format!("{}:{{rl/{tag}}}:{}", self.prefix, r.key));
            inv.arg(r.interval().as_micros() as u64).arg(r.burst.max(1));
        }
        let mut conn = self.conn.clone();
        let (allowed, limit, remaining, reset, retry): (i64, i64, i64, i64, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("rate limit script: {e}")))?;
        let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: limit.max(0) as u32,
            remaining: remaining.max(0) as u32,
            reset: micros(reset),
            retry_after: (allowed != 1).then(|| micros(retry)),
        })
    }
}

/// How long a model call's id is remembered against double counting.
const USAGE_DEDUP: Duration = Duration::from_secs(3 * 24 * 3600);

/// Token budgets over a counter store.
#[derive(Clone)]
pub struct CounterBudget {
    counters: Arc<dyn CounterStore>,
    config: Arc<BudgetsConfig>,
}

impl CounterBudget {
    /// Budgets of `config` counted in `counters`.
    pub fn new(counters: Arc<dyn CounterStore>, config: BudgetsConfig) -> Self {
        Self {
            counters,
            config: Arc::new(config),
        }
    }

    fn buckets(now: chrono::DateTime<chrono::Utc>) -> [String; 2] {
        [
            now.format("ud%Y%m%d").to_string(),
            now.format("um%Y%m").to_string(),
        ]
    }
}

fn usage_of(counters: &HashMap<String, i64>) -> Usage {
    let get = |k: &str| counters.get(k).copied().unwrap_or(0).max(0) as u64;
    Usage {
        input_tokens: get("input_tokens"),
        output_tokens: get("output_tokens"),
    }
}

#[async_trait]
impl TokenBudget for CounterBudget {
    async fn check(&self, tenant: &TenantId) -> Result<Result<(), BudgetExceeded>, StoreError> {
        let limits = self.config.limits(tenant.as_str());
        if limits.is_unlimited() {
            return Ok(Ok(()));
        }
        let t = self.totals(tenant).await?;
        for (limit, allowed, used) in [
            (
                "daily_input_tokens",
                limits.daily_input_tokens,
                t.day.input_tokens,
            ),
            (
                "daily_output_tokens",
                limits.daily_output_tokens,
                t.day.output_tokens,
            ),
            (
                "monthly_input_tokens",
                limits.monthly_input_tokens,
                t.month.input_tokens,
            ),
            (
                "monthly_output_tokens",
                limits.monthly_output_tokens,
                t.month.output_tokens,
            ),
        ] {
            if allowed > 0 && used >= allowed {
                return Ok(Err(BudgetExceeded {
                    limit,
                    allowed,
                    used,
                }));
            }
        }
        Ok(Ok(()))
    }

    async fn record(
        &self,
        tenant: &TenantId,
        call_id: &str,
        usage: Usage,
    ) -> Result<(), StoreError> {
        if usage == Usage::default() {
            return Ok(());
        }
        let mut increments = Vec::with_capacity(4);
        for bucket in Self::buckets(chrono::Utc::now()) {
            for (field, delta) in [
                ("input_tokens", usage.input_tokens),
                ("output_tokens", usage.output_tokens),
            ] {
                increments.push(Increment {
                    bucket: bucket.clone(),
                    field: field.into(),
                    delta: delta.min(i64::MAX as u64) as i64,
                });
            }
        }
        let update = CounterUpdate {
            event_id: format!("usage:{call_id}"),
            tenant: tenant.clone(),
            increments,
            slot: None,
        };
        self.counters
            .apply_counters(std::slice::from_ref(&update), USAGE_DEDUP)
            .await
            .map(|_| ())
    }

    async fn totals(&self, tenant: &TenantId) -> Result<UsageTotals, StoreError> {
        let read = self
            .counters
            .read_counters(tenant, &Self::buckets(chrono::Utc::now()))
            .await?;
        Ok(UsageTotals {
            day: read.first().map(usage_of).unwrap_or_default(),
            month: read.get(1).map(usage_of).unwrap_or_default(),
        })
    }
}
