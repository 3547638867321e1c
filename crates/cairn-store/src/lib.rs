//! Conversation memory and event streams: the [`MemoryStore`] and [`EventStream`]
//! ports of `cairn-core`, each with two adapters that pass one conformance suite.
//!
//! - [`embedded::EmbeddedStore`]: a redb file in the data dir (no service needed;
//!   survives restarts). Writes go through a group-commit writer.
//! - [`redis_store::RedisStore`]: Redis, for production and for several replicas.
//!   Conversation keys share one hash tag so each multi-key update is one Lua script.
//! - `embedded_desk` and `redis_desk`: the [`TicketStore`] and [`CounterStore`]
//!   ports on the same two backends (tickets filtered and paged while the store
//!   walks an index; analytics counters applied once per event).
//! - [`limits`]: the [`RateLimiter`] port in process (`governor`) and in Redis
//!   (one GCRA script per request), and token budgets over any counter store.
//! - [`follow`]: the read-then-wait loop both adapters use to tail an event stream.
//! - `xread_hub`: the Redis adapter's one blocking `XREAD` per process for all
//!   followers (Redis connections stay bounded whatever the number of streams).
//! - [`conformance`]: the shared suite; each adapter's tests run every case of it.
//! - [`desk_conformance`]: the same for the TicketStore and CounterStore ports.
//! - [`limits_conformance`]: the same for the RateLimiter port.
//!
//! [`MemoryStore`]: cairn_core::ports::MemoryStore
//! [`EventStream`]: cairn_core::ports::EventStream
//! [`TicketStore`]: cairn_core::ports::TicketStore
//! [`CounterStore`]: cairn_core::ports::CounterStore
//! [`RateLimiter`]: cairn_core::ports::RateLimiter

pub mod conformance;
pub mod desk_conformance;
pub mod embedded;
mod embedded_desk;
pub mod follow;
pub mod limits;
pub mod limits_conformance;
mod redis_desk;
pub mod redis_store;
mod xread_hub;

pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;
