//! The Redis TicketStore and CounterStore.
//!
//! Key layout (`P` is `redis.key_prefix`; `{tk/T}` and `{an/T}` are hash tags, so a
//! tenant's keys of each kind live in one slot):
//!
//! | key                     | type   | holds                                            |
//! |-------------------------|--------|--------------------------------------------------|
//! | `P:{tk/T}:tickets`      | hash   | ticket id → ticket JSON                          |
//! | `P:{tk/T}:versions`     | hash   | ticket id → write version (compare-and-set)      |
//! | `P:{tk/T}:ix:ORDER`     | zset   | sort keys of ORDER (lexicographic, score 0)      |
//! | `P:{an/T}:c:BUCKET`     | hash   | counter field → value                            |
//! | `P:{an/T}:seen:EVENT`   | string | an applied event id (EX `analytics.dedup_ttl`)   |
//! | `P:{an/T}:slot:KEY`     | string | a slot's current contribution (JSON)             |
//!
//! Creates and updates are one Lua script each (the ticket, its version and its
//! three index entries change together); a batch of counter updates is one
//! script per tenant (dedup, increments and slots together).

use crate::redis_store::{RedisStore, corrupt, unavailable};
use async_trait::async_trait;
use cairn_core::desk::{CounterUpdate, Ticket, TicketPage, TicketQuery, id_of_sort_key};
use cairn_core::ids::TenantId;
use cairn_core::ports::{CounterStore, StoreError, TicketStore, TicketUpdate};
use redis::Script;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::LazyLock;
use std::time::Duration;

/// Index entries fetched per round trip while a page walks.
const CHUNK: usize = 128;

static CREATE_TICKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return redis.call('HGET', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
for i = 3, #KEYS do redis.call('ZADD', KEYS[i], 0, ARGV[i + 1]) end
return false",
    )
});

/// KEYS: tickets, versions, the old index keys, then the new ones (as many).
/// ARGV: id, json, expected, new version, the old members, the new members.
static UPDATE_TICKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return {0, false} end
if v ~= ARGV[3] then return {2, redis.call('HGET', KEYS[1], ARGV[1])} end
local n = (#KEYS - 2) / 2
for i = 1, n do redis.call('ZREM', KEYS[i + 2], ARGV[4 + i]) end
for i = 1, n do redis.call('ZADD', KEYS[n + i + 2], 0, ARGV[4 + n + i]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return {1, false}",
    )
});

/// KEYS[1] is the tenant's key prefix (`P:{an/T}:`); ARGV[1] the dedup TTL in
/// seconds, ARGV[2] the updates as JSON
/// (`[{"e": id, "i": [[bucket, field, delta]], "s": {"k", "v", "i"}}]`).
static APPLY_COUNTERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p, ttl = KEYS[1], tonumber(ARGV[1])
local updates = cjson.decode(ARGV[2])
local function add(incs, sign)
  for _, x in ipairs(incs) do
    local key = p .. 'c:' .. x[1]
    local v = redis.call('HINCRBY', key, x[2], sign * x[3])
    if v == 0 then redis.call('HDEL', key, x[2]) end
  end
end
local applied = 0
for _, u in ipairs(updates) do
  if redis.call('SET', p .. 'seen:' .. u.e, '1', 'NX', 'EX', ttl) then
    add(u.i, 1)
    if type(u.s) == 'table' then
      local sk = p .. 'slot:' .. u.s.k
      local old = redis.call('GET', sk)
      local o = old and cjson.decode(old) or nil
      if not o or o.v < u.s.v then
        if o then add(o.i, -1) end
        add(u.s.i, 1)
        redis.call('SET', sk, cjson.encode(u.s))
      end
    end
    applied = applied + 1
  end
end
return applied",
    )
});

impl RedisStore {
    fn ticket_keys(&self, tenant: &str) -> (String, String) {
        let p = format!("{}:{{tk/{tenant}}}", self.prefix);
        (format!("{p}:tickets"), format!("{p}:versions"))
    }

    fn index_key(&self, tenant: &str, index: &str) -> String {
        format!("{}:{{tk/{tenant}}}:ix:{index}", self.prefix)
    }
}

fn decode(json: &str) -> Result<Ticket, StoreError> {
    serde_json::from_str(json).map_err(corrupt)
}

fn encode(t: &Ticket) -> Result<String, StoreError> {
    serde_json::to_string(t).map_err(corrupt)
}

#[async_trait]
impl TicketStore for RedisStore {
    async fn create_ticket(&self, ticket: &Ticket) -> Result<Option<Ticket>, StoreError> {
        let tenant = ticket.tenant_id.as_str();
        let (h, v) = self.ticket_keys(tenant);
        let mut inv = CREATE_TICKET.prepare_invoke();
        inv.key(h).key(v);
        let entries = ticket.index_entries();
        for (name, _) in &entries {
            inv.key(self.index_key(tenant, name));
        }
        inv.arg(&ticket.ticket_id)
            .arg(encode(ticket)?)
            .arg(ticket.version);
        for (_, k) in &entries {
            inv.arg(k);
        }
        let mut c = self.conn.clone();
        let existing: Option<String> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        existing.map(|j| decode(&j)).transpose()
    }

    async fn get_ticket(&self, tenant: &TenantId, id: &str) -> Result<Option<Ticket>, StoreError> {
        let (h, _) = self.ticket_keys(tenant.as_str());
        let mut c = self.conn.clone();
        let json: Option<String> = redis::cmd("HGET")
            .arg(h)
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        json.map(|j| decode(&j)).transpose()
    }

