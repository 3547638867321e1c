//! The embedded TicketStore and CounterStore (same redb file as the rest).
//!
//! Tickets live under (tenant, id); each sort order has an index of
//! (tenant, order, sort key) → id that a page walks, filtering as it goes.
//! Counters are (tenant, bucket, field) → value; applied event ids are kept with
//! their expiry (and an expiry index, pruned a little on every write).

use crate::embedded::{EmbeddedStore, dec, enc, r, unavailable};
use async_trait::async_trait;
use cairn_core::desk::{
    CounterUpdate, Increment, Slot, Ticket, TicketPage, TicketQuery, slot_change,
};
use cairn_core::ids::TenantId;
use cairn_core::ports::{CounterStore, StoreError, TicketStore, TicketUpdate};
use cairn_redb::DbError;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::ops::Bound;
use std::time::Duration;

/// (tenant, ticket id) → ticket JSON.
const TICKETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("tickets");
/// (tenant, order, sort key) → ticket id.
const TICKET_INDEX: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("ticket_index");
/// (tenant, bucket, field) → count.
const COUNTERS: TableDefinition<(&str, &str, &str), i64> = TableDefinition::new("counters");
/// (tenant, event id) → expiry (ms since the epoch): applied events.
const COUNTED: TableDefinition<(&str, &str), u64> = TableDefinition::new("counted_events");
/// (expiry, tenant, event id) → (): [`COUNTED`] in expiry order, for pruning.
const COUNTED_EXPIRY: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("counted_events_expiry");
/// (tenant, slot key) → the slot's current contribution (JSON [`Slot`]).
const SLOTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("counter_slots");
/// Expired event ids removed per write.
const PRUNE_BATCH: usize = 256;

/// Creates the tables (so reads find them empty rather than missing).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), DbError> {
    txn.open_table(TICKETS).map_err(r)?;
    txn.open_table(TICKET_INDEX).map_err(r)?;
    txn.open_table(COUNTERS).map_err(r)?;
    txn.open_table(COUNTED).map_err(r)?;
    txn.open_table(COUNTED_EXPIRY).map_err(r)?;
    txn.open_table(SLOTS).map_err(r)?;
    Ok(())
}

fn index_put(txn: &WriteTransaction, t: &Ticket) -> Result<(), DbError> {
    let mut ix = txn.open_table(TICKET_INDEX).map_err(r)?;
    for (name, k) in t.index_entries() {
        ix.insert(
            (t.tenant_id.as_str(), name.as_str(), k.as_str()),
            t.ticket_id.as_str(),
        )
        .map_err(r)?;
    }
    Ok(())
}

fn index_remove(txn: &WriteTransaction, t: &Ticket) -> Result<(), DbError> {
    let mut ix = txn.open_table(TICKET_INDEX).map_err(r)?;
    for (name, k) in t.index_entries() {
        ix.remove((t.tenant_id.as_str(), name.as_str(), k.as_str()))
            .map_err(r)?;
    }
    Ok(())
}

#[async_trait]
impl TicketStore for EmbeddedStore {
    async fn create_ticket(&self, ticket: &Ticket) -> Result<Option<Ticket>, StoreError> {
        let t = ticket.clone();
        self.db
            .write(move |txn| {
                {
                    let mut tickets = txn.open_table(TICKETS).map_err(r)?;
                    let k = (t.tenant_id.as_str(), t.ticket_id.as_str());
                    if let Some(old) = tickets.get(k).map_err(r)? {
                        return Ok(Some(dec::<Ticket>(old.value())?));
                    }
                    tickets.insert(k, enc(&t)?.as_slice()).map_err(r)?;
                }
                index_put(txn, &t)?;
                Ok(None)
            })
            .await
            .map_err(unavailable)
    }

