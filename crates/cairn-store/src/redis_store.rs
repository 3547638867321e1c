//! The Redis MemoryStore and EventStream.
//!
//! Key layout (`P` is `redis.key_prefix`, `C` is `{tenant/conversation}`, a hash tag):
//!
//! | key                 | type   | holds                                              |
//! |---------------------|--------|----------------------------------------------------|
//! | `P:C:meta`          | hash   | `json` (static metadata), `updated_at`, `message_count` |
//! | `P:C:msgs`          | list   | transcript messages (JSON); the list index is `seq` |
//! | `P:C:summary`       | string | rolling summary (JSON)                             |
//! | `P:C:pending`       | list   | queued turn requests (JSON)                        |
//! | `P:C:seen`          | set    | accepted message ids (dedup)                       |
//! | `P:C:checkpoint`    | string | the in-flight turn's checkpoint (JSON)             |
//! | `P:C:evseq`         | string | last event id                                      |
//! | `P:C:events`        | stream | events; entry id `N-1` for event id `N`            |
//! | `P:C:fence`         | string | the newest fencing token granted (INCR)            |
//! | `P:C:lease`         | string | `owner|token`, expiring (PX) — the writer lease    |
//! | `P:C:relayed`       | string | last event id republished on the bus               |
//! | `P:done:G:E`        | string | bus event `E` finished by consumer group `G` (EX)  |
//! | `P:owner:T:U`       | zset   | a user's conversation ids (lexicographic, score 0) |
//! | `P:updated`         | zset   | `tenant/conversation` by last update (retention)   |
//! | `P:active`          | set    | `tenant/conversation` with queued work or a checkpoint |
//! | `P:{docs/T}:records`| hash   | document id → document record (JSON), tenant `T`   |
//! | `P:{docs/T}:ids`    | zset   | the tenant's document ids (lexicographic, score 0) |
//!
//! The turn writes (`begin_turn`, `save_checkpoint`, `finish_turn`) carry the
//! writer's fencing token and fail (`Fenced`) when `P:C:fence` has moved past it.
//!
//! Every change that spans keys runs as one Lua script, so it is atomic. The global
//! sets are touched by the same scripts; that needs a non-cluster Redis (or a
//! cluster proxy) for now.

use crate::follow::{EventWaiter, follow};
use crate::xread_hub::{Registration, XreadHub};
use async_trait::async_trait;
use cairn_core::ids::*;
use cairn_core::ports::{
    DocumentRecord, DocumentStore, Enqueued, EventStream, MemoryStore, RecordChange, RecordStore,
    StoreError,
};
use cairn_core::*;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The Redis store. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: ConnectionManager,
    /// One blocking XREAD for every follower of this process (bounded Redis
    /// connections whatever the number of open streams).
    hub: XreadHub,
    pub(crate) prefix: Arc<str>,
    event_retention: u64,
}

pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'updated_at', ARGV[2], 'message_count', 0)
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1",
    )
});

static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'message_count', n)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return n - 1",
    )
});

/// Shared tail of the scripts that append events: `KEYS[evseq_at]` is the event
/// counter and the next key the stream; ARGV from `first_event` on are events.
const APPEND_EVENTS_LUA: &str = r"
local function append_events(evseq, stream, retention, first)
  for i = first, #ARGV do
    local id = redis.call('INCR', evseq)
    redis.call('XADD', stream, 'MAXLEN', '~', retention, id .. '-1', 'e', ARGV[i])
  end
end
";

/// Fails the script (-2) when `fence` is set and is not the newest token.
const FENCE_LUA: &str = r"
local function fenced(key, fence)
  return fence ~= '' and redis.call('GET', key) ~= fence
end
";

static ACQUIRE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, token = string.match(cur, '^(.*)|(%d+)$')
  if owner ~= ARGV[1] then return -1 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(token)
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token",
    )
});

/// Sets a counter to ARGV[1] unless it is already higher.
static RAISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0",
    )
});

static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1",
    )
});

static BEGIN_TURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_EVENTS_LUA}{FENCE_LUA}
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if fenced(KEYS[8], ARGV[7]) then return -2 end
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'message_count', n)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('SET', KEYS[4], ARGV[5])
redis.call('SADD', KEYS[5], ARGV[4])
append_events(KEYS[6], KEYS[7], ARGV[6], 8)
return n - 1"
    ))
});

