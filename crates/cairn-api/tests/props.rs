//! Property tests for what the API reads from callers and writes to streams:
//! bearer tokens (any text is refused; a minted token verifies as its caller;
//! any edit of one never verifies as someone else), `Last-Event-ID` (any bytes:
//! an id or a 400 naming the header), and the SSE writer (any event content
//! round-trips through a real SSE parser with its id, type and data intact).

#![allow(clippy::unwrap_used)]

use axum::response::IntoResponse;
use axum::response::sse::Sse;
use cairn_api::auth::Authenticator;
use cairn_api::events::{last_event_id, sse_event};
use cairn_core::{StoredEvent, TenantId, TurnEvent, TurnId, UserId};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use proptest::prelude::*;
use std::time::Duration;

const SECRET: &[u8] = b"props-secret-0123456789abcdef0123";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn auth() -> Authenticator {
    Authenticator::new(SECRET, &Default::default())
}

proptest! {
    #[test]
    fn any_text_as_a_bearer_token_is_refused(token in "\\PC{0,300}") {
        let r = runtime().block_on(auth().verify(&token));
        prop_assert!(r.is_err());
    }

    #[test]
    fn any_three_part_token_is_refused(a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,120}", c in "[A-Za-z0-9_-]{0,60}") {
        let r = runtime().block_on(auth().verify(&format!("{a}.{b}.{c}")));
        prop_assert!(r.is_err());
    }

    /// A minted token is its caller; an edited one is refused or, where the
    /// edit only touched unused base64 bits, still exactly the same caller.
    #[test]
    fn an_edited_token_never_verifies_as_another_caller(
        tenant in "[a-z][a-z0-9-]{0,20}",
        user in "[a-z][a-z0-9._-]{0,20}",
        at in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"ABCxyz019-_.=+/ ".to_vec()),
    ) {
        let a = auth();
        let (t, u) = (TenantId::parse(tenant).unwrap(), UserId::parse(user).unwrap());
        let token = a.mint(&u, &t, Duration::from_secs(600), &[]).unwrap();
        let rt = runtime();
        let caller = rt.block_on(a.verify(&token)).unwrap();
        prop_assert_eq!(&caller.tenant, &t);
        prop_assert_eq!(&caller.user, &u);
        let mut edited = token.into_bytes();
        let i = at.index(edited.len());
        edited[i] = byte;
        let edited = String::from_utf8(edited).unwrap();
        if let Ok(c) = rt.block_on(a.verify(&edited)) {
            prop_assert_eq!(&c.tenant, &t);
            prop_assert_eq!(&c.user, &u);
        }
    }

    #[test]
    fn last_event_id_is_an_id_or_a_clear_error(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let expected = std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse::<u64>().ok());
        match last_event_id(&bytes) {
            Ok(n) => prop_assert_eq!(Some(n), expected),
            Err(e) => {
                prop_assert!(expected.is_none());
                prop_assert_eq!(e.code.status().as_u16(), 400);
            }
        }
    }

    #[test]
    fn every_event_id_reads_back(n in any::<u64>(), pad in " {0,3}") {
        prop_assert_eq!(last_event_id(format!("{pad}{n}{pad}").as_bytes()).unwrap(), n);
    }

    /// Any tool name and output (newlines, carriage returns, control and
    /// multi-byte characters, `data:`-like text) comes back from a real SSE
    /// parser as the same event.
    #[test]
    fn sse_events_round_trip_through_an_sse_parser(
        id in 1u64..u64::MAX,
        tool in "\\PC{0,30}",
        output in prop_oneof!["\\PC{0,200}", "(data: |id: |\r\n|\n\n|\r|:|event: x\n){0,20}"],
    ) {
        let event = TurnEvent::ToolCompleted {
            turn_id: TurnId::parse("01a2346a-7707-775a-b730-24b888a053a5").unwrap(),
            step: 1,
            tool,
            is_error: false,
            output,
            duration_ms: 3,
        };
        let stored = StoredEvent { id, at: chrono::Utc::now(), event: event.clone() };
        let rt = runtime();
        let body = rt.block_on(async {
            let sse = Sse::new(futures::stream::iter([Ok::<_, std::convert::Infallible>(sse_event(&stored))]));
            axum::body::to_bytes(sse.into_response().into_body(), usize::MAX).await.unwrap()
        });
        let parsed = rt.block_on(async {
            futures::stream::iter([Ok::<_, std::convert::Infallible>(body)])
                .eventsource()
                .collect::<Vec<_>>()
                .await
        });
        prop_assert_eq!(parsed.len(), 1);
        let e = parsed.into_iter().next().unwrap().unwrap();
        prop_assert_eq!(e.id, id.to_string());
        prop_assert_eq!(e.event, "tool.completed");
        let mut data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        prop_assert!(data.as_object_mut().unwrap().remove("at").is_some());
        prop_assert_eq!(data, serde_json::to_value(&event).unwrap());
    }
}
