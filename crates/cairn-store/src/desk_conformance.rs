//! The conformance suite of the TicketStore and CounterStore ports; each
//! adapter's test file calls [`desk_conformance_tests!`](crate::desk_conformance_tests).

#![allow(clippy::unwrap_used, missing_docs)]

use cairn_core::desk::*;
use cairn_core::ids::TenantId;
use cairn_core::ports::{CounterStore, TicketStore, TicketUpdate};
use chrono::{Duration as ChronoDuration, TimeZone, Utc};
use std::time::Duration;

/// What the suite needs of an adapter.
pub trait DeskStore: TicketStore + CounterStore + Clone {}
impl<T: TicketStore + CounterStore + Clone> DeskStore for T {}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn ticket(t: &TenantId, id: &str, minute: i64) -> Ticket {
    let at = Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap() + ChronoDuration::minutes(minute);
    Ticket::from_submission(&TicketSubmission {
        ticket_id: id.into(),
        tenant_id: t.clone(),
        subject: format!("Subject {id}"),
        body: format!("body of {id}"),
        channel: "email".into(),
        priority: Priority::Normal,
        customer_id: "cust-1".into(),
        revision: 1,
        submitted_at: at,
    })
}

pub async fn tickets_are_created_once_per_tenant<S: DeskStore>(s: S) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    let t = ticket(&a, "T-1", 0);
    assert!(s.create_ticket(&t).await.unwrap().is_none());
    let mut again = t.clone();
    again.subject = "other".into();
    let existing = s.create_ticket(&again).await.unwrap().unwrap();
    assert_eq!(existing.subject, t.subject, "the first ticket stays");
    assert!(s.get_ticket(&b, "T-1").await.unwrap().is_none());
    assert!(
        s.create_ticket(&ticket(&b, "T-1", 0))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.get_ticket(&a, "T-1").await.unwrap().unwrap(), t);
    let page = s
        .list_tickets(&TicketQuery::new(b.clone(), 10))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].tenant_id, b);
}

pub async fn ticket_updates_compare_and_set_and_move_indexes<S: DeskStore>(s: S) {
    let a = tenant("acme");
    for (i, id) in ["A", "B", "C"].iter().enumerate() {
        let mut t = ticket(&a, id, i as i64);
        t.risk = Some(0.1 * (i as f64 + 1.0));
        s.create_ticket(&t).await.unwrap();
    }
    let mut by_risk = TicketQuery::new(a.clone(), 10);
    by_risk.sort = TicketSort::Risk;
    let order = |p: TicketPage| p.items.into_iter().map(|t| t.ticket_id).collect::<Vec<_>>();
    assert_eq!(
        order(s.list_tickets(&by_risk).await.unwrap()),
        ["C", "B", "A"]
    );

    let mut t = s.get_ticket(&a, "A").await.unwrap().unwrap();
    t.risk = Some(0.9);
    t.category = Some("billing".into());
    t.version = 2;
    assert_eq!(s.update_ticket(&t, 1).await.unwrap(), TicketUpdate::Updated);
    assert_eq!(
        order(s.list_tickets(&by_risk).await.unwrap()),
        ["A", "C", "B"]
    );
    // A writer holding version 1 loses.
    let mut stale = t.clone();
    stale.version = 2;
    match s.update_ticket(&stale, 1).await.unwrap() {
        TicketUpdate::Conflict(cur) => assert_eq!(cur.version, 2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut ghost = ticket(&a, "nope", 0);
    ghost.version = 2;
    assert_eq!(
        s.update_ticket(&ghost, 1).await.unwrap(),
        TicketUpdate::NotFound
    );
    // The old index entries are gone: three tickets, not four.
    let all = s.list_tickets(&by_risk).await.unwrap();
    assert_eq!(all.items.len(), 3);
    assert_eq!(all.items[0].category.as_deref(), Some("billing"));
}

/// Pages through `q` to the end.
async fn all_pages<S: DeskStore>(s: &S, mut q: TicketQuery) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let p = s.list_tickets(&q).await.unwrap();
        pages += 1;
        assert!(p.items.len() <= q.limit);
        assert!(p.scanned <= q.max_scan);
        out.extend(p.items.into_iter().map(|t| t.ticket_id));
        match p.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return (out, pages),
        }
        assert!(pages < 1000, "paging does not end");
    }
}

