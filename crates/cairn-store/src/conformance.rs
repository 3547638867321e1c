//! The conformance suite every MemoryStore + EventStream adapter must pass.
//!
//! Each case is a public async function taking a fresh store; an adapter's test
//! file calls [`conformance_tests!`](crate::conformance_tests) to turn every case
//! into a named test. The cases panic with a message when the adapter misbehaves.

#![allow(clippy::unwrap_used, missing_docs)]

use cairn_core::ids::*;
use cairn_core::ports::{
    DocumentRecord, DocumentStore, Enqueued, EventStream, JobStatus, MemoryStore, RecordChange,
    RecordStore, StoreError,
};
use cairn_core::*;
use chrono::{Duration as ChronoDuration, Utc};
use futures::StreamExt;
use std::time::Duration;

/// What the suite needs of an adapter.
pub trait Store: MemoryStore + EventStream + DocumentStore + RecordStore + Clone {}
impl<T: MemoryStore + EventStream + DocumentStore + RecordStore + Clone> Store for T {}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn meta(t: &TenantId, owner: &UserId) -> ConversationMeta {
    ConversationMeta::new(
        ConversationId::generate(),
        t.clone(),
        owner.clone(),
        Some("t".into()),
    )
}

fn request(m: &ConversationMeta, text: &str) -> TurnRequest {
    TurnRequest::new(
        m.tenant_id.clone(),
        m.id.clone(),
        m.owner.clone(),
        text.into(),
    )
}

fn started(turn: &TurnId) -> TurnEvent {
    TurnEvent::TurnStarted {
        turn_id: turn.clone(),
        message_id: MessageId::generate(),
        resumed: false,
    }
}

pub async fn conversation_lifecycle<S: Store>(s: S) {
    let t = tenant("acme");
    let u = user("ana");
    let m = meta(&t, &u);
    s.create_conversation(&m).await.unwrap();
    assert!(matches!(
        s.create_conversation(&m).await,
        Err(StoreError::AlreadyExists)
    ));
    let got = s.get_conversation(&t, &m.id).await.unwrap().unwrap();
    assert_eq!(got.id, m.id);
    assert_eq!(got.owner, u);
    assert_eq!(got.message_count, 0);
    assert!(s.delete_conversation(&t, &m.id).await.unwrap());
    assert!(s.get_conversation(&t, &m.id).await.unwrap().is_none());
    assert!(!s.delete_conversation(&t, &m.id).await.unwrap());
}

