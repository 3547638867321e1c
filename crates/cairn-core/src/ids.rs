//! Typed identifiers. Every id is a short string of safe characters so that it can
//! appear in URLs, Redis keys and Kafka keys without escaping. Generated ids are
//! UUIDv7, which sort by creation time; that ordering is what pagination relies on.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct InvalidId {
    /// Which identifier was being parsed (`conversation id`, `tenant`, …).
    pub kind: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Longest identifier accepted from outside.
pub const MAX_ID_LEN: usize = 128;

fn validate(kind: &'static str, s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId {
            kind,
            reason: "must not be empty",
        });
    }
    if s.len() > MAX_ID_LEN {
        return Err(InvalidId {
            kind,
            reason: "longer than 128 characters",
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(InvalidId {
            kind,
            reason: "only ASCII letters, digits and - _ . @ are allowed",
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier received from outside the process.
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }
            /// A new time-ordered identifier (UUIDv7).
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The tenant a request acts for; every stored key is scoped by it.
    TenantId,
    "tenant"
);
string_id!(
    /// The end user (`sub` claim) who owns conversations.
    UserId,
    "user id"
);
string_id!(
    /// A conversation; one ConversationActor serves it.
    ConversationId,
    "conversation id"
);
string_id!(
    /// One turn: a user message and the work that answers it.
    TurnId,
    "turn id"
);
string_id!(
    /// A message in a transcript; also the dedup key of an accepted user message.
    MessageId,
    "message id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsafe_ids() {
        assert!(ConversationId::parse("abc-123_x.y@z").is_ok());
        assert_eq!(
            ConversationId::parse("").unwrap_err().reason,
            "must not be empty"
        );
        assert!(ConversationId::parse("a/b").is_err());
        assert!(ConversationId::parse("a:b").is_err());
        assert!(ConversationId::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn generated_ids_sort_by_creation() {
        let a = ConversationId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ConversationId::generate();
        assert!(a < b);
    }

    #[test]
    fn serde_validates() {
        let ok: Result<TenantId, _> = serde_json::from_str("\"acme\"");
        assert!(ok.is_ok());
        let bad: Result<TenantId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }
}
