//! Tailing an event stream: read what is there, then wait for more, without gaps
//! or duplicates. Each adapter supplies only its way of waiting.

use async_trait::async_trait;
use cairn_core::StoredEvent;
use cairn_core::ids::{ConversationId, TenantId};
use cairn_core::ports::{EventStream, StoreError};
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::VecDeque;

/// Events read per round trip.
const PAGE: usize = 256;

/// Waits until events newer than `after` may exist. Spurious wake-ups are fine.
#[async_trait]
pub trait EventWaiter: Send + 'static {
    /// Returns when an event with id greater than `after` may have been written.
    /// A waiter that already holds the new events returns them (ids `after + 1`
    /// onwards, contiguous), which saves a store read; an empty vector means
    /// "read the store".
    async fn wait(&mut self, after: u64) -> Result<Vec<StoredEvent>, StoreError>;
}

/// Streams the events after `after`, then every new one, forever.
pub fn follow<S, W>(
    store: S,
    tenant: TenantId,
    id: ConversationId,
    after: u64,
    waiter: W,
) -> BoxStream<'static, Result<StoredEvent, StoreError>>
where
    S: EventStream + Clone,
    W: EventWaiter,
{
    struct State<S, W> {
        store: S,
        tenant: TenantId,
        id: ConversationId,
        after: u64,
        buffer: VecDeque<StoredEvent>,
        waiter: W,
        failed: bool,
    }
    let state = State {
        store,
        tenant,
        id,
        after,
        buffer: VecDeque::new(),
        waiter,
        failed: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if let Some(e) = st.buffer.pop_front() {
                st.after = e.id;
                return Some((Ok(e), st));
            }
            match st
                .store
                .read_after(&st.tenant, &st.id, st.after, PAGE)
                .await
            {
                Ok(events) if !events.is_empty() => st.buffer.extend(events),
                Ok(_) => match st.waiter.wait(st.after).await {
                    Ok(live) => {
                        let fresh: Vec<StoredEvent> =
                            live.into_iter().filter(|e| e.id > st.after).collect();
                        let contiguous = fresh
                            .iter()
                            .enumerate()
                            .all(|(i, e)| e.id == st.after + 1 + i as u64);
                        if contiguous {
                            st.buffer.extend(fresh);
                        }
                    }
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                },
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
        }
    })
    .boxed()
}