pub async fn listing_is_paginated_per_owner<S: Store>(s: S) {
    let t = tenant("acme");
    let ana = user("ana");
    let bob = user("bob");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let m = meta(&t, &ana);
        s.create_conversation(&m).await.unwrap();
        ids.push(m.id);
    }
    s.create_conversation(&meta(&t, &bob)).await.unwrap();
    let page1 = s.list_conversations(&t, &ana, None, 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|m| &m.id).collect::<Vec<_>>(),
        vec![&ids[0], &ids[1]]
    );
    let page2 = s
        .list_conversations(&t, &ana, Some(&page1[1].id), 2)
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|m| &m.id).collect::<Vec<_>>(),
        vec![&ids[2], &ids[3]]
    );
    let page3 = s
        .list_conversations(&t, &ana, Some(&page2[1].id), 2)
        .await
        .unwrap();
    assert_eq!(page3.len(), 1);
    assert_eq!(page3[0].id, ids[4]);
    assert_eq!(
        s.list_conversations(&t, &bob, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn tenants_are_isolated<S: Store>(s: S) {
    let acme = tenant("acme");
    let evil = tenant("evil");
    let u = user("ana");
    let m = meta(&acme, &u);
    s.create_conversation(&m).await.unwrap();
    s.append_message(&acme, &m.id, &Message::new(Role::User, "secret"))
        .await
        .unwrap();
    s.append(&acme, &m.id, &started(&TurnId::generate()))
        .await
        .unwrap();

    assert!(s.get_conversation(&evil, &m.id).await.unwrap().is_none());
    assert!(
        s.list_conversations(&evil, &u, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.messages(&evil, &m.id, 0, 10).await.unwrap().is_empty());
    assert!(s.read_after(&evil, &m.id, 0, 10).await.unwrap().is_empty());
    assert!(!s.delete_conversation(&evil, &m.id).await.unwrap());
    assert!(matches!(
        s.append_message(&evil, &m.id, &Message::new(Role::User, "x"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.append(&evil, &m.id, &started(&TurnId::generate())).await,
        Err(StoreError::NotFound)
    ));
    let mut r = request(&m, "x");
    r.tenant_id = evil.clone();
    assert!(matches!(
        s.enqueue_turn(&r).await,
        Err(StoreError::NotFound)
    ));
    // The owner still sees everything.
    assert_eq!(s.messages(&acme, &m.id, 0, 10).await.unwrap().len(), 1);
}

pub async fn transcript_assigns_sequence_numbers<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    for i in 0..5 {
        let seq = s
            .append_message(&t, &m.id, &Message::new(Role::User, format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    let all = s.messages(&t, &m.id, 0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[3].seq, 3);
    assert_eq!(all[3].content, "m3");
    let tail = s.messages(&t, &m.id, 3, 100).await.unwrap();
    assert_eq!(tail.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
    let page = s.messages(&t, &m.id, 1, 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    let meta = s.get_conversation(&t, &m.id).await.unwrap().unwrap();
    assert_eq!(meta.message_count, 5);
    assert!(meta.updated_at >= m.updated_at);
}

pub async fn summary_round_trips<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    assert_eq!(s.summary(&t, &m.id).await.unwrap(), Summary::default());
    let sum = Summary {
        text: "the user is Ana".into(),
        covers_until: 4,
    };
    s.save_summary(&t, &m.id, &sum).await.unwrap();
    assert_eq!(s.summary(&t, &m.id).await.unwrap(), sum);
    let missing = ConversationId::generate();
    assert!(matches!(
        s.save_summary(&t, &missing, &sum).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn turn_queue_dedups_and_finishes<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    let r1 = request(&m, "one");
    let r2 = request(&m, "two");
    assert!(!s.message_accepted(&t, &m.id, &r1.message_id).await.unwrap());
    assert_eq!(s.enqueue_turn(&r1).await.unwrap(), Enqueued::New);
    assert!(s.message_accepted(&t, &m.id, &r1.message_id).await.unwrap());
    assert!(
        !s.message_accepted(&tenant("globex"), &m.id, &r1.message_id)
            .await
            .unwrap()
    );
    assert_eq!(s.enqueue_turn(&r2).await.unwrap(), Enqueued::New);
    assert_eq!(s.enqueue_turn(&r1).await.unwrap(), Enqueued::Duplicate);
    let pending = s.pending_turns(&t, &m.id).await.unwrap();
    assert_eq!(pending, vec![r1.clone(), r2.clone()]);
    assert!(
        s.active_conversations()
            .await
            .unwrap()
            .contains(&(t.clone(), m.id.clone()))
    );

    let cp = TurnCheckpoint {
        agent: None,
        approvals: Vec::new(),
        first_turn: false,
        request: r1.clone(),
        steps: vec![Step::Tool {
            index: 1,
            call: ToolCall {
                id: "c1".into(),
                name: "echo".into(),
                arguments: serde_json::json!({"x": 1}),
            },
            outcome: None,
        }],
        model_calls: 1,
        attempts: 1,
        usage: Usage::default(),
        started_at: Utc::now(),
        fence: None,
    };
    let mut user_msg = Message::new(Role::User, "one");
    user_msg.id = r1.message_id.clone();
    let seq = s
        .begin_turn(&cp, &user_msg, &[started(&r1.turn_id)])
        .await
        .unwrap();
    assert_eq!(seq, 0);
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), 1);
    assert_eq!(
        s.load_checkpoint(&t, &m.id).await.unwrap(),
        Some(cp.clone())
    );
    let mut cp2 = cp.clone();
    cp2.model_calls = 2;
    let called = TurnEvent::ToolCalled {
        turn_id: r1.turn_id.clone(),
        step: 1,
        tool: "echo".into(),
        arguments: serde_json::json!({}),
    };
    s.save_checkpoint(&cp2, &[called.clone(), called.clone()])
        .await
        .unwrap();
    let evs = s.read_after(&t, &m.id, 1, 10).await.unwrap();
    assert_eq!(evs.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(evs[1].event, called);
    s.save_checkpoint(&cp2, &[]).await.unwrap();
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), 3);
    assert_eq!(s.load_checkpoint(&t, &m.id).await.unwrap(), Some(cp2));

    let mut answer = Message::new(Role::Assistant, "done");
    answer.turn_id = Some(r1.turn_id.clone());
    let before = s.last_event_id(&t, &m.id).await.unwrap();
    let done = TurnEvent::TurnFailed {
        turn_id: r1.turn_id.clone(),
        code: "x".into(),
        reason: "y".into(),
    };
    let event_id = s
        .finish_turn(&t, &m.id, &r1.turn_id, Some(&answer), &done, None)
        .await
        .unwrap();
    assert_eq!(event_id, before + 1);
    assert_eq!(
        s.read_after(&t, &m.id, before, 10).await.unwrap()[0].event,
        done
    );
    assert_eq!(s.load_checkpoint(&t, &m.id).await.unwrap(), None);
    assert_eq!(s.pending_turns(&t, &m.id).await.unwrap(), vec![r2.clone()]);
    let msgs = s.messages(&t, &m.id, 0, 10).await.unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        vec!["one", "done"]
    );
    // A duplicate of a finished message is still recognised.
    assert_eq!(s.enqueue_turn(&r1).await.unwrap(), Enqueued::Duplicate);
    // Finishing it again (a retry whose first reply was lost) writes nothing:
    // one answer, one outcome.
    let mut again = Message::new(Role::Assistant, "done again");
    again.turn_id = Some(r1.turn_id.clone());
    assert_eq!(
        s.finish_turn(&t, &m.id, &r1.turn_id, Some(&again), &done, None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), event_id);
    assert_eq!(s.messages(&t, &m.id, 0, 10).await.unwrap().len(), 2);
    assert_eq!(s.pending_turns(&t, &m.id).await.unwrap(), vec![r2.clone()]);

    s.finish_turn(&t, &m.id, &r2.turn_id, None, &started(&r2.turn_id), None)
        .await
        .unwrap();
    assert!(s.pending_turns(&t, &m.id).await.unwrap().is_empty());
    assert!(
        !s.active_conversations()
            .await
            .unwrap()
            .contains(&(t.clone(), m.id.clone()))
    );
}

pub async fn events_are_numbered_and_trimmed<S: Store>(s: S, retention: u64) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    let turn = TurnId::generate();
    // One event appended again and again, so a read-back compares whole.
    let event = started(&turn);
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), 0);
    let total = retention * 3;
    for i in 1..=total {
        assert_eq!(s.append(&t, &m.id, &event).await.unwrap(), i);
    }
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), total);
    let tail = s.read_after(&t, &m.id, total - 2, 10).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![total - 1, total]
    );
    assert_eq!(tail[0].event, event);
    let kept = s.read_after(&t, &m.id, 0, 10_000).await.unwrap();
    assert!(
        (kept.len() as u64) < total,
        "old events must be trimmed ({} kept of {total})",
        kept.len()
    );
    assert!(kept.len() as u64 >= retention);
    // Ids keep increasing after trimming.
    assert_eq!(s.append(&t, &m.id, &event).await.unwrap(), total + 1);
}