    async fn get_ticket(&self, tenant: &TenantId, id: &str) -> Result<Option<Ticket>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_owned());
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(TICKETS).map_err(r)?;
                t.get((tenant.as_str(), id.as_str()))
                    .map_err(r)?
                    .map(|v| dec(v.value()))
                    .transpose()
            })
            .map_err(unavailable)
    }

    async fn update_ticket(
        &self,
        ticket: &Ticket,
        expected: u64,
    ) -> Result<TicketUpdate, StoreError> {
        let t = ticket.clone();
        self.db
            .write(move |txn| {
                let old: Ticket = {
                    let tickets = txn.open_table(TICKETS).map_err(r)?;
                    match tickets
                        .get((t.tenant_id.as_str(), t.ticket_id.as_str()))
                        .map_err(r)?
                    {
                        None => return Ok(TicketUpdate::NotFound),
                        Some(v) => dec(v.value())?,
                    }
                };
                if old.version != expected {
                    return Ok(TicketUpdate::Conflict(Box::new(old)));
                }
                index_remove(txn, &old)?;
                index_put(txn, &t)?;
                let mut tickets = txn.open_table(TICKETS).map_err(r)?;
                tickets
                    .insert(
                        (t.tenant_id.as_str(), t.ticket_id.as_str()),
                        enc(&t)?.as_slice(),
                    )
                    .map_err(r)?;
                Ok(TicketUpdate::Updated)
            })
            .await
            .map_err(unavailable)
    }

    async fn list_tickets(&self, q: &TicketQuery) -> Result<TicketPage, StoreError> {
        let q = q.clone();
        self.db
            .read(move |txn| {
                let ix = txn.open_table(TICKET_INDEX).map_err(r)?;
                let tickets = txn.open_table(TICKETS).map_err(r)?;
                let index = q.index();
                let (tenant, order) = (q.tenant.as_str(), index.as_str());
                let (lo, hi) = q.key_range();
                let lo = match &lo {
                    Bound::Included(k) => Bound::Included((tenant, order, k.as_str())),
                    Bound::Excluded(k) => Bound::Excluded((tenant, order, k.as_str())),
                    Bound::Unbounded => Bound::Included((tenant, order, "")),
                };
                let hi = match &hi {
                    Bound::Included(k) => Bound::Included((tenant, order, k.as_str())),
                    Bound::Excluded(k) => Bound::Excluded((tenant, order, k.as_str())),
                    // Sort keys are ASCII: every one sorts below U+10FFFF.
                    Bound::Unbounded => Bound::Included((tenant, order, "\u{10FFFF}")),
                };
                let range = ix.range::<(&str, &str, &str)>((lo, hi)).map_err(r)?;
                let rows: Box<dyn Iterator<Item = _>> = if q.descending {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                let mut page = TicketPage::default();
                let mut last = None;
                let mut exhausted = true;
                for row in rows {
                    if page.items.len() >= q.limit || page.scanned >= q.max_scan {
                        exhausted = false;
                        break;
                    }
                    let (k, id) = row.map_err(r)?;
                    page.scanned += 1;
                    let key = k.value().2.to_owned();
                    if let Some(v) = tickets.get((tenant, id.value())).map_err(r)? {
                        let t: Ticket = dec(v.value())?;
                        if t.matches(&q) {
                            page.items.push(t);
                        }
                    }
                    last = Some(key);
                }
                if !exhausted {
                    page.next_cursor = last;
                }
                Ok(page)
            })
            .await
            .map_err(unavailable)
    }
}

