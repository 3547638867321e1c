//! Gateway configuration: request rate limits (`[rate_limits]`), token budgets
//! for model calls (`[budgets]`), the Prometheus endpoint (`[metrics]`) and CORS
//! (`[cors]`) and OpenTelemetry traces (`[telemetry]`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A GCRA rate: `per_minute` sustained, up to `burst` at once. `per_minute = 0`
/// means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per minute, sustained.
    pub per_minute: u32,
    /// Requests allowed at once after a quiet period (at least 1).
    pub burst: u32,
}

/// The limits of one class of requests, per tenant and per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassLimits {
    /// Shared by every user of a tenant.
    pub tenant: Rate,
    /// Per user of a tenant.
    pub user: Rate,
}

impl Default for ClassLimits {
    fn default() -> Self {
        Self {
            tenant: Rate {
                per_minute: 0,
                burst: 1,
            },
            user: Rate {
                per_minute: 0,
                burst: 1,
            },
        }
    }
}

/// The classes a request is limited under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestClass {
    /// Posting a message or a ticket (starts model work).
    Messages,
    /// Uploading a document.
    Uploads,
    /// Every other authenticated request.
    Reads,
}

impl RequestClass {
    /// The name used in keys, metrics and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Uploads => "uploads",
            Self::Reads => "reads",
        }
    }
}

/// Per-tenant overrides of some classes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Overrides `rate_limits.messages`.
    pub messages: Option<ClassLimits>,
    /// Overrides `rate_limits.uploads`.
    pub uploads: Option<ClassLimits>,
    /// Overrides `rate_limits.reads`.
    pub reads: Option<ClassLimits>,
}

/// `[rate_limits]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Off: no request is limited.
    pub enabled: bool,
    /// Posting messages and tickets.
    pub messages: ClassLimits,
    /// Document uploads.
    pub uploads: ClassLimits,
    /// Every other authenticated request.
    pub reads: ClassLimits,
    /// Per-tenant overrides, by tenant id.
    pub tenants: BTreeMap<String, TenantLimits>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        let class = |tenant: u32, user: u32| ClassLimits {
            tenant: Rate {
                per_minute: tenant,
                burst: (tenant / 6).max(1),
            },
            user: Rate {
                per_minute: user,
                burst: (user / 6).max(1),
            },
        };
        Self {
            enabled: true,
            messages: class(1_200, 120),
            uploads: class(600, 60),
            reads: class(12_000, 1_200),
            tenants: BTreeMap::new(),
        }
    }
}

impl RateLimitsConfig {
    /// The limits of `class` for `tenant` (its override, else the default).
    pub fn limits(&self, tenant: &str, class: RequestClass) -> ClassLimits {
        let o = self.tenants.get(tenant);
        let pick = |t: Option<ClassLimits>, d: ClassLimits| t.unwrap_or(d);
        match class {
            RequestClass::Messages => pick(o.and_then(|o| o.messages), self.messages),
            RequestClass::Uploads => pick(o.and_then(|o| o.uploads), self.uploads),
            RequestClass::Reads => pick(o.and_then(|o| o.reads), self.reads),
        }
    }
}

/// Token limits of one tenant; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenLimits {
    /// Input (prompt) tokens per UTC day.
    pub daily_input_tokens: u64,
    /// Output (completion) tokens per UTC day.
    pub daily_output_tokens: u64,
    /// Input tokens per UTC calendar month.
    pub monthly_input_tokens: u64,
    /// Output tokens per UTC calendar month.
    pub monthly_output_tokens: u64,
}

impl TokenLimits {
    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// `[budgets]`: token budgets for model calls, per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetsConfig {
    /// The limits of every tenant without an override.
    #[serde(flatten)]
    pub default: TokenLimits,
    /// Per-tenant limits, by tenant id (replacing the default as a whole).
    pub tenants: BTreeMap<String, TokenLimits>,
}

impl BudgetsConfig {
    /// The limits of `tenant`.
    pub fn limits(&self, tenant: &str) -> TokenLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus text at `/metrics`.
    pub enabled: bool,
    /// Name of an environment variable holding a bearer token `/metrics`
    /// requires; unset: no token.
    pub bearer_token_env: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bearer_token_env: None,
        }
    }
}

/// `[cors]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser (`https://app.example.com`);
    /// empty: no CORS headers (browsers refuse cross-origin calls). `*` allows any
    /// origin (credentials are never allowed).
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: std::time::Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age: std::time::Duration::from_secs(600),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces over OTLP (HTTP/protobuf).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of the OTLP/HTTP receiver (`/v1/traces` is appended), e.g.
    /// `http://otel-collector:4318`. Unset: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// variables switch tracing on; with neither, no spans are recorded.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Fraction of new traces recorded (0.0 to 1.0); a sampled parent's
    /// decision is always followed.
    pub sample_ratio: f64,
    /// Timeout of one export.
    #[serde(with = "humantime_serde")]
    pub export_timeout: std::time::Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "cairn".into(),
            sample_ratio: 1.0,
            export_timeout: std::time::Duration::from_secs(10),
        }
    }
}
