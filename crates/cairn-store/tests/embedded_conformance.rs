//! The embedded (redb) store against the shared conformance suite, plus the
//! property only a file-backed store has: it survives a restart.

#![allow(clippy::unwrap_used)]

use cairn_core::ports::{EventStream, MemoryStore};
use cairn_core::*;
use cairn_store::{EmbeddedStore, conformance_tests};

const RETENTION: u64 = 50;

async fn fresh() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open_and_init(&dir.path().join("memory.redb"), RETENTION)
        .await
        .unwrap();
    (s, dir)
}

mod conformance {
    use super::*;
    // The TempDir is leaked into the test's lifetime by keeping it in a static-free
    // tuple; dropping it at the end of each test removes the files.
    conformance_tests!(
        {
            let (s, dir) = fresh().await;
            std::mem::forget(dir);
            s
        },
        RETENTION
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.redb");
    let t = TenantId::parse("acme").unwrap();
    let m = ConversationMeta {
        id: ConversationId::generate(),
        tenant_id: t.clone(),
        owner: UserId::parse("ana").unwrap(),
        title: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
        message_count: 0,
    };
    {
        let s = EmbeddedStore::open_and_init(&path, RETENTION)
            .await
            .unwrap();
        s.create_conversation(&m).await.unwrap();
        s.append_message(&t, &m.id, &Message::new(Role::User, "remember me"))
            .await
            .unwrap();
        s.append(
            &t,
            &m.id,
            &TurnEvent::TurnFailed {
                turn_id: TurnId::generate(),
                code: "x".into(),
                reason: "y".into(),
            },
        )
        .await
        .unwrap();
    }
    // The writer thread releases the file once every handle is gone.
    let mut reopened = None;
    for _ in 0..100 {
        match EmbeddedStore::open_and_init(&path, RETENTION).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let s = reopened.expect("store reopens");
    let msgs = s.messages(&t, &m.id, 0, 10).await.unwrap();
    assert_eq!(msgs[0].content, "remember me");
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_rows_expire_in_every_consumer_group() {
    // The pruning used to look at the first 64 keys in key order only: the
    // rows of the groups sorting after them (here `z-…`) were never removed.
    let (s, _dir) = fresh().await;
    let short = std::time::Duration::from_millis(1);
    for group in ["a-router", "m-ingest", "z-conversations"] {
        for i in 0..100 {
            s.mark_event_done(group, &format!("e{i:03}"), short)
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Every later write removes a batch of expired rows, oldest first.
    let long = std::time::Duration::from_secs(3600);
    for i in 0..10 {
        s.mark_event_done("a-router", &format!("live{i}"), long)
            .await
            .unwrap();
    }
    assert_eq!(
        s.dedup_rows().await.unwrap(),
        10,
        "only the live rows remain"
    );
    assert!(s.event_done("a-router", "live3").await.unwrap());
    assert!(!s.event_done("z-conversations", "e001").await.unwrap());
}

mod desk_conformance {
    use super::*;
    cairn_store::desk_conformance_tests!({
        let (s, dir) = fresh().await;
        std::mem::forget(dir);
        s
    });
}

mod limits_conformance {
    cairn_store::limits_conformance_tests!(cairn_store::limits::LocalRateLimiter::new());
}
