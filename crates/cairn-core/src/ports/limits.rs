//! RateLimiter: GCRA request limits shared by the replicas that use the same
//! store; and TokenBudget: the per-tenant token budget checked before each model
//! call.

use super::StoreError;
use crate::domain::Usage;
use crate::ids::TenantId;
use async_trait::async_trait;
use std::time::Duration;

/// One limit a request must pass: `key` may make `per_minute` requests per
/// minute, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRule {
    /// What is limited; starts with the tenant id, e.g. `acme:messages` or
    /// `acme/ana:messages` (a Redis adapter groups a tenant's keys by it).
    pub key: String,
    /// Sustained requests per minute (at least 1).
    pub per_minute: u32,
    /// Requests at once (at least 1).
    pub burst: u32,
}

impl RateRule {
    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(60_000_000 / u64::from(self.per_minute.max(1)))
    }
}

/// The outcome of a check, in the terms of the `RateLimit-*` and `Retry-After`
/// headers (of the rule with the least room left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDecision {
    /// True when the request may go ahead.
    pub allowed: bool,
    /// The burst of the tightest rule.
    pub limit: u32,
    /// Requests the tightest rule allows right now (after this one).
    pub remaining: u32,
    /// When the tightest rule is back at its full burst.
    pub reset: Duration,
    /// When refused: how long until a retry can pass.
    pub retry_after: Option<Duration>,
}

/// GCRA limits.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Checks every rule and, when all pass, counts the request against each.
    /// A refused request counts against none of them on a shared store (Redis);
    /// the in-process limiter may have counted it against rules checked before
    /// the one that refused.
    async fn check(&self, rules: &[RateRule]) -> Result<RateDecision, StoreError>;
}

/// Why a model call may not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// Which limit, e.g. `daily_input_tokens`.
    pub limit: &'static str,
    /// The limit's value.
    pub allowed: u64,
    /// Tokens used so far in the period.
    pub used: u64,
}

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (period, kind) = match self.limit {
            "daily_input_tokens" => ("today", "input"),
            "daily_output_tokens" => ("today", "output"),
            "monthly_input_tokens" => ("this month", "input"),
            _ => ("this month", "output"),
        };
        write!(
            f,
            "the tenant's token budget is spent: {} of {} {kind} tokens used {period} (budgets.{}); \
             it renews at the start of the next {} (UTC)",
            self.used,
            self.allowed,
            self.limit,
            if period == "today" { "day" } else { "month" }
        )
    }
}

/// Token use of one tenant in the current day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Today (UTC).
    pub day: Usage,
    /// This calendar month (UTC).
    pub month: Usage,
}

/// The per-tenant token budget of model calls.
#[async_trait]
pub trait TokenBudget: Send + Sync + 'static {
    /// Ok when `tenant` may make another model call now.
    async fn check(&self, tenant: &TenantId) -> Result<Result<(), BudgetExceeded>, StoreError>;

    /// Records the usage of one model call, once per `call_id` (a retried
    /// record of the same call is not counted twice).
    async fn record(
        &self,
        tenant: &TenantId,
        call_id: &str,
        usage: Usage,
    ) -> Result<(), StoreError>;

    /// What `tenant` used today and this month.
    async fn totals(&self, tenant: &TenantId) -> Result<UsageTotals, StoreError>;
}
