//! The tools offered to agents: built-in tools, plus providers whose tools change
//! at run time (MCP servers come and go, recover, or change their tool lists) and
//! depend on the tenant.

use cairn_core::TenantId;
use cairn_core::ports::{Tool, ToolSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A source of tools that can change while Cairn runs.
pub trait ToolProvider: Send + Sync + 'static {
    /// The tools `tenant` may use right now (unhealthy servers' tools withheld).
    fn tools_for(&self, tenant: &TenantId) -> Vec<Arc<dyn Tool>>;
}

/// A set of tools by name.
#[derive(Default, Clone)]
pub struct ToolCatalog {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    providers: Vec<Arc<dyn ToolProvider>>,
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

    /// Adds a provider of tools.
    pub fn with_provider(mut self, provider: Arc<dyn ToolProvider>) -> Self {
        self.providers.push(provider);
        self
    }

    /// Looks a built-in tool up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// Looks a tool up by name among those `tenant` may use.
    pub fn get_for(&self, name: &str, tenant: &TenantId) -> Option<Arc<dyn Tool>> {
        if let Some(t) = self.tools.get(name) {
            return Some(t.clone());
        }
        self.providers
            .iter()
            .flat_map(|p| p.tools_for(tenant))
            .find(|t| t.spec().name == name)
    }

    /// The built-in tools' entries, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec().clone()).collect()
    }

    /// Every tool `tenant` may use now, sorted by name.
    pub fn specs_for(&self, tenant: &TenantId) -> Vec<ToolSpec> {
        let mut all: BTreeMap<String, ToolSpec> = self
            .tools
            .values()
            .map(|t| (t.spec().name.clone(), t.spec().clone()))
            .collect();
        for p in &self.providers {
            for t in p.tools_for(tenant) {
                all.entry(t.spec().name.clone())
                    .or_insert_with(|| t.spec().clone());
            }
        }
        all.into_values().collect()
    }

    /// Number of built-in tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when no built-in tool is offered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}
