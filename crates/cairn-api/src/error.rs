//! The error contract. Every error has a stable snake_case code, and the code
//! alone decides the HTTP status (one table: [`ErrorCode::status`]).

use crate::request_id;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Every error code the API returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not valid JSON.
    MalformedJson,
    /// A required field is missing from the body.
    MissingField,
    /// A field (or query parameter) has a bad value.
    InvalidField,
    /// The body is not declared as `application/json`.
    UnsupportedMediaType,
    /// The body is larger than `server.max_body_bytes`.
    PayloadTooLarge,
    /// No bearer token was sent.
    MissingToken,
    /// The token is malformed, badly signed, or fails a claim check.
    InvalidToken,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The token is valid but lacks a required scope.
    Forbidden,
    /// The conversation does not exist for this caller.
    ConversationNotFound,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// A conversation with this id already exists.
    Conflict,
    /// `?wait=true` gave up before the turn ended (the turn goes on).
    TurnTimeout,
    /// The conversation's queue holds `agent.max_queued_messages` already.
    QueueFull,
    /// The user holds `agent.max_conversations_per_user` conversations already.
    TooManyConversations,
    /// The user (or this process) has as many open event streams as allowed.
    TooManyStreams,
    /// The silence does not exist for this caller.
    SilenceNotFound,
    /// The alert pipeline is off (`alerts.enabled = false`).
    AlertsDisabled,
    /// Support intelligence is off (`insights.enabled = false`).
    InsightsDisabled,
    /// The ticket does not exist for this caller.
    TicketNotFound,
    /// Tickets are off (`tickets.enabled = false`).
    TicketsDisabled,
    /// Analytics are off (`analytics.enabled = false`).
    AnalyticsDisabled,
    /// The conversation has no such answer (feedback).
    MessageNotFound,
    /// The caller (or their tenant) sent more requests of this class than
    /// `rate_limits` allows; `Retry-After` says when to retry.
    RateLimited,
    /// The tenant's token budget (`budgets`) is spent for the day or month.
    BudgetExceeded,
    /// `model` names no model of `GET /v1/models`.
    ModelNotFound,
    /// The turn behind a chat completion failed; `details.turn_code` says how.
    TurnFailed,
    /// The turn to cancel is not queued or running (it ended, or never was).
    TurnNotRunning,
    /// `if_busy: "reject"` and the conversation has a turn queued or running.
    ConversationBusy,
    /// A fork would copy more than `agent.max_fork_messages` messages.
    ForkTooLarge,
    /// The schedule does not exist for this caller.
    ScheduleNotFound,
    /// The user holds `schedules.max_per_user` schedules already.
    TooManySchedules,
    /// No approval with this id waits in the conversation.
    ApprovalNotFound,
    /// The approval was decided already (the first decision counts).
    ApprovalDecided,
    /// A receiver refused a test notification or could not be reached.
    ReceiverFailed,
    /// A dependency (store, bus) is unavailable; retry later.
    Unavailable,
    /// A bug; the request id helps find it in the logs.
    Internal,
}

impl ErrorCode {
    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedJson | InvalidField => StatusCode::BAD_REQUEST,
            MissingField | ForkTooLarge => StatusCode::UNPROCESSABLE_ENTITY,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            MissingToken | InvalidToken | TokenExpired => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            ConversationNotFound | NotFound | SilenceNotFound | AlertsDisabled
            | InsightsDisabled | TicketNotFound | TicketsDisabled | AnalyticsDisabled
            | MessageNotFound | ModelNotFound | ApprovalNotFound | ScheduleNotFound => {
                StatusCode::NOT_FOUND
            }
            ReceiverFailed | TurnFailed => StatusCode::BAD_GATEWAY,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict | TurnNotRunning | ConversationBusy | ApprovalDecided => StatusCode::CONFLICT,
            TurnTimeout => StatusCode::GATEWAY_TIMEOUT,
            QueueFull | TooManyConversations | TooManyStreams | RateLimited | BudgetExceeded
            | TooManySchedules => StatusCode::TOO_MANY_REQUESTS,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            MissingField => "missing_field",
            InvalidField => "invalid_field",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            MissingToken => "missing_token",
            InvalidToken => "invalid_token",
            TokenExpired => "token_expired",
            Forbidden => "forbidden",
            ConversationNotFound => "conversation_not_found",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Conflict => "conflict",
            TurnTimeout => "turn_timeout",
            QueueFull => "queue_full",
            TooManyConversations => "too_many_conversations",
            TooManyStreams => "too_many_streams",
            SilenceNotFound => "silence_not_found",
            AlertsDisabled => "alerts_disabled",
            InsightsDisabled => "insights_disabled",
            TicketNotFound => "ticket_not_found",
            TicketsDisabled => "tickets_disabled",
            AnalyticsDisabled => "analytics_disabled",
            MessageNotFound => "message_not_found",
            RateLimited => "rate_limited",
            BudgetExceeded => "budget_exceeded",
            ModelNotFound => "model_not_found",
            TurnNotRunning => "turn_not_running",
            ConversationBusy => "conversation_busy",
            ForkTooLarge => "fork_too_large",
            ScheduleNotFound => "schedule_not_found",
            TooManySchedules => "too_many_schedules",
            ApprovalNotFound => "approval_not_found",
            ApprovalDecided => "approval_decided",
            TurnFailed => "turn_failed",
            ReceiverFailed => "receiver_failed",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }
}

