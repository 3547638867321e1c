//! Property tests for tool-name mapping: whatever the catalog names (any
//! Unicode, any length, names that sanitise alike), every wire name matches the
//! providers' `[A-Za-z0-9_-]{1,64}`, no two tools share one, and each maps back
//! to its own catalog name.

#![allow(clippy::unwrap_used)]

use cairn_core::ports::ToolSpec;
use cairn_llm::names::ToolNames;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashSet};

fn names() -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(
        prop_oneof![
            "\\PC{0,80}",
            "[a-z]{1,3}[._ ][a-z]{1,3}",
            "[a-z_]{1,4}(_[2-9])?",
            "[a-z]{60,70}",
            "[a-z]{60,64}_[0-9]",
        ],
        1..24,
    )
}

proptest! {
    #[test]
    fn wire_names_are_valid_unique_and_map_back(names in names()) {
        let specs: Vec<ToolSpec> = names
            .iter()
            .map(|n| ToolSpec { name: n.clone(), description: String::new(), input_schema: serde_json::json!({}) })
            .collect();
        let map = ToolNames::new(&specs);
        let mut seen = HashSet::new();
        for n in &names {
            let wire = map.wire(n).to_owned();
            prop_assert!(
                !wire.is_empty() && wire.len() <= 64
                    && wire.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{:?} → {:?}", n, wire
            );
            prop_assert!(seen.insert(wire.clone()), "two tools on {:?}", wire);
            prop_assert_eq!(&map.catalog(&wire), n);
        }
    }
}
