//! The Redis store against the shared conformance suite. Needs a real Redis:
//! `CAIRN_TEST_REDIS_URL` (set by `scripts/test.sh`, which starts one). Without
//! it these tests fail with a message saying so.

#![allow(clippy::unwrap_used)]

use cairn_store::{RedisStore, conformance_tests};

const RETENTION: u64 = 50;

async fn fresh() -> RedisStore {
    let url = std::env::var("CAIRN_TEST_REDIS_URL").expect(
        "CAIRN_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, which starts redis-server",
    );
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    RedisStore::connect(&url, &prefix, RETENTION)
        .await
        .expect("Redis at CAIRN_TEST_REDIS_URL answers")
}

mod conformance {
    use super::*;
    conformance_tests!(fresh().await, RETENTION);
}

mod desk_conformance {
    use super::*;
    cairn_store::desk_conformance_tests!(fresh().await);
}

mod limits_conformance {
    use super::*;
    cairn_store::limits_conformance_tests!(fresh().await.rate_limiter());
}
