//! Tool names made safe for providers. OpenAI, Anthropic and Gemini accept only
//! `[A-Za-z0-9_-]{1,64}`, while Cairn names MCP tools `server.tool`. Names are
//! rewritten on the way out and mapped back when the model calls them.

use cairn_core::ports::ToolSpec;
use std::collections::HashMap;

/// The mapping for one request.
#[derive(Debug, Default)]
pub struct ToolNames {
    to_wire: HashMap<String, String>,
    from_wire: HashMap<String, String>,
}

fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    s.truncate(64);
    s
}

impl ToolNames {
    /// Builds the mapping for the tools of a request; collisions get a numeric suffix.
    pub fn new(tools: &[ToolSpec]) -> Self {
        let mut names = Self::default();
        for t in tools {
            let mut wire = sanitize(&t.name);
            let mut n = 2;
            while names.from_wire.contains_key(&wire) {
                let suffix = format!("_{n}");
                wire = format!(
                    "{}{suffix}",
                    &sanitize(&t.name)[..(64 - suffix.len()).min(sanitize(&t.name).len())]
                );
                n += 1;
            }
            names.to_wire.insert(t.name.clone(), wire.clone());
            names.from_wire.insert(wire, t.name.clone());
        }
        names
    }

    /// The name sent to the provider.
    pub fn wire<'a>(&'a self, name: &'a str) -> &'a str {
        self.to_wire.get(name).map_or(name, String::as_str)
    }

    /// The catalog name for a name the provider returned.
    pub fn catalog(&self, wire: &str) -> String {
        self.from_wire
            .get(wire)
            .cloned()
            .unwrap_or_else(|| wire.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            input_schema: serde_json::json!({}),
        }
    }

    #[test]
    fn round_trips_and_avoids_collisions() {
        let n = ToolNames::new(&[spec("calc.add"), spec("calc_add"), spec("echo")]);
        assert_eq!(n.wire("calc.add"), "calc_add");
        assert_eq!(n.wire("calc_add"), "calc_add_2");
        assert_eq!(n.catalog("calc_add"), "calc.add");
        assert_eq!(n.catalog("calc_add_2"), "calc_add");
        assert_eq!(n.wire("echo"), "echo");
    }
}
