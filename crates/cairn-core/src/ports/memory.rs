//! MemoryStore (conversations, transcripts, summaries, pending turns, checkpoints)
//! and EventStream (the per-conversation stream of turn events).

use crate::domain::*;
use crate::ids::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

/// A storage failure. Callers treat every variant as retryable except `Corrupt`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing service cannot be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The conversation does not exist (for this tenant).
    #[error("conversation not found")]
    NotFound,
    /// The conversation already exists.
    #[error("conversation already exists")]
    AlreadyExists,
    /// The writer's lease was superseded: a newer owner holds the conversation,
    /// and this write was rejected.
    #[error("stale writer: a newer lease owns the conversation")]
    Fenced,
}

/// Result of enqueuing a turn request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The request is new and now waits in the conversation's queue.
    New,
    /// A request with this message id was seen before; nothing changed.
    Duplicate,
}

/// Durable conversation memory. Every method is scoped by tenant: an id that
/// exists under another tenant behaves exactly like an id that does not exist.
#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// A short name for `/health` (`embedded`, `redis`).
    fn backend(&self) -> &'static str;

    /// Checks that the backing service answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a conversation; fails with `AlreadyExists` if the id is taken.
    async fn create_conversation(&self, meta: &ConversationMeta) -> Result<(), StoreError>;

    /// Reads a conversation's metadata.
    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<ConversationMeta>, StoreError>;

    /// Lists a user's conversations, oldest id first, strictly after `after`.
    async fn list_conversations(
        &self,
        tenant: &TenantId,
        owner: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<Vec<ConversationMeta>, StoreError>;

    /// How many conversations `owner` holds in `tenant` (bounded per user by
    /// `agent.max_conversations_per_user`).
    async fn count_conversations(
        &self,
        tenant: &TenantId,
        owner: &UserId,
    ) -> Result<u64, StoreError>;

    /// Deletes a conversation with its transcript, summary, queue, checkpoint and
    /// events. Returns false when it did not exist.
    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<bool, StoreError>;

    /// Appends to the transcript, assigning `seq`; updates `updated_at` and the count.
    async fn append_message(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message: &Message,
    ) -> Result<u64, StoreError>;

    /// Reads the transcript from `from_seq`, at most `limit` messages.
    async fn messages(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Reads the rolling summary (empty when none was written).
    async fn summary(&self, tenant: &TenantId, id: &ConversationId) -> Result<Summary, StoreError>;

    /// Replaces the rolling summary.
    async fn save_summary(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        summary: &Summary,
    ) -> Result<(), StoreError>;

    /// Adds a turn request to the conversation's queue, unless its message id was
    /// seen before (at-least-once delivery makes duplicates normal).
    async fn enqueue_turn(&self, request: &TurnRequest) -> Result<Enqueued, StoreError>;

    /// True when a request with `message_id` was accepted into the conversation's
    /// queue (it is answered, running or waiting).
    async fn message_accepted(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError>;

    /// The queued requests, oldest first (the head may be in flight).
    async fn pending_turns(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Vec<TurnRequest>, StoreError>;

    /// Starts a turn atomically: appends the user message to the transcript,
    /// writes the turn's first checkpoint and appends `events` (normally
    /// `turn.started`) to the event stream. Returns the message's `seq`.
    async fn begin_turn(
        &self,
        checkpoint: &TurnCheckpoint,
        user_message: &Message,
        events: &[TurnEvent],
    ) -> Result<u64, StoreError>;

    /// Writes the in-flight turn's checkpoint and appends `events` (the events of
    /// the step just recorded) in one atomic write, so the stream never shows a
    /// step the checkpoint does not have, or the reverse.
    async fn save_checkpoint(
        &self,
        checkpoint: &TurnCheckpoint,
        events: &[TurnEvent],
    ) -> Result<(), StoreError>;

    /// Reads the in-flight turn's checkpoint, if any.
    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<TurnCheckpoint>, StoreError>;

    /// Ends a turn atomically: appends `answer` (if any) to the transcript, drops
    /// the checkpoint, removes the request from the queue, and appends the turn's
    /// terminal `event` to the conversation's event stream. Returns the event id.
    /// Doing all of it in one write means a crash can never leave an answered
    /// turn without its `answer.completed` event, or the reverse. A turn that is
    /// no longer queued has been finished already (a retried write whose first
    /// reply was lost): nothing is written again and the id returned is 0, so a
    /// turn has one outcome however often its end is retried.
    /// `fence` is the writer's lease token, checked like a checkpoint's.
    #[allow(clippy::too_many_arguments)]
    async fn finish_turn(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
        answer: Option<&Message>,
        event: &TurnEvent,
        fence: Option<u64>,
    ) -> Result<u64, StoreError>;

    /// Conversations with queued requests or a checkpoint: the work to resume at
    /// start-up.
    async fn active_conversations(&self) -> Result<Vec<(TenantId, ConversationId)>, StoreError>;

    /// Deletes conversations not updated since `before` (and without queued or
    /// running turns); returns the ones it deleted, so that what other parts
    /// keep per conversation (support insights) can be deleted with them.
    async fn purge_inactive(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(TenantId, ConversationId)>, StoreError>;

    /// Takes the conversation's writer lease for `owner` for `ttl`, unless another
    /// owner holds an unexpired one. Returns the fencing token: it grows with every
    /// new grant, and the turn writes (`begin_turn`, `save_checkpoint`,
    /// `finish_turn`) carrying an older token fail with [`StoreError::Fenced`].
    /// An owner that already holds the lease gets its token back (and the ttl renewed).
    async fn acquire_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError>;

    /// Extends a held lease; false when it expired and was granted to someone else
    /// (or released).
    async fn renew_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        token: u64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Gives a held lease up so the next owner need not wait for it to expire.
    async fn release_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        token: u64,
    ) -> Result<(), StoreError>;

    /// The id of the last stream event of the conversation republished on the bus
    /// (`conversation_events`); 0 when none was.
    async fn relayed_until(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError>;

    /// Records that the conversation's stream events up to `event_id` were
    /// republished on the bus.
    async fn set_relayed_until(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        event_id: u64,
    ) -> Result<(), StoreError>;

    /// True when consumer `group` finished the bus event `event_id` within the
    /// dedup window (see [`mark_event_done`](Self::mark_event_done)).
    async fn event_done(&self, group: &str, event_id: &str) -> Result<bool, StoreError>;

    /// Records that `group` finished `event_id`; remembered for `ttl`, so a
    /// redelivery inside that window is skipped.
    async fn mark_event_done(
        &self,
        group: &str,
        event_id: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError>;
}

/// How long a cancel request is remembered: longer than any turn lives.
pub const CANCEL_MEMORY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What a cancel asks of the turn (see [`MemoryStore::request_cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    /// Stop it; its steps stay in the model's context.
    Cancel,
    /// Stop it because a newer message interrupts it; its steps stay in context.
    Interrupt,
    /// Stop it and leave it (message and steps) out of the model's context.
    Rollback,
}

impl CancelMode {
    /// `cancel`, `interrupt` or `rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelMode::Cancel => "cancel",
            CancelMode::Interrupt => "interrupt",
            CancelMode::Rollback => "rollback",
        }
    }

    /// The mode named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Cancel, Self::Interrupt, Self::Rollback]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

fn cancel_group(tenant: &TenantId, id: &ConversationId) -> String {
    format!("cancel/{tenant}/{id}")
}

/// Cancel requests, kept beside the turn they stop so that a turn resumed after
/// a crash (on any replica) still sees them. Built on the store's remembered-key
/// set (`mark_event_done`), so every adapter has them.
#[async_trait]
pub trait CancelRequests {
    /// Records that `turn` is to stop (`mode`); the first request wins.
    async fn request_cancel(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
        mode: CancelMode,
    ) -> Result<(), StoreError>;

    /// The cancel requested for `turn`, if any.
    async fn cancel_requested(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
    ) -> Result<Option<CancelMode>, StoreError>;
}

#[async_trait]
impl<S: MemoryStore + ?Sized> CancelRequests for S {
    async fn request_cancel(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
        mode: CancelMode,
    ) -> Result<(), StoreError> {
        if self.cancel_requested(tenant, id, turn).await?.is_some() {
            return Ok(());
        }
        // The mode first, then the marker the hot path reads: a marker is never
        // seen without its mode.
        let group = cancel_group(tenant, id);
        let key = format!("{turn}/{}", mode.as_str());
        self.mark_event_done(&group, &key, CANCEL_MEMORY).await?;
        self.mark_event_done(&group, turn.as_str(), CANCEL_MEMORY)
            .await
    }

    async fn cancel_requested(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
    ) -> Result<Option<CancelMode>, StoreError> {
        let group = cancel_group(tenant, id);
        // One read for the common case: no cancel.
        if !self.event_done(&group, turn.as_str()).await? {
            return Ok(None);
        }
        for mode in [
            CancelMode::Rollback,
            CancelMode::Interrupt,
            CancelMode::Cancel,
        ] {
            if self
                .event_done(&group, &format!("{turn}/{}", mode.as_str()))
                .await?
            {
                return Ok(Some(mode));
            }
        }
        Ok(Some(CancelMode::Cancel))
    }
}

/// The per-conversation stream of turn events, read by SSE clients. Event ids
/// increase by one per conversation and survive restarts.
#[async_trait]
pub trait EventStream: Send + Sync + 'static {
    /// Appends an event, returning its id.
    async fn append(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        event: &TurnEvent,
    ) -> Result<u64, StoreError>;

    /// Events with id greater than `after`, oldest first, at most `limit`.
    async fn read_after(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The id of the newest event (0 when there is none).
    async fn last_event_id(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError>;

    /// Events after `after`, then every new one as it is written. The stream
    /// ends only when the consumer drops it (or on a store error).
    fn subscribe(
        &self,
        tenant: TenantId,
        id: ConversationId,
        after: u64,
    ) -> BoxStream<'static, Result<StoredEvent, StoreError>>;
}
