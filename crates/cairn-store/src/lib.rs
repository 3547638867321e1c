//! MemoryStore and EventStream adapters: embedded (redb) and Redis.