async fn next(
    sub: &mut futures::stream::BoxStream<'static, Result<StoredEvent, StoreError>>,
) -> StoredEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("event arrives")
        .expect("stream open")
        .expect("no store error")
}

pub async fn subscribe_replays_then_follows<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    let turn = TurnId::generate();
    for _ in 0..3 {
        s.append(&t, &m.id, &started(&turn)).await.unwrap();
    }
    let mut sub = s.subscribe(t.clone(), m.id.clone(), 1);
    assert_eq!(next(&mut sub).await.id, 2);
    assert_eq!(next(&mut sub).await.id, 3);
    let writer = s.clone();
    let (t2, id2) = (t.clone(), m.id.clone());
    let handle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..2 {
            writer
                .append(&t2, &id2, &started(&TurnId::generate()))
                .await
                .unwrap();
        }
    });
    assert_eq!(next(&mut sub).await.id, 4);
    assert_eq!(next(&mut sub).await.id, 5);
    handle.await.unwrap();
    // A subscriber of another tenant sees nothing.
    let mut other = s.subscribe(tenant("evil"), m.id.clone(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other.next())
            .await
            .is_err()
    );
}

pub async fn delete_removes_everything<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    let r = request(&m, "x");
    s.enqueue_turn(&r).await.unwrap();
    s.append_message(&t, &m.id, &Message::new(Role::User, "x"))
        .await
        .unwrap();
    s.append(&t, &m.id, &started(&r.turn_id)).await.unwrap();
    s.save_summary(
        &t,
        &m.id,
        &Summary {
            text: "s".into(),
            covers_until: 1,
        },
    )
    .await
    .unwrap();
    assert!(s.delete_conversation(&t, &m.id).await.unwrap());
    // Recreating the same id starts from nothing.
    s.create_conversation(&m).await.unwrap();
    assert!(s.messages(&t, &m.id, 0, 10).await.unwrap().is_empty());
    assert!(s.read_after(&t, &m.id, 0, 10).await.unwrap().is_empty());
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), 0);
    assert!(s.pending_turns(&t, &m.id).await.unwrap().is_empty());
    assert_eq!(s.summary(&t, &m.id).await.unwrap(), Summary::default());
    assert_eq!(s.enqueue_turn(&r).await.unwrap(), Enqueued::New);
}

