//! The process's lifecycle as the actors see it: whether it is draining (shutting
//! down: no new turn starts, running ones may finish) and how many turns run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Shared by every actor of a process (through [`AgentDeps`](crate::settings::AgentDeps)).
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    running: AtomicUsize,
}

impl Lifecycle {
    /// True once the process started shutting down: conversations start no new
    /// turn (queued messages stay queued in the store for the next owner).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops new turns from starting.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Turns running in this process now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Counts a turn as running until the returned guard drops (its task ends,
    /// or is aborted).
    pub(crate) fn turn_started(self: &Arc<Self>) -> RunningTurn {
        self.running.fetch_add(1, Ordering::AcqRel);
        RunningTurn(self.clone())
    }

    /// Waits until no turn runs, or `within` passes; returns the turns still
    /// running then.
    pub async fn idle_within(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.running();
            if n == 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running turn; counted until dropped.
pub(crate) struct RunningTurn(Arc<Lifecycle>);

impl Drop for RunningTurn {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}
