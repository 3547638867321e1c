//! The tools offered to agents.

use cairn_core::ports::{Tool, ToolSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A set of tools by name.
#[derive(Default, Clone)]
pub struct ToolCatalog {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl ToolCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool (replacing one of the same name).
    pub fn with(mut self, tool: Arc<dyn Tool>) -> Self {
        self.tools.insert(tool.spec().name.clone(), tool);
        self
    }

    /// Looks a tool up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// The catalog entries, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec().clone()).collect()
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when no tool is offered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}
