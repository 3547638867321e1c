//! Property tests for what `cairn-core` decodes from outside input: the bus
//! envelope and every event schema (any bytes, any JSON, any `data` for each
//! known type: an error, never a panic), ids, and the config file (any text,
//! and TOML built from the real sections and keys with values of every type).

#![allow(clippy::unwrap_used)]

use cairn_core::config::Config;
use cairn_core::envelope::EVENT_TYPES;
use cairn_core::schemas;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("acme")),
        Just(json!("2026-01-01T00:00:00Z")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,12}",
                    Just("conversation_id".to_owned()),
                    Just("tenant_id".to_owned()),
                    Just("turn_id".to_owned()),
                    Just("content".to_owned()),
                    Just("event".to_owned()),
                    Just("type".to_owned()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_bytes_decode_to_an_envelope_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = schemas::decode(&bytes);
    }

    #[test]
    fn any_json_decodes_to_an_envelope_or_an_error(v in any_json()) {
        let _ = schemas::decode(&serde_json::to_vec(&v).unwrap());
    }

    /// A well-formed envelope of every known type around any `data`: the
    /// schema accepts it or says why; what it accepts deserialises.
    #[test]
    fn every_event_type_checks_any_data(kind in prop::sample::select(EVENT_TYPES.to_vec()), data in any_json()) {
        let envelope = json!({
            "schema_version": 1,
            "event_id": "0192f1a4-0000-7000-8000-000000000000",
            "type": kind,
            "tenant_id": "acme",
            "occurred_at": "2026-01-01T00:00:00Z",
            "data": data,
        });
        match schemas::decode(&serde_json::to_vec(&envelope).unwrap()) {
            Ok(e) => prop_assert_eq!(e.kind, kind),
            Err(r) => prop_assert!(!r.reason.is_empty()),
        }
    }

    #[test]
    fn ids_parse_or_refuse_and_round_trip(s in "\\PC{0,80}") {
        if let Ok(t) = cairn_core::TenantId::parse(s.clone()) {
            prop_assert_eq!(t.as_str(), s.as_str());
        }
        let _ = cairn_core::ConversationId::parse(s.clone());
        let _ = cairn_core::UserId::parse(s);
    }

    #[test]
    fn any_text_as_a_config_file_loads_or_is_refused(text in "\\PC{0,300}") {
        let _ = load(&text);
    }

    /// TOML made of the real sections and keys, with values of every type.
    #[test]
    fn typed_config_keys_with_any_value_load_or_are_refused(
        entries in prop::collection::vec((
            prop::sample::select(SECTIONS.to_vec()),
            prop::sample::select(KEYS.to_vec()),
            toml_value(),
        ), 1..8)
    ) {
        let mut text = String::new();
        for (section, key, value) in entries {
            text.push_str(&format!("[{section}]\n{key} = {value}\n"));
        }
        if let Ok(c) = load(&text) {
            // What loads has passed validation; a second validation agrees.
            prop_assert!(c.validate().is_ok());
        }
    }
}

const SECTIONS: &[&str] = &[
    "agent",
    "llm",
    "auth",
    "knowledge",
    "redis",
    "kafka",
    "limits",
    "alerts",
    "approvals",
    "schedules",
    "turn_webhooks",
    "server",
    "insights",
    "desk",
];
const KEYS: &[&str] = &[
    "max_steps",
    "model",
    "provider",
    "base_url",
    "timeout",
    "lease_ttl",
    "url",
    "enabled",
    "partitions",
    "brokers",
    "jwt_secret",
    "max_fork_messages",
    "tick",
    "catch_up_window",
    "max_per_user",
    "default_expiry",
    "group_wait",
    "chunk_max_tokens",
    "search_limit",
    "max_concurrent_requests",
    "listen",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}").replace("inf", "inf").replace("NaN", "nan")),
        "[a-z0-9 :/.]{0,20}".prop_map(|s| format!("\"{s}\"")),
        Just("\"0s\"".to_owned()),
        Just("\"999999999999h\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[1, \"a\"]".to_owned()),
    ]
}

fn load(text: &str) -> Result<Config, cairn_core::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), std::iter::empty::<(String, String)>())
}