static CHECKPOINT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_EVENTS_LUA}{FENCE_LUA}
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if fenced(KEYS[6], ARGV[4]) then return -2 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
append_events(KEYS[4], KEYS[5], ARGV[3], 5)
return 1"
    ))
});

/// Applies a batch of record changes: KEYS are (hash, ids) per change, ARGV
/// (op, key, value) per change, op `p` (put) or `d` (delete).
static WRITE_RECORDS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local op, k, v = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if op == 'p' then
    redis.call('HSET', h, k, v)
    redis.call('ZADD', z, 0, k)
  else
    redis.call('HDEL', h, k)
    redis.call('ZREM', z, k)
  end
end
return 1",
    )
});

/// Compare-and-set of one record: KEYS = values hash, key set; ARGV = key,
/// expected ('absent' or 'value', then the value or ''), new ('p' then the
/// value, or 'd' then ''). Returns 1 if written.
static REPLACE_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == 'absent' then
  if cur then return 0 end
elseif cur ~= ARGV[3] then
  return 0
end
if ARGV[4] == 'p' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1",
    )
});

static PUT_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1",
    )
});

static UPDATE_JOB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if cjson.decode(cur)['job_id'] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1",
    )
});

static DELETE_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])",
    )
});

static SET_IF_CONVERSATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1",
    )
});

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
return 1",
    )
});

static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{FENCE_LUA}
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if fenced(KEYS[9], ARGV[8]) then return -2 end
-- Turns run in queue order, so the finished one is the head: O(1). A request
-- that is not the head (only after manual surgery) is searched for. A turn no
-- longer queued has been finished already (a retry whose first reply was
-- lost when Redis went down): nothing is written again.
local head = redis.call('LINDEX', KEYS[4], 0)
if head and string.find(head, ARGV[3], 1, true) then
  redis.call('LPOP', KEYS[4])
else
  local found = false
  for _, item in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
    if string.find(item, ARGV[3], 1, true) then
      redis.call('LREM', KEYS[4], 1, item)
      found = true
      break
    end
  end
  if not found then return 0 end
end
if ARGV[1] ~= '' then
  local n = redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'message_count', n)
  redis.call('ZADD', KEYS[6], ARGV[5], ARGV[4])
end
redis.call('DEL', KEYS[3])
if redis.call('LLEN', KEYS[4]) == 0 then redis.call('SREM', KEYS[5], ARGV[4]) end
local id = redis.call('INCR', KEYS[7])
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[7], id .. '-1', 'e', ARGV[6])
return id"
    ))
});

/// Deletes a conversation's keys if it is still stale and idle, in one step:
/// a message accepted meanwhile (queued) or a turn in flight keeps it.
/// KEYS: the conversation's keys (`CONVERSATION_KEYS` order), then owner index,
/// `updated`, `active`. ARGV: member, conversation id, cutoff (ms).
static PURGE_IF_STALE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = #KEYS
local score = redis.call('ZSCORE', KEYS[n - 1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[n - 1], ARGV[1])
  return 0
end
if score and tonumber(score) >= tonumber(ARGV[3]) then return 0 end
if redis.call('LLEN', KEYS[4]) > 0 or redis.call('EXISTS', KEYS[6]) == 1 then return 0 end
for i = 1, n - 3 do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', KEYS[n - 2], ARGV[2])
redis.call('ZREM', KEYS[n - 1], ARGV[1])
redis.call('SREM', KEYS[n], ARGV[1])
return 1",
    )
});

/// Every per-conversation key suffix, in the order the scripts index them
/// (`meta` first, `pending` 4th, `checkpoint` 6th).
const CONVERSATION_KEYS: [&str; 11] = [
    "meta",
    "msgs",
    "summary",
    "pending",
    "seen",
    "checkpoint",
    "evseq",
    "events",
    "lease",
    "fence",
    "relayed",
];

static APPEND_EVENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local id = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], id .. '-1', 'e', ARGV[1])
return id",
    )
});