/// An API error; renders as the error contract.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The code (decides the status).
    pub code: ErrorCode,
    /// A readable explanation.
    pub message: String,
    /// Structured details (the field, the limit, …).
    pub details: Value,
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// `invalid_field` naming the field in `details`.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidField, message).with_details(json!({ "field": field }))
    }

    /// The conversation was not found (also used for other tenants' and users' ids).
    pub fn conversation_not_found() -> Self {
        Self::new(ErrorCode::ConversationNotFound, "conversation not found")
    }

    /// A dependency failed; logged with its cause, reported without it.
    pub fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{what} unavailable");
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable; retry later"),
        )
    }
}

impl From<cairn_core::ports::StoreError> for ApiError {
    fn from(e: cairn_core::ports::StoreError) -> Self {
        use cairn_core::ports::StoreError::*;
        match e {
            NotFound => ApiError::conversation_not_found(),
            AlreadyExists => ApiError::new(ErrorCode::Conflict, "conversation already exists"),
            other => ApiError::unavailable("the memory store", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "details": self.details,
                "request_id": request_id::current(),
            }
        });
        (self.code.status(), axum::Json(body)).into_response()
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ErrorCode {
    /// Every code, in declaration order (the OpenAPI document lists them).
    pub const ALL: [ErrorCode; 38] = [
        ErrorCode::MalformedJson,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::MissingToken,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::ConversationNotFound,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::TurnTimeout,
        ErrorCode::QueueFull,
        ErrorCode::TooManyConversations,
        ErrorCode::TooManyStreams,
        ErrorCode::SilenceNotFound,
        ErrorCode::AlertsDisabled,
        ErrorCode::InsightsDisabled,
        ErrorCode::TicketNotFound,
        ErrorCode::TicketsDisabled,
        ErrorCode::AnalyticsDisabled,
        ErrorCode::MessageNotFound,
        ErrorCode::RateLimited,
        ErrorCode::BudgetExceeded,
        ErrorCode::ModelNotFound,
        ErrorCode::TurnFailed,
        ErrorCode::TurnNotRunning,
        ErrorCode::ConversationBusy,
        ErrorCode::ForkTooLarge,
        ErrorCode::ScheduleNotFound,
        ErrorCode::TooManySchedules,
        ErrorCode::ApprovalNotFound,
        ErrorCode::ApprovalDecided,
        ErrorCode::ReceiverFailed,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The position of the code in [`ErrorCode::ALL`]; a new variant fails to
    /// compile here until it is added to both.
    pub const fn index(self) -> usize {
        match self {
            ErrorCode::MalformedJson => 0,
            ErrorCode::MissingField => 1,
            ErrorCode::InvalidField => 2,
            ErrorCode::UnsupportedMediaType => 3,
            ErrorCode::PayloadTooLarge => 4,
            ErrorCode::MissingToken => 5,
            ErrorCode::InvalidToken => 6,
            ErrorCode::TokenExpired => 7,
            ErrorCode::Forbidden => 8,
            ErrorCode::ConversationNotFound => 9,
            ErrorCode::NotFound => 10,
            ErrorCode::MethodNotAllowed => 11,
            ErrorCode::Conflict => 12,
            ErrorCode::TurnTimeout => 13,
            ErrorCode::QueueFull => 14,
            ErrorCode::TooManyConversations => 15,
            ErrorCode::TooManyStreams => 16,
            ErrorCode::SilenceNotFound => 17,
            ErrorCode::AlertsDisabled => 18,
            ErrorCode::InsightsDisabled => 19,
            ErrorCode::TicketNotFound => 20,
            ErrorCode::TicketsDisabled => 21,
            ErrorCode::AnalyticsDisabled => 22,
            ErrorCode::MessageNotFound => 23,
            ErrorCode::RateLimited => 24,
            ErrorCode::BudgetExceeded => 25,
            ErrorCode::ModelNotFound => 26,
            ErrorCode::TurnFailed => 27,
            ErrorCode::TurnNotRunning => 28,
            ErrorCode::ConversationBusy => 29,
            ErrorCode::ForkTooLarge => 30,
            ErrorCode::ScheduleNotFound => 31,
            ErrorCode::TooManySchedules => 32,
            ErrorCode::ApprovalNotFound => 33,
            ErrorCode::ApprovalDecided => 34,
            ErrorCode::ReceiverFailed => 35,
            ErrorCode::Unavailable => 36,
            ErrorCode::Internal => 37,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once_in_order() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{}", c.as_str());
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