pub async fn retention_purges_idle_conversations<S: Store>(s: S) {
    let t = tenant("acme");
    let u = user("ana");
    let mut old = meta(&t, &u);
    old.created_at = Utc::now() - ChronoDuration::days(40);
    old.updated_at = old.created_at;
    s.create_conversation(&old).await.unwrap();
    let fresh = meta(&t, &u);
    s.create_conversation(&fresh).await.unwrap();
    let purged = s
        .purge_inactive(Utc::now() - ChronoDuration::days(30))
        .await
        .unwrap();
    assert_eq!(purged, vec![(t.clone(), old.id.clone())]);
    assert!(s.get_conversation(&t, &old.id).await.unwrap().is_none());
    assert!(s.get_conversation(&t, &fresh.id).await.unwrap().is_some());
}

fn document(id: &str, job: &str) -> DocumentRecord {
    let now = Utc::now();
    DocumentRecord {
        document_id: id.into(),
        title: Some(format!("Title of {id}")),
        source: Some(format!("{id}.md")),
        tags: vec!["faq".into()],
        date: None,
        format: "markdown".into(),
        bytes: 42,
        job_id: job.into(),
        status: JobStatus::Queued,
        outcome: None,
        error: None,
        chunks: None,
        created_at: now,
        updated_at: now,
    }
}

pub async fn document_records_round_trip_and_page<S: Store>(s: S) {
    let t = tenant("acme");
    for id in ["c.md", "a.md", "b.md", "d.md"] {
        s.put_document(&t, &document(id, "job-1")).await.unwrap();
    }
    let got = s.get_document(&t, "a.md").await.unwrap().unwrap();
    assert_eq!(got, document_with_times("a.md", "job-1", &got));
    let page1 = s.list_documents(&t, None, 3).await.unwrap();
    let ids: Vec<&str> = page1.iter().map(|d| d.document_id.as_str()).collect();
    assert_eq!(ids, ["a.md", "b.md", "c.md"], "listed in id order");
    let page2 = s.list_documents(&t, Some("c.md"), 3).await.unwrap();
    let ids: Vec<&str> = page2.iter().map(|d| d.document_id.as_str()).collect();
    assert_eq!(ids, ["d.md"]);
    assert!(
        s.list_documents(&t, Some("d.md"), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.get_document(&t, "missing").await.unwrap().is_none());

    assert!(s.delete_document(&t, "b.md").await.unwrap());
    assert!(
        !s.delete_document(&t, "b.md").await.unwrap(),
        "second delete finds nothing"
    );
    assert!(s.get_document(&t, "b.md").await.unwrap().is_none());
    let ids: Vec<String> = s
        .list_documents(&t, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.document_id)
        .collect();
    assert_eq!(ids, ["a.md", "c.md", "d.md"]);
}

/// `expected` with the timestamps of `got` (they round-trip through text).
fn document_with_times(id: &str, job: &str, got: &DocumentRecord) -> DocumentRecord {
    DocumentRecord {
        created_at: got.created_at,
        updated_at: got.updated_at,
        ..document(id, job)
    }
}

pub async fn job_updates_apply_only_to_the_current_job<S: Store>(s: S) {
    let t = tenant("acme");
    s.put_document(&t, &document("a.md", "job-1"))
        .await
        .unwrap();
    let mut parsing = document("a.md", "job-1");
    parsing.status = JobStatus::Parsing;
    assert!(s.update_job(&t, &parsing).await.unwrap());
    assert_eq!(
        s.get_document(&t, "a.md").await.unwrap().unwrap().status,
        JobStatus::Parsing
    );

    // A new upload starts job-2: job-1's late updates are refused.
    s.put_document(&t, &document("a.md", "job-2"))
        .await
        .unwrap();
    let mut stale = document("a.md", "job-1");
    stale.status = JobStatus::Done;
    assert!(!s.update_job(&t, &stale).await.unwrap());
    let now = s.get_document(&t, "a.md").await.unwrap().unwrap();
    assert_eq!(
        (now.job_id.as_str(), now.status),
        ("job-2", JobStatus::Queued)
    );

    // A deleted document takes no updates either.
    s.delete_document(&t, "a.md").await.unwrap();
    let mut late = document("a.md", "job-2");
    late.status = JobStatus::Failed;
    late.error = Some("corrupt".into());
    assert!(!s.update_job(&t, &late).await.unwrap());
    assert!(s.get_document(&t, "a.md").await.unwrap().is_none());
}

pub async fn document_records_are_tenant_scoped<S: Store>(s: S) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    s.put_document(&a, &document("shared-id", "job-a"))
        .await
        .unwrap();
    assert!(s.get_document(&b, "shared-id").await.unwrap().is_none());
    assert!(s.list_documents(&b, None, 10).await.unwrap().is_empty());
    assert!(!s.delete_document(&b, "shared-id").await.unwrap());
    assert!(
        !s.update_job(&b, &document("shared-id", "job-a"))
            .await
            .unwrap()
    );
    assert!(s.get_document(&a, "shared-id").await.unwrap().is_some());
}