pub async fn ticket_filters_and_paging_match_a_full_scan<S: DeskStore>(s: S) {
    let a = tenant("acme");
    let cats = ["billing", "technical_support", "refund"];
    let sents = ["negative", "neutral", "positive"];
    let mut all = Vec::new();
    for i in 0..40i64 {
        let mut t = ticket(&a, &format!("T-{i:02}"), i * 7);
        t.category = Some(cats[i as usize % 3].into());
        t.sentiment = Some(sents[(i as usize / 2) % 3].into());
        t.risk = Some((i as f64 * 0.37) % 1.0);
        t.channel = if i % 4 == 0 {
            "chat".into()
        } else {
            "email".into()
        };
        if i % 5 == 0 {
            t.body = format!("My INVOICE {i} is wrong");
            t.status = TicketStatus::Resolved;
        }
        if i % 3 == 0 {
            t.enrichment = EnrichmentState::Enriched;
        }
        if i % 6 == 0 {
            t.customer_id = "cust-7".into();
        }
        s.create_ticket(&t).await.unwrap();
        all.push(t);
    }
    // Another tenant's tickets never show.
    s.create_ticket(&ticket(&tenant("globex"), "T-00", 0))
        .await
        .unwrap();

    let base = |limit| TicketQuery::new(a.clone(), limit);
    let mut queries = vec![base(7), base(100)];
    let mut q = base(3);
    q.category = Some("billing".into());
    queries.push(q);
    let mut q = base(4);
    q.risk_min = Some(0.5);
    q.sort = TicketSort::Risk;
    queries.push(q.clone());
    q.descending = false;
    queries.push(q);
    let mut q = base(5);
    q.sentiment = Some("negative".into());
    q.channel = Some("email".into());
    q.descending = false;
    queries.push(q);
    let mut q = base(2);
    q.text = Some("invoice".into());
    queries.push(q);
    let mut q = base(2);
    q.status = Some(TicketStatus::Resolved);
    q.enrichment = Some(EnrichmentState::Enriched);
    queries.push(q);
    let mut q = base(6);
    q.created_from = Some(all[10].created_at);
    q.created_to = Some(all[30].created_at);
    queries.push(q.clone());
    q.descending = false;
    q.sort = TicketSort::UpdatedAt;
    queries.push(q);
    let mut q = base(2);
    q.customer_id = Some("cust-7".into());
    q.created_from = Some(all[6].created_at);
    queries.push(q);
    let mut q = base(5);
    q.max_scan = 4;
    q.category = Some("refund".into());
    queries.push(q);

    for q in queries {
        let mut want: Vec<&Ticket> = all.iter().filter(|t| t.matches(&q)).collect();
        want.sort_by_key(|t| t.sort_key(q.sort));
        if q.descending {
            want.reverse();
        }
        let want: Vec<String> = want.iter().map(|t| t.ticket_id.clone()).collect();
        let (got, pages) = all_pages(&s, q.clone()).await;
        assert_eq!(got, want, "query {q:?}");
        if q.customer_id.is_some() {
            // The customer's own index: the walk never looks at other tickets.
            let p = s.list_tickets(&q).await.unwrap();
            assert!(
                p.scanned <= q.limit,
                "scanned {} for {} items",
                p.scanned,
                p.items.len()
            );
        }
        if q.max_scan < 40 {
            assert!(
                pages >= 40 / q.max_scan,
                "max_scan bounds each page: {pages} pages"
            );
        }
    }
}

fn inc(bucket: &str, field: &str, delta: i64) -> Increment {
    Increment {
        bucket: bucket.into(),
        field: field.into(),
        delta,
    }
}