impl RedisStore {
    /// Connects to `url`. Keys start with `prefix`; `event_retention` bounds the
    /// events kept per conversation (approximately, as Redis trims in blocks).
    pub async fn connect(
        url: &str,
        prefix: &str,
        event_retention: u64,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            hub: XreadHub::start(client, conn.clone()),
            conn,
            prefix: prefix.into(),
            event_retention: event_retention.max(1),
        })
    }

    /// A rate limiter sharing this store's connection and key prefix.
    pub fn rate_limiter(&self) -> crate::limits::RedisRateLimiter {
        crate::limits::RedisRateLimiter::new(self.conn.clone(), &self.prefix)
    }

    fn k(&self, tenant: &TenantId, id: &ConversationId, suffix: &str) -> String {
        format!("{}:{{{tenant}/{id}}}:{suffix}", self.prefix)
    }

    fn owner_key(&self, tenant: &TenantId, owner: &UserId) -> String {
        format!("{}:owner:{tenant}:{owner}", self.prefix)
    }

    /// The document keys of `tenant`: the records hash and the id index.
    fn doc_keys(&self, tenant: &TenantId) -> (String, String) {
        (
            format!("{}:{{docs/{tenant}}}:records", self.prefix),
            format!("{}:{{docs/{tenant}}}:ids", self.prefix),
        )
    }

    /// A record collection's value hash and key index. Every collection shares
    /// one hash tag, so a batch across collections is one script.
    fn record_keys(&self, collection: &str) -> (String, String) {
        (
            format!("{}:{{records}}:{collection}:values", self.prefix),
            format!("{}:{{records}}:{collection}:keys", self.prefix),
        )
    }

    /// One page of a keyed collection: up to `limit` members of the sorted set
    /// `ids` between the lex bounds `lo` and `hi` (ZRANGEBYLEX syntax), with their
    /// values from the hash `values` (members without a value are skipped).
    async fn lex_page(
        &self,
        values: &str,
        ids: &str,
        lo: Vec<u8>,
        hi: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut c = self.conn.clone();
        let keys: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(ids)
            .arg(lo)
            .arg(hi)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(values)
            .arg(&keys)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(keys
            .into_iter()
            .zip(found)
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    fn global(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    async fn load_meta(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<ConversationMeta>, StoreError> {
        let mut c = self.conn.clone();
        let h: HashMap<String, String> = c
            .hgetall(self.k(tenant, id, "meta"))
            .await
            .map_err(unavailable)?;
        meta_from_hash(h)
    }

    async fn delete_keys(&self, meta: &ConversationMeta) -> Result<(), StoreError> {
        let (t, id) = (&meta.tenant_id, &meta.id);
        let member = format!("{t}/{id}");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(CONVERSATION_KEYS.map(|s| self.k(t, id, s)).to_vec())
            .zrem(self.owner_key(t, &meta.owner), id.as_str())
            .zrem(self.global("updated"), &member)
            .srem(self.global("active"), &member);
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }
}

fn meta_from_hash(h: HashMap<String, String>) -> Result<Option<ConversationMeta>, StoreError> {
    let Some(json) = h.get("json") else {
        return Ok(None);
    };
    let mut meta: ConversationMeta = serde_json::from_str(json).map_err(corrupt)?;
    if let Some(u) = h.get("updated_at") {
        meta.updated_at = DateTime::parse_from_rfc3339(u)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .with_timezone(&Utc);
    }
    if let Some(n) = h.get("message_count") {
        meta.message_count = n
            .parse()
            .map_err(|_| StoreError::Corrupt("message_count".into()))?;
    }
    Ok(Some(meta))
}

/// An event as stored in a stream entry (its id comes from the entry id).
fn stored_json(event: &TurnEvent) -> Result<String, StoreError> {
    serde_json::to_string(&StoredEvent {
        id: 0,
        at: Utc::now(),
        event: event.clone(),
    })
    .map_err(corrupt)
}

/// -1: no such conversation; -2: a stale writer (fenced).
fn not_found_if_negative(n: i64) -> Result<i64, StoreError> {
    match n {
        -2 => Err(StoreError::Fenced),
        n if n < 0 => Err(StoreError::NotFound),
        n => Ok(n),
    }
}

fn fence_arg(fence: Option<u64>) -> String {
    fence.map(|f| f.to_string()).unwrap_or_default()
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn split_member(m: &str) -> Option<(TenantId, ConversationId)> {
    let (t, c) = m.split_once('/')?;
    Some((TenantId::parse(t).ok()?, ConversationId::parse(c).ok()?))
}

#[async_trait]
impl MemoryStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn create_conversation(&self, meta: &ConversationMeta) -> Result<(), StoreError> {
        let (t, id) = (&meta.tenant_id, &meta.id);
        let json = serde_json::to_string(meta).map_err(corrupt)?;
        let mut c = self.conn.clone();
        let created: i64 = CREATE
            .key(self.k(t, id, "meta"))
            .key(self.owner_key(t, &meta.owner))
            .key(self.global("updated"))
            .arg(json)
            .arg(meta.updated_at.to_rfc3339())
            .arg(id.as_str())
            .arg(meta.updated_at.timestamp_millis())
            .arg(format!("{t}/{id}"))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<ConversationMeta>, StoreError> {
        self.load_meta(tenant, id).await
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        owner: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<Vec<ConversationMeta>, StoreError> {
        let start = match after {
            Some(a) => format!("({a}"),
            None => "-".to_owned(),
        };
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.owner_key(tenant, owner))
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(id) = ConversationId::parse(id) else {
                continue;
            };
            if let Some(m) = self.load_meta(tenant, &id).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn count_conversations(
        &self,
        tenant: &TenantId,
        owner: &UserId,
    ) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        c.zcard(self.owner_key(tenant, owner))
            .await
            .map_err(unavailable)
    }

    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<bool, StoreError> {
        match self.load_meta(tenant, id).await? {
            Some(meta) => {
                self.delete_keys(&meta).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn append_message(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message: &Message,
    ) -> Result<u64, StoreError> {
        let now = Utc::now();
        let mut c = self.conn.clone();
        let seq: i64 = APPEND
            .key(self.k(tenant, id, "meta"))
            .key(self.k(tenant, id, "msgs"))
            .key(self.global("updated"))
            .arg(serde_json::to_string(message).map_err(corrupt)?)
            .arg(now.to_rfc3339())
            .arg(now.timestamp_millis())
            .arg(format!("{tenant}/{id}"))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(not_found_if_negative(seq)? as u64)
    }

    async fn messages(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Redis list indexes are signed: an index past i64::MAX would wrap to
        // a negative one and count from the end of the list.
        if from_seq > i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let end = from_seq
            .saturating_add(limit as u64 - 1)
            .min(i64::MAX as u64);
        let raw: Vec<String> = c
            .lrange(self.k(tenant, id, "msgs"), from_seq as isize, end as isize)
            .await
            .map_err(unavailable)?;
        raw.iter()
            .enumerate()
            .map(|(i, s)| {
                let mut m: Message = serde_json::from_str(s).map_err(corrupt)?;
                m.seq = from_seq + i as u64;
                Ok(m)
            })
            .collect()
    }

    async fn summary(&self, tenant: &TenantId, id: &ConversationId) -> Result<Summary, StoreError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c
            .get(self.k(tenant, id, "summary"))
            .await
            .map_err(unavailable)?;
        match raw {
            Some(s) => serde_json::from_str(&s).map_err(corrupt),
            None => Ok(Summary::default()),
        }
    }

    async fn save_summary(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        summary: &Summary,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let ok: i64 = SET_IF_CONVERSATION
            .key(self.k(tenant, id, "meta"))
            .key(self.k(tenant, id, "summary"))
            .arg(serde_json::to_string(summary).map_err(corrupt)?)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        if ok == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn enqueue_turn(&self, request: &TurnRequest) -> Result<Enqueued, StoreError> {
        let (t, id) = (&request.tenant_id, &request.conversation_id);
        let mut c = self.conn.clone();
        let r: i64 = ENQUEUE
            .key(self.k(t, id, "meta"))
            .key(self.k(t, id, "seen"))
            .key(self.k(t, id, "pending"))
            .key(self.global("active"))
            .arg(request.message_id.as_str())
            .arg(serde_json::to_string(request).map_err(corrupt)?)
            .arg(format!("{t}/{id}"))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        match not_found_if_negative(r)? {
            1 => Ok(Enqueued::New),
            _ => Ok(Enqueued::Duplicate),
        }
    }

    async fn pending_turns(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Vec<TurnRequest>, StoreError> {
        let mut c = self.conn.clone();
        let raw: Vec<String> = c
            .lrange(self.k(tenant, id, "pending"), 0, -1)
            .await
            .map_err(unavailable)?;
        raw.iter()
            .map(|s| serde_json::from_str(s).map_err(corrupt))
            .collect()
    }

    async fn begin_turn(
        &self,
        checkpoint: &TurnCheckpoint,
        user_message: &Message,
        events: &[TurnEvent],
    ) -> Result<u64, StoreError> {
        let (t, id) = (
            &checkpoint.request.tenant_id,
            &checkpoint.request.conversation_id,
        );
        let now = Utc::now();
        let mut c = self.conn.clone();
        let mut script = BEGIN_TURN.prepare_invoke();
        script
            .key(self.k(t, id, "meta"))
            .key(self.k(t, id, "msgs"))
            .key(self.global("updated"))
            .key(self.k(t, id, "checkpoint"))
            .key(self.global("active"))
            .key(self.k(t, id, "evseq"))
            .key(self.k(t, id, "events"))
            .key(self.k(t, id, "fence"))
            .arg(serde_json::to_string(user_message).map_err(corrupt)?)
            .arg(now.to_rfc3339())
            .arg(now.timestamp_millis())
            .arg(format!("{t}/{id}"))
            .arg(serde_json::to_string(checkpoint).map_err(corrupt)?)
            .arg(self.event_retention)
            .arg(fence_arg(checkpoint.fence));
        for e in events {
            script.arg(stored_json(e)?);
        }
        let seq: i64 = script.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(not_found_if_negative(seq)? as u64)
    }

    async fn save_checkpoint(
        &self,
        checkpoint: &TurnCheckpoint,
        events: &[TurnEvent],
    ) -> Result<(), StoreError> {
        let (t, id) = (
            &checkpoint.request.tenant_id,
            &checkpoint.request.conversation_id,
        );
        let mut c = self.conn.clone();
        let mut script = CHECKPOINT.prepare_invoke();
        script
            .key(self.k(t, id, "meta"))
            .key(self.k(t, id, "checkpoint"))
            .key(self.global("active"))
            .key(self.k(t, id, "evseq"))
            .key(self.k(t, id, "events"))
            .key(self.k(t, id, "fence"))
            .arg(serde_json::to_string(checkpoint).map_err(corrupt)?)
            .arg(format!("{t}/{id}"))
            .arg(self.event_retention)
            .arg(fence_arg(checkpoint.fence));
        for e in events {
            script.arg(stored_json(e)?);
        }
        let ok: i64 = script.invoke_async(&mut c).await.map_err(unavailable)?;
        match ok {
            1 => Ok(()),
            -2 => Err(StoreError::Fenced),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<TurnCheckpoint>, StoreError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c
            .get(self.k(tenant, id, "checkpoint"))
            .await
            .map_err(unavailable)?;
        raw.map(|s| serde_json::from_str(&s).map_err(corrupt))
            .transpose()
    }

    async fn finish_turn(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
        answer: Option<&Message>,
        event: &TurnEvent,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        let now = Utc::now();
        let answer = match answer {
            Some(m) => serde_json::to_string(m).map_err(corrupt)?,
            None => String::new(),
        };
        let stored = StoredEvent {
            id: 0,
            at: now,
            event: event.clone(),
        };
        let mut c = self.conn.clone();
        let r: i64 = FINISH
            .key(self.k(tenant, id, "meta"))
            .key(self.k(tenant, id, "msgs"))
            .key(self.k(tenant, id, "checkpoint"))
            .key(self.k(tenant, id, "pending"))
            .key(self.global("active"))
            .key(self.global("updated"))
            .key(self.k(tenant, id, "evseq"))
            .key(self.k(tenant, id, "events"))
            .key(self.k(tenant, id, "fence"))
            .arg(answer)
            .arg(now.to_rfc3339())
            .arg(format!("\"turn_id\":\"{turn}\""))
            .arg(format!("{tenant}/{id}"))
            .arg(now.timestamp_millis())
            .arg(serde_json::to_string(&stored).map_err(corrupt)?)
            .arg(self.event_retention)
            .arg(fence_arg(fence))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(not_found_if_negative(r)? as u64)
    }

    async fn active_conversations(&self) -> Result<Vec<(TenantId, ConversationId)>, StoreError> {
        let mut c = self.conn.clone();
        let members: Vec<String> = c
            .smembers(self.global("active"))
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for m in members {
            let Some((t, id)) = split_member(&m) else {
                continue;
            };
            let (pending, checkpoint): (i64, bool) = redis::pipe()
                .llen(self.k(&t, &id, "pending"))
                .exists(self.k(&t, &id, "checkpoint"))
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if pending > 0 || checkpoint {
                out.push((t, id));
            }
        }
        Ok(out)
    }

    async fn purge_inactive(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(TenantId, ConversationId)>, StoreError> {
        let mut c = self.conn.clone();
        let members: Vec<String> = c
            .zrangebyscore(
                self.global("updated"),
                "-inf",
                format!("({}", before.timestamp_millis()),
            )
            .await
            .map_err(unavailable)?;
        let mut purged = Vec::new();
        for m in members {
            let Some((t, id)) = split_member(&m) else {
                continue;
            };
            let Some(meta) = self.load_meta(&t, &id).await? else {
                let _: () = c
                    .zrem(self.global("updated"), &m)
                    .await
                    .map_err(unavailable)?;
                continue;
            };
            // The check and the delete run as one script: a message accepted
            // after the read above is seen there and keeps the conversation.
            let mut script = PURGE_IF_STALE.prepare_invoke();
            for suffix in CONVERSATION_KEYS {
                script.key(self.k(&t, &id, suffix));
            }
            let deleted: i64 = script
                .key(self.owner_key(&t, &meta.owner))
                .key(self.global("updated"))
                .key(self.global("active"))
                .arg(&m)
                .arg(id.as_str())
                .arg(before.timestamp_millis())
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            if deleted > 0 {
                purged.push((t, id));
            }
        }
        Ok(purged)
    }

    async fn acquire_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn.clone();
        let r: i64 = ACQUIRE_LEASE
            .key(self.k(tenant, id, "lease"))
            .key(self.k(tenant, id, "fence"))
            .arg(owner)
            .arg(px(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(r).ok())
    }

    async fn renew_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let r: i64 = RENEW_LEASE
            .key(self.k(tenant, id, "lease"))
            .arg(format!("{owner}|{token}"))
            .arg(px(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(r == 1)
    }

    async fn release_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: i64 = RENEW_LEASE
            .key(self.k(tenant, id, "lease"))
            .arg(format!("{owner}|{token}"))
            .arg("")
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn message_accepted(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        c.sismember(self.k(tenant, id, "seen"), message_id.as_str())
            .await
            .map_err(unavailable)
    }

    async fn relayed_until(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c
            .get(self.k(tenant, id, "relayed"))
            .await
            .map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }

    async fn set_relayed_until(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        event_id: u64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: i64 = RAISE
            .key(self.k(tenant, id, "relayed"))
            .arg(event_id)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn event_done(&self, group: &str, event_id: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        c.exists(self.global(&format!("done:{group}:{event_id}")))
            .await
            .map_err(unavailable)
    }

    async fn mark_event_done(
        &self,
        group: &str,
        event_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let secs = ttl.as_secs().max(1);
        c.set_ex(self.global(&format!("done:{group}:{event_id}")), 1u8, secs)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl DocumentStore for RedisStore {
    async fn put_document(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<(), StoreError> {
        let (records, ids) = self.doc_keys(tenant);
        let mut c = self.conn.clone();
        let _: i64 = PUT_DOCUMENT
            .key(records)
            .key(ids)
            .arg(&record.document_id)
            .arg(serde_json::to_string(record).map_err(corrupt)?)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn update_job(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<bool, StoreError> {
        let (records, _) = self.doc_keys(tenant);
        let mut c = self.conn.clone();
        let n: i64 = UPDATE_JOB
            .key(records)
            .arg(&record.document_id)
            .arg(&record.job_id)
            .arg(serde_json::to_string(record).map_err(corrupt)?)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn get_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        let (records, _) = self.doc_keys(tenant);
        let mut c = self.conn.clone();
        let v: Option<String> = c.hget(records, document_id).await.map_err(unavailable)?;
        v.map(|v| serde_json::from_str(&v).map_err(corrupt))
            .transpose()
    }

    async fn list_documents(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (records, ids) = self.doc_keys(tenant);
        let lo = after.map_or_else(|| b"-".to_vec(), |a| format!("({a}").into_bytes());
        self.lex_page(&records, &ids, lo, b"+".to_vec(), limit)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_str(&v).map_err(corrupt))
            .collect()
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<bool, StoreError> {
        let (records, ids) = self.doc_keys(tenant);
        let mut c = self.conn.clone();
        let n: i64 = DELETE_DOCUMENT
            .key(records)
            .key(ids)
            .arg(document_id)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl EventStream for RedisStore {
    async fn append(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        event: &TurnEvent,
    ) -> Result<u64, StoreError> {
        let stored = StoredEvent {
            id: 0,
            at: Utc::now(),
            event: event.clone(),
        };
        let mut c = self.conn.clone();
        let r: i64 = APPEND_EVENT
            .key(self.k(tenant, id, "meta"))
            .key(self.k(tenant, id, "evseq"))
            .key(self.k(tenant, id, "events"))
            .arg(serde_json::to_string(&stored).map_err(corrupt)?)
            .arg(self.event_retention)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(not_found_if_negative(r)? as u64)
    }

    async fn read_after(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut c = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.k(tenant, id, "events"))
            .arg(format!("({after}-1"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        reply
            .ids
            .iter()
            .map(|entry| {
                let event_id = entry
                    .id
                    .split_once('-')
                    .and_then(|(n, _)| n.parse::<u64>().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("stream id {}", entry.id)))?;
                let json: String = entry
                    .get("e")
                    .ok_or_else(|| StoreError::Corrupt("stream entry without `e`".into()))?;
                let mut e: StoredEvent = serde_json::from_str(&json).map_err(corrupt)?;
                e.id = event_id;
                Ok(e)
            })
            .collect()
    }

    async fn last_event_id(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let n: Option<u64> = c
            .get(self.k(tenant, id, "evseq"))
            .await
            .map_err(unavailable)?;
        Ok(n.unwrap_or(0))
    }

    fn subscribe(
        &self,
        tenant: TenantId,
        id: ConversationId,
        after: u64,
    ) -> BoxStream<'static, Result<StoredEvent, StoreError>> {
        let waiter = XreadWaiter {
            hub: self.hub.clone(),
            key: self.k(&tenant, &id, "events"),
            registration: None,
        };
        follow(self.clone(), tenant, id, after, waiter)
    }
}

/// Waits through the process's [`XreadHub`]: no Redis connection of its own.
struct XreadWaiter {
    hub: XreadHub,
    key: String,
    registration: Option<Registration>,
}

#[async_trait]
impl EventWaiter for XreadWaiter {
    async fn wait(&mut self, after: u64) -> Result<Vec<StoredEvent>, StoreError> {
        match self.registration.as_mut() {
            Some(r) => r.wait(after).await,
            None => {
                let mut r = self.hub.register(self.key.clone(), after).await;
                r.wait(after).await;
                self.registration = Some(r);
            }
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl RecordStore for RedisStore {
    async fn write_records(&self, changes: Vec<RecordChange>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut inv = WRITE_RECORDS.prepare_invoke();
        for c in &changes {
            let (h, z) = self.record_keys(&c.collection);
            inv.key(h).key(z);
            match &c.value {
                Some(v) => inv.arg("p").arg(&c.key).arg(v),
                None => inv.arg("d").arg(&c.key).arg(""),
            };
        }
        let mut c = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(())
    }

    async fn replace_record(
        &self,
        change: RecordChange,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (h, z) = self.record_keys(&change.collection);
        let mut inv = REPLACE_RECORD.prepare_invoke();
        inv.key(h).key(z).arg(&change.key);
        match expected {
            Some(v) => inv.arg("value").arg(v),
            None => inv.arg("absent").arg(""),
        };
        match &change.value {
            Some(v) => inv.arg("p").arg(v),
            None => inv.arg("d").arg(""),
        };
        let mut c = self.conn.clone();
        let written: i64 = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(written == 1)
    }

    async fn get_record(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        let (h, _) = self.record_keys(collection);
        let mut c = self.conn.clone();
        c.hget(h, key).await.map_err(unavailable)
    }

    async fn scan_records(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (h, z) = self.record_keys(collection);
        let lo = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ => format!("[{prefix}"),
        };
        // Every key with the prefix sorts before prefix + 0xFF.
        let mut hi = b"(".to_vec();
        hi.extend_from_slice(prefix.as_bytes());
        hi.push(0xff);
        let hi = if prefix.is_empty() { b"+".to_vec() } else { hi };
        self.lex_page(&h, &z, lo.into_bytes(), hi, limit).await
    }
}