pub async fn leases_fence_stale_writers<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    let ttl = Duration::from_millis(300);
    let a = s
        .acquire_lease(&t, &m.id, "replica-a", ttl)
        .await
        .unwrap()
        .unwrap();
    // Held: another owner waits; the holder gets its own token back.
    assert_eq!(
        s.acquire_lease(&t, &m.id, "replica-b", ttl).await.unwrap(),
        None
    );
    assert_eq!(
        s.acquire_lease(&t, &m.id, "replica-a", ttl).await.unwrap(),
        Some(a)
    );
    assert!(s.renew_lease(&t, &m.id, "replica-a", a, ttl).await.unwrap());
    assert!(!s.renew_lease(&t, &m.id, "replica-b", a, ttl).await.unwrap());

    let r = request(&m, "one");
    s.enqueue_turn(&r).await.unwrap();
    let mut cp = TurnCheckpoint {
        agent: None,
        approvals: Vec::new(),
        first_turn: false,
        request: r.clone(),
        steps: vec![],
        model_calls: 0,
        attempts: 1,
        usage: Usage::default(),
        started_at: Utc::now(),
        fence: Some(a),
    };
    let mut user_msg = Message::new(Role::User, "one");
    user_msg.id = r.message_id.clone();
    s.begin_turn(&cp, &user_msg, &[started(&r.turn_id)])
        .await
        .unwrap();

    // The lease expires; replica-b takes over with a newer token.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(!s.renew_lease(&t, &m.id, "replica-a", a, ttl).await.unwrap());
    let b = s
        .acquire_lease(&t, &m.id, "replica-b", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(b > a, "tokens grow: {a} then {b}");
    let events = s.last_event_id(&t, &m.id).await.unwrap();

    // Every write of the stale owner is rejected and changes nothing.
    cp.model_calls = 1;
    assert!(matches!(
        s.save_checkpoint(&cp, &[started(&r.turn_id)]).await,
        Err(StoreError::Fenced)
    ));
    let mut answer = Message::new(Role::Assistant, "stale");
    answer.turn_id = Some(r.turn_id.clone());
    assert!(matches!(
        s.finish_turn(
            &t,
            &m.id,
            &r.turn_id,
            Some(&answer),
            &started(&r.turn_id),
            Some(a)
        )
        .await,
        Err(StoreError::Fenced)
    ));
    assert_eq!(s.last_event_id(&t, &m.id).await.unwrap(), events);
    assert_eq!(
        s.load_checkpoint(&t, &m.id)
            .await
            .unwrap()
            .unwrap()
            .model_calls,
        0
    );

    // The new owner writes; after it releases, replica-a may take over again.
    cp.fence = Some(b);
    s.save_checkpoint(&cp, &[]).await.unwrap();
    s.finish_turn(
        &t,
        &m.id,
        &r.turn_id,
        Some(&answer),
        &started(&r.turn_id),
        Some(b),
    )
    .await
    .unwrap();
    s.release_lease(&t, &m.id, "replica-b", b).await.unwrap();
    let c = s
        .acquire_lease(&t, &m.id, "replica-a", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(c > b);
    // Leases are per conversation and per tenant.
    let other = meta(&tenant("globex"), &user("ana"));
    assert!(
        s.acquire_lease(&other.tenant_id, &m.id, "replica-b", ttl)
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn relay_progress_only_moves_forward<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    assert_eq!(s.relayed_until(&t, &m.id).await.unwrap(), 0);
    s.set_relayed_until(&t, &m.id, 5).await.unwrap();
    s.set_relayed_until(&t, &m.id, 3).await.unwrap();
    assert_eq!(s.relayed_until(&t, &m.id).await.unwrap(), 5);
    assert_eq!(s.relayed_until(&tenant("globex"), &m.id).await.unwrap(), 0);
    s.delete_conversation(&t, &m.id).await.unwrap();
    assert_eq!(s.relayed_until(&t, &m.id).await.unwrap(), 0);
}

pub async fn finished_events_are_remembered_for_their_ttl<S: Store>(s: S) {
    let id = uuid::Uuid::now_v7().to_string();
    let other = uuid::Uuid::now_v7().to_string();
    let done = |group: &'static str, id: String| {
        let s = &s;
        async move { s.event_done(group, &id).await.unwrap() }
    };
    assert!(!done("cairn-router", id.clone()).await);
    assert!(!done("cairn-router", other.clone()).await);
    s.mark_event_done("cairn-router", &id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(done("cairn-router", id.clone()).await);
    assert!(!done("cairn-router", other.clone()).await);
    // Per consumer group.
    assert!(!done("cairn-ingestion", id.clone()).await);
    assert!(!done("cairn-ingestion", other.clone()).await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!done("cairn-router", id).await);
    assert!(!done("cairn-router", other).await);
}

pub async fn cancel_requests_are_per_turn_and_the_first_mode_wins<S: Store>(s: S) {
    use cairn_core::ports::{CancelMode, CancelRequests};
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    let (one, two) = (TurnId::generate(), TurnId::generate());
    assert_eq!(s.cancel_requested(&t, &m.id, &one).await.unwrap(), None);
    s.request_cancel(&t, &m.id, &one, CancelMode::Rollback)
        .await
        .unwrap();
    s.request_cancel(&t, &m.id, &one, CancelMode::Cancel)
        .await
        .unwrap();
    assert_eq!(
        s.cancel_requested(&t, &m.id, &one).await.unwrap(),
        Some(CancelMode::Rollback)
    );
    assert_eq!(s.cancel_requested(&t, &m.id, &two).await.unwrap(), None);
    // Scoped to the tenant and conversation.
    let other = meta(&t, &user("ana"));
    assert_eq!(s.cancel_requested(&t, &other.id, &one).await.unwrap(), None);
    assert_eq!(
        s.cancel_requested(&tenant("globex"), &m.id, &one)
            .await
            .unwrap(),
        None
    );
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an async
/// expression that yields a fresh store; `$retention` is the event retention it
/// was opened with.
pub async fn conversations_are_counted_per_owner<S: Store>(s: S) {
    let t = tenant("acme");
    for _ in 0..3 {
        s.create_conversation(&meta(&t, &user("ana")))
            .await
            .unwrap();
    }
    s.create_conversation(&meta(&t, &user("bo"))).await.unwrap();
    s.create_conversation(&meta(&tenant("globex"), &user("ana")))
        .await
        .unwrap();
    // User ids as identity providers issue them.
    s.create_conversation(&meta(&t, &user("auth0|abc123")))
        .await
        .unwrap();
    assert_eq!(s.count_conversations(&t, &user("ana")).await.unwrap(), 3);
    assert_eq!(s.count_conversations(&t, &user("bo")).await.unwrap(), 1);
    assert_eq!(
        s.count_conversations(&t, &user("auth0|abc123"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.count_conversations(&t, &user("auth0")).await.unwrap(), 0);
    assert_eq!(s.count_conversations(&t, &user("nobody")).await.unwrap(), 0);
}

/// Median time of finishing a turn with `queued` requests waiting behind it.
async fn finish_time<S: Store>(s: &S, queued: usize) -> Duration {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    let requests: Vec<TurnRequest> = (0..queued + 21)
        .map(|i| {
            request(
                &m,
                &format!("message {i} with some text to make it a realistic size"),
            )
        })
        .collect();
    for r in &requests {
        s.enqueue_turn(r).await.unwrap();
    }
    let mut times = Vec::new();
    for r in requests.iter().take(21) {
        let started = std::time::Instant::now();
        s.finish_turn(
            &t,
            &m.id,
            &r.turn_id,
            None,
            &started_event(&r.turn_id),
            None,
        )
        .await
        .unwrap();
        times.push(started.elapsed());
    }
    assert_eq!(s.pending_turns(&t, &m.id).await.unwrap().len(), queued);
    times.sort();
    times[times.len() / 2]
}

fn started_event(turn: &TurnId) -> TurnEvent {
    started(turn)
}

pub async fn finishing_a_turn_is_independent_of_the_queue_length<S: Store>(s: S) {
    // The finished turn is the head of its queue: removing it must not scan
    // (and decode) every waiting request.
    let short = finish_time(&s, 5).await;
    let long = finish_time(&s, 5_000).await;
    assert!(
        long < short * 4 + Duration::from_millis(2),
        "finishing with 5,000 queued took {long:?}, with 5 {short:?}"
    );
}

pub async fn retention_keeps_conversations_with_queued_work<S: Store>(s: S) {
    // A message accepted (202) into an idle conversation must not be deleted
    // by the retention sweep that found it idle a moment before.
    let t = tenant("acme");
    let mut old = meta(&t, &user("ana"));
    old.created_at = Utc::now() - ChronoDuration::days(40);
    old.updated_at = old.created_at;
    s.create_conversation(&old).await.unwrap();
    s.enqueue_turn(&request(&old, "are you there?"))
        .await
        .unwrap();
    let purged = s
        .purge_inactive(Utc::now() - ChronoDuration::days(30))
        .await
        .unwrap();
    assert!(purged.is_empty());
    assert!(s.get_conversation(&t, &old.id).await.unwrap().is_some());
    assert_eq!(s.pending_turns(&t, &old.id).await.unwrap().len(), 1);
}

pub async fn reading_from_the_last_sequence_number_is_empty<S: Store>(s: S) {
    let t = tenant("acme");
    let m = meta(&t, &user("ana"));
    s.create_conversation(&m).await.unwrap();
    for text in ["a", "b"] {
        s.append_message(&t, &m.id, &Message::new(Role::User, text))
            .await
            .unwrap();
    }
    for from in [u64::MAX, i64::MAX as u64, i64::MAX as u64 + 1, 2] {
        assert!(
            s.messages(&t, &m.id, from, 100).await.unwrap().is_empty(),
            "from {from}"
        );
    }
    assert_eq!(s.messages(&t, &m.id, 1, 100).await.unwrap()[0].content, "b");
}

pub async fn records_are_written_in_batches_and_scanned_in_key_order<S: Store>(s: S) {
    let put = |c: &str, k: &str, v: &str| RecordChange::put(c, k, v.to_owned());
    s.write_records(vec![
        put("a.one", "t1/002", "\"b\""),
        put("a.one", "t1/001", "\"a\""),
        put("a.one", "t2/001", "\"c\""),
        put("a.two", "t1/001", "\"other collection\""),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.get_record("a.one", "t1/001").await.unwrap().as_deref(),
        Some("\"a\"")
    );
    assert_eq!(s.get_record("a.one", "t9").await.unwrap(), None);
    let keys = |rows: Vec<(String, String)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let t1 = s.scan_records("a.one", "t1/", None, 10).await.unwrap();
    assert_eq!(keys(t1), ["t1/001", "t1/002"]);
    let all = s.scan_records("a.one", "", None, 10).await.unwrap();
    assert_eq!(keys(all), ["t1/001", "t1/002", "t2/001"]);
    let page = s
        .scan_records("a.one", "", Some("t1/001"), 1)
        .await
        .unwrap();
    assert_eq!(keys(page), ["t1/002"]);
    let none = s
        .scan_records("a.one", "t1/", Some("t1/002"), 10)
        .await
        .unwrap();
    assert!(none.is_empty());
    // A put and a delete in one batch; the other collection is untouched.
    s.write_records(vec![
        RecordChange::delete("a.one", "t1/001"),
        put("a.one", "t1/002", "\"b2\""),
    ])
    .await
    .unwrap();
    let t1 = s.scan_records("a.one", "t1/", None, 10).await.unwrap();
    assert_eq!(t1, [("t1/002".to_owned(), "\"b2\"".to_owned())]);
    assert!(s.get_record("a.two", "t1/001").await.unwrap().is_some());
}

pub async fn a_record_is_replaced_only_from_the_value_read<S: Store>(s: S) {
    let put = |v: &str| RecordChange::put("cas", "t1/a", v.to_owned());
    // Absent expected: creates once.
    assert!(s.replace_record(put("1"), None).await.unwrap());
    assert!(!s.replace_record(put("x"), None).await.unwrap());
    // Two writers read "1": the first moves it on, the second is refused.
    assert!(s.replace_record(put("2"), Some("1")).await.unwrap());
    assert!(!s.replace_record(put("3"), Some("1")).await.unwrap());
    assert_eq!(
        s.get_record("cas", "t1/a").await.unwrap().as_deref(),
        Some("2")
    );
    // A delete from a stale value is refused; from the current one it lands,
    // and the key leaves the scan too.
    let del = || RecordChange::delete("cas", "t1/a");
    assert!(!s.replace_record(del(), Some("1")).await.unwrap());
    assert!(s.replace_record(del(), Some("2")).await.unwrap());
    assert_eq!(s.get_record("cas", "t1/a").await.unwrap(), None);
    assert!(
        s.scan_records("cas", "", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A value expected on an absent key is refused; a prefix is not a match.
    assert!(!s.replace_record(put("4"), Some("2")).await.unwrap());
    assert!(s.replace_record(put("10"), None).await.unwrap());
    assert!(!s.replace_record(put("5"), Some("1")).await.unwrap());
    let rows = s.scan_records("cas", "", None, 10).await.unwrap();
    assert_eq!(rows, [("t1/a".to_owned(), "10".to_owned())]);
}

#[macro_export]
macro_rules! conformance_tests {
    ($make:expr, $retention:expr) => {
        $crate::conformance_tests!(@case $make; conversation_lifecycle);
        $crate::conformance_tests!(@case $make; listing_is_paginated_per_owner);
        $crate::conformance_tests!(@case $make; tenants_are_isolated);
        $crate::conformance_tests!(@case $make; transcript_assigns_sequence_numbers);
        $crate::conformance_tests!(@case $make; summary_round_trips);
        $crate::conformance_tests!(@case $make; turn_queue_dedups_and_finishes);
        $crate::conformance_tests!(@case $make; subscribe_replays_then_follows);
        $crate::conformance_tests!(@case $make; delete_removes_everything);
        $crate::conformance_tests!(@case $make; retention_purges_idle_conversations);
        $crate::conformance_tests!(@case $make; document_records_round_trip_and_page);
        $crate::conformance_tests!(@case $make; job_updates_apply_only_to_the_current_job);
        $crate::conformance_tests!(@case $make; document_records_are_tenant_scoped);
        $crate::conformance_tests!(@case $make; leases_fence_stale_writers);
        $crate::conformance_tests!(@case $make; finished_events_are_remembered_for_their_ttl);
        $crate::conformance_tests!(@case $make; cancel_requests_are_per_turn_and_the_first_mode_wins);
        $crate::conformance_tests!(@case $make; relay_progress_only_moves_forward);
        $crate::conformance_tests!(@case $make; conversations_are_counted_per_owner);
        $crate::conformance_tests!(@case $make; finishing_a_turn_is_independent_of_the_queue_length);
        $crate::conformance_tests!(@case $make; retention_keeps_conversations_with_queued_work);
        $crate::conformance_tests!(@case $make; reading_from_the_last_sequence_number_is_empty);
        $crate::conformance_tests!(@case $make; records_are_written_in_batches_and_scanned_in_key_order);
        $crate::conformance_tests!(@case $make; a_record_is_replaced_only_from_the_value_read);
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn events_are_numbered_and_trimmed() {
            let s = $make;
            $crate::conformance::events_are_numbered_and_trimmed(s, $retention).await;
        }
    };
    (@case $make:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let s = $make;
            $crate::conformance::$name(s).await;
        }
    };
}