fn update(t: &TenantId, id: &str, incs: Vec<Increment>, slot: Option<Slot>) -> CounterUpdate {
    CounterUpdate {
        event_id: id.into(),
        tenant: t.clone(),
        increments: incs,
        slot,
    }
}

pub async fn counters_apply_each_event_once<S: DeskStore>(s: S) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    let ttl = Duration::from_secs(3600);
    let e1 = update(
        &a,
        "e1",
        vec![inc("h1", "messages", 1), inc("d1", "messages", 1)],
        None,
    );
    let e2 = update(
        &a,
        "e2",
        vec![inc("h1", "messages", 2), inc("h2", "intent.billing", 1)],
        None,
    );
    assert_eq!(s.apply_counters(&[e1.clone(), e2], ttl).await.unwrap(), 2);
    // A redelivery, alone or within a batch, counts nothing.
    assert_eq!(
        s.apply_counters(std::slice::from_ref(&e1), ttl)
            .await
            .unwrap(),
        0
    );
    let e3 = update(&a, "e3", vec![inc("h1", "messages", 1)], None);
    assert_eq!(
        s.apply_counters(&[e1, e3.clone(), e3], ttl).await.unwrap(),
        1
    );
    // The same event id in another tenant is another event.
    assert_eq!(
        s.apply_counters(
            &[update(&b, "e1", vec![inc("h1", "messages", 5)], None)],
            ttl
        )
        .await
        .unwrap(),
        1
    );
    let got = s
        .read_counters(&a, &["h1".into(), "h9".into(), "h2".into(), "d1".into()])
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].get("messages"), Some(&4));
    assert!(got[1].is_empty());
    assert_eq!(got[2].get("intent.billing"), Some(&1));
    assert_eq!(got[3].get("messages"), Some(&1));
    let other = s.read_counters(&b, &["h1".into()]).await.unwrap();
    assert_eq!(other[0].get("messages"), Some(&5));
}

pub async fn counter_slots_hold_only_the_newest_version<S: DeskStore>(s: S) {
    let a = tenant("acme");
    let ttl = Duration::from_secs(3600);
    let slot = |v: u64, cat: &str| Slot {
        key: "ticket:T-1".into(),
        version: v,
        increments: vec![
            inc("h1", &format!("tickets.category.{cat}"), 1),
            inc("h1", "tickets.risk_milli", 100 * v as i64),
        ],
    };
    s.apply_counters(&[update(&a, "r1", vec![], Some(slot(1, "billing")))], ttl)
        .await
        .unwrap();
    s.apply_counters(&[update(&a, "r2", vec![], Some(slot(2, "refund")))], ttl)
        .await
        .unwrap();
    // An older version arriving late changes nothing.
    s.apply_counters(
        &[update(&a, "r1-late", vec![], Some(slot(1, "billing")))],
        ttl,
    )
    .await
    .unwrap();
    let got = &s.read_counters(&a, &["h1".into()]).await.unwrap()[0];
    assert_eq!(got.get("tickets.category.refund"), Some(&1));
    assert_eq!(
        got.get("tickets.category.billing"),
        None,
        "zeroed counters are dropped"
    );
    assert_eq!(got.get("tickets.risk_milli"), Some(&200));
}

#[macro_export]
macro_rules! desk_conformance_tests {
    ($make:expr) => {
        $crate::desk_conformance_tests!(@case $make; tickets_are_created_once_per_tenant);
        $crate::desk_conformance_tests!(@case $make; ticket_updates_compare_and_set_and_move_indexes);
        $crate::desk_conformance_tests!(@case $make; ticket_filters_and_paging_match_a_full_scan);
        $crate::desk_conformance_tests!(@case $make; counters_apply_each_event_once);
        $crate::desk_conformance_tests!(@case $make; counter_slots_hold_only_the_newest_version);
    };
    (@case $make:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let s = $make;
            $crate::desk_conformance::$name(s).await;
        }
    };
}