fn add(
    counters: &mut redb::Table<(&str, &str, &str), i64>,
    tenant: &str,
    incs: &[Increment],
) -> Result<(), DbError> {
    for i in incs {
        let k = (tenant, i.bucket.as_str(), i.field.as_str());
        let cur = counters.get(k).map_err(r)?.map(|v| v.value()).unwrap_or(0);
        let next = cur + i.delta;
        if next == 0 {
            counters.remove(k).map_err(r)?;
        } else {
            counters.insert(k, next).map_err(r)?;
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

#[async_trait]
impl CounterStore for EmbeddedStore {
    async fn apply_counters(
        &self,
        updates: &[CounterUpdate],
        dedup_ttl: Duration,
    ) -> Result<usize, StoreError> {
        if updates.is_empty() {
            return Ok(0);
        }
        let updates = updates.to_vec();
        self.db
            .write(move |txn| {
                let now = now_ms();
                let expiry = now + dedup_ttl.as_millis() as u64;
                let mut counted = txn.open_table(COUNTED).map_err(r)?;
                let mut by_expiry = txn.open_table(COUNTED_EXPIRY).map_err(r)?;
                let mut counters = txn.open_table(COUNTERS).map_err(r)?;
                let mut slots = txn.open_table(SLOTS).map_err(r)?;
                let mut applied = 0;
                for u in &updates {
                    let tenant = u.tenant.as_str();
                    let seen = counted
                        .get((tenant, u.event_id.as_str()))
                        .map_err(r)?
                        .is_some_and(|e| e.value() > now);
                    if seen {
                        continue;
                    }
                    counted
                        .insert((tenant, u.event_id.as_str()), expiry)
                        .map_err(r)?;
                    by_expiry
                        .insert((expiry, tenant, u.event_id.as_str()), ())
                        .map_err(r)?;
                    add(&mut counters, tenant, &u.increments)?;
                    if let Some(slot) = &u.slot {
                        let old: Option<Slot> = slots
                            .get((tenant, slot.key.as_str()))
                            .map_err(r)?
                            .map(|v| dec(v.value()))
                            .transpose()?;
                        if let Some(change) = slot_change(old.as_ref(), slot) {
                            add(&mut counters, tenant, &change)?;
                            slots
                                .insert((tenant, slot.key.as_str()), enc(slot)?.as_slice())
                                .map_err(r)?;
                        }
                    }
                    applied += 1;
                }
                // Forget a few expired event ids.
                let expired: Vec<(u64, String, String)> = by_expiry
                    .range::<(u64, &str, &str)>(..(now, "", ""))
                    .map_err(r)?
                    .take(PRUNE_BATCH)
                    .map(|row| {
                        row.map(|(k, _)| {
                            let (e, t, id) = k.value();
                            (e, t.to_owned(), id.to_owned())
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(r)?;
                for (e, t, id) in expired {
                    by_expiry.remove((e, t.as_str(), id.as_str())).map_err(r)?;
                    let current = counted.get((t.as_str(), id.as_str())).map_err(r)?;
                    if current.is_some_and(|c| c.value() <= now) {
                        counted.remove((t.as_str(), id.as_str())).map_err(r)?;
                    }
                }
                Ok(applied)
            })
            .await
            .map_err(unavailable)
    }

    async fn read_counters(
        &self,
        tenant: &TenantId,
        buckets: &[String],
    ) -> Result<Vec<HashMap<String, i64>>, StoreError> {
        let (tenant, buckets) = (tenant.to_string(), buckets.to_vec());
        self.db
            .read(move |txn| {
                let counters = txn.open_table(COUNTERS).map_err(r)?;
                let mut out = Vec::with_capacity(buckets.len());
                for b in &buckets {
                    let mut m = HashMap::new();
                    let range = counters
                        .range::<(&str, &str, &str)>(
                            (tenant.as_str(), b.as_str(), "")
                                ..=(tenant.as_str(), b.as_str(), "\u{10FFFF}"),
                        )
                        .map_err(r)?;
                    for row in range {
                        let (k, v) = row.map_err(r)?;
                        m.insert(k.value().2.to_owned(), v.value());
                    }
                    out.push(m);
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::desk::{TicketSort, id_of_sort_key};

    #[test]
    fn sort_keys_give_back_the_ticket_id() {
        let s = cairn_core::desk::TicketSubmission {
            ticket_id: "T:1-a".into(),
            tenant_id: TenantId::parse("acme").unwrap(),
            subject: "s".into(),
            body: "b".into(),
            channel: "email".into(),
            priority: Default::default(),
            customer_id: "c".into(),
            revision: 1,
            submitted_at: chrono::Utc::now(),
        };
        let mut t = Ticket::from_submission(&s);
        t.risk = Some(0.42);
        for sort in TicketSort::ALL {
            assert_eq!(id_of_sort_key(sort, &t.sort_key(sort)), Some("T:1-a"));
        }
    }
}
