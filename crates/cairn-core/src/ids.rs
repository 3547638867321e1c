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

/// Characters allowed in every identifier besides ASCII letters and digits.
const SAFE: &[u8] = b"-_.@";
/// User ids are issued by identity providers (`auth0|abc123`,
/// `google-oauth2|123`, `samlp|corp|ana`, base64url, e-mail with `+`), so they
/// also take `| : + =`. None of these is a separator in a store key: user ids
/// are the last part of Redis keys and NUL-separated in the embedded store.
const SAFE_USER: &[u8] = b"-_.@|:+=";

fn validate(kind: &'static str, s: &str, extra: &'static [u8]) -> Result<(), InvalidId> {
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
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        return Err(InvalidId {
            kind,
            reason: if extra == SAFE_USER {
                "only ASCII letters, digits and - _ . @ | : + = are allowed"
            } else {
                "only ASCII letters, digits and - _ . @ are allowed"
            },
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        string_id!($(#[$doc])* $name, $kind, SAFE);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier received from outside the process.
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                validate($kind, &s, $extra)?;
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
    "user id",
    SAFE_USER
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
    fn user_ids_take_what_identity_providers_issue() {
        for sub in [
            "auth0|abc123",
            "google-oauth2|1234567890",
            "samlp|corp|ana@example.com",
            "ana+support@example.com",
            "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ=",
            "urn:user:42",
        ] {
            assert!(UserId::parse(sub).is_ok(), "{sub}");
        }
        // Still refused: separators of store keys and anything unprintable.
        for sub in ["a\0b", "a b", "a/b", "a{b}", "é", "a\nb"] {
            assert!(UserId::parse(sub).is_err(), "{sub:?}");
        }
        // Other ids keep the narrow set.
        assert!(TenantId::parse("a|b").is_err());
        assert!(ConversationId::parse("a:b").is_err());
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