    async fn update_ticket(
        &self,
        ticket: &Ticket,
        expected: u64,
    ) -> Result<TicketUpdate, StoreError> {
        // The old index keys come from the stored ticket; the script refuses
        // the change if the version moved since it was read.
        let Some(old) = self
            .get_ticket(&ticket.tenant_id, &ticket.ticket_id)
            .await?
        else {
            return Ok(TicketUpdate::NotFound);
        };
        if old.version != expected {
            return Ok(TicketUpdate::Conflict(Box::new(old)));
        }
        let tenant = ticket.tenant_id.as_str();
        let (h, v) = self.ticket_keys(tenant);
        let mut inv = UPDATE_TICKET.prepare_invoke();
        inv.key(h).key(v);
        let (before, after) = (old.index_entries(), ticket.index_entries());
        for (name, _) in before.iter().chain(&after) {
            inv.key(self.index_key(tenant, name));
        }
        inv.arg(&ticket.ticket_id)
            .arg(encode(ticket)?)
            .arg(expected)
            .arg(ticket.version);
        for (_, k) in before.iter().chain(&after) {
            inv.arg(k);
        }
        let mut c = self.conn.clone();
        let (status, current): (i64, Option<String>) =
            inv.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(match status {
            1 => TicketUpdate::Updated,
            2 => match current {
                Some(j) => TicketUpdate::Conflict(Box::new(decode(&j)?)),
                None => TicketUpdate::NotFound,
            },
            _ => TicketUpdate::NotFound,
        })
    }

    async fn list_tickets(&self, q: &TicketQuery) -> Result<TicketPage, StoreError> {
        let (h, _) = self.ticket_keys(q.tenant.as_str());
        let index = &self.index_key(q.tenant.as_str(), &q.index());
        let (lo, hi) = q.key_range();
        let lex = |b: &Bound<String>, low: bool| match b {
            Bound::Included(k) => format!("[{k}"),
            Bound::Excluded(k) => format!("({k}"),
            Bound::Unbounded => if low { "-" } else { "+" }.to_owned(),
        };
        let (mut lo, mut hi) = (lex(&lo, true), lex(&hi, false));
        let mut c = self.conn.clone();
        let mut page = TicketPage::default();
        let mut last: Option<String> = None;
        loop {
            let want = CHUNK.min(q.max_scan.saturating_sub(page.scanned));
            if page.items.len() >= q.limit || want == 0 {
                page.next_cursor = last;
                return Ok(page);
            }
            let cmd = if q.descending {
                redis::cmd("ZREVRANGEBYLEX")
                    .arg(index)
                    .arg(&hi)
                    .arg(&lo)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(want)
                    .to_owned()
            } else {
                redis::cmd("ZRANGEBYLEX")
                    .arg(index)
                    .arg(&lo)
                    .arg(&hi)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(want)
                    .to_owned()
            };
            let keys: Vec<String> = cmd.query_async(&mut c).await.map_err(unavailable)?;
            if keys.is_empty() {
                return Ok(page);
            }
            let ids: Vec<&str> = keys
                .iter()
                .map(|k| id_of_sort_key(q.sort, k).unwrap_or(""))
                .collect();
            let found: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&h)
                .arg(&ids)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            for (k, json) in keys.iter().zip(found) {
                if page.items.len() >= q.limit || page.scanned >= q.max_scan {
                    page.next_cursor = last;
                    return Ok(page);
                }
                page.scanned += 1;
                if let Some(j) = json {
                    let t = decode(&j)?;
                    if t.matches(q) {
                        page.items.push(t);
                    }
                }
                last = Some(k.clone());
            }
            let end = keys.len() < want;
            if let Some(l) = &last {
                if q.descending {
                    hi = format!("({l}");
                } else {
                    lo = format!("({l}");
                }
            }
            if end {
                // The index has no more keys: no cursor unless the page filled
                // at the very last key.
                if page.items.len() >= q.limit || page.scanned >= q.max_scan {
                    page.next_cursor = last;
                }
                return Ok(page);
            }
        }
    }
}

#[async_trait]
impl CounterStore for RedisStore {
    async fn apply_counters(
        &self,
        updates: &[CounterUpdate],
        dedup_ttl: Duration,
    ) -> Result<usize, StoreError> {
        let mut by_tenant: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
        for u in updates {
            let incs = |v: &[cairn_core::desk::Increment]| {
                v.iter()
                    .map(|i| serde_json::json!([i.bucket, i.field, i.delta]))
                    .collect::<Vec<_>>()
            };
            let mut j = serde_json::json!({"e": u.event_id, "i": incs(&u.increments)});
            if let Some(s) = &u.slot {
                j["s"] = serde_json::json!({"k": s.key, "v": s.version, "i": incs(&s.increments)});
            }
            by_tenant.entry(u.tenant.as_str()).or_default().push(j);
        }
        let mut applied = 0;
        let mut c = self.conn.clone();
        for (tenant, list) in by_tenant {
            // An empty Lua table encodes as `{}`: send increments as arrays.
            let json = serde_json::to_string(&list).map_err(corrupt)?;
            let n: i64 = APPLY_COUNTERS
                .key(format!("{}:{{an/{tenant}}}:", self.prefix))
                .arg(dedup_ttl.as_secs().max(1))
                .arg(json)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            applied += n as usize;
        }
        Ok(applied)
    }

    async fn read_counters(
        &self,
        tenant: &TenantId,
        buckets: &[String],
    ) -> Result<Vec<HashMap<String, i64>>, StoreError> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for b in buckets {
            pipe.cmd("HGETALL")
                .arg(format!("{}:{{an/{}}}:c:{b}", self.prefix, tenant.as_str()));
        }
        let mut c = self.conn.clone();
        pipe.query_async(&mut c).await.map_err(unavailable)
    }
}
