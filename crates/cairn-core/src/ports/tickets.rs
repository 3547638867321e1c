//! TicketStore: the support desk's tickets, filtered and paged in the store.

use super::StoreError;
use crate::desk::{Ticket, TicketPage, TicketQuery};
use crate::ids::TenantId;
use async_trait::async_trait;

/// What a compare-and-set update did.
#[derive(Debug, Clone, PartialEq)]
pub enum TicketUpdate {
    /// Stored (with the given version).
    Updated,
    /// The stored version differs; here is the current ticket.
    Conflict(Box<Ticket>),
    /// No such ticket.
    NotFound,
}

/// Tickets per tenant, with one index per [`TicketSort`](crate::desk::TicketSort).
#[async_trait]
pub trait TicketStore: Send + Sync + 'static {
    /// Stores `ticket` unless its id exists in its tenant; returns the existing
    /// ticket then (the caller is idempotent on ticket ids).
    async fn create_ticket(&self, ticket: &Ticket) -> Result<Option<Ticket>, StoreError>;

    /// One ticket.
    async fn get_ticket(&self, tenant: &TenantId, id: &str) -> Result<Option<Ticket>, StoreError>;

    /// Replaces the ticket if the stored one has version `expected`; `ticket`
    /// carries its new version.
    async fn update_ticket(
        &self,
        ticket: &Ticket,
        expected: u64,
    ) -> Result<TicketUpdate, StoreError>;

    /// A page of `q.tenant`'s tickets in `q.sort` order, filtered while the
    /// store walks the index (at most `q.max_scan` tickets looked at).
    async fn list_tickets(&self, q: &TicketQuery) -> Result<TicketPage, StoreError>;
}
