//! Adaptive concurrency toward one provider (AIMD). Every model call of the
//! process takes a permit; when the provider answers 429 the limit is cut to
//! half of the calls then in flight (at most once per [`CUT_EVERY`]) and every
//! call waits until the provider's `Retry-After` has passed, so all
//! conversations slow down together instead of each retrying on its own. Each
//! success adds `1/limit`, about one permit per round of calls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Least time between two cuts (a burst of 429s to calls already in flight is
/// one signal, not many).
pub const CUT_EVERY: Duration = Duration::from_millis(500);
/// Longest pause a `Retry-After` can impose.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

struct State {
    limit: f64,
    in_flight: usize,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
}

/// The shared limit of one provider client.
pub struct Throttle {
    max: f64,
    state: Mutex<State>,
    freed: Notify,
}

/// One call in flight; frees its place when dropped.
pub struct Permit(Arc<Throttle>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.freed.notify_one();
    }
}

impl Throttle {
    /// A throttle allowing up to `max` calls at once.
    pub fn new(max: u32) -> Arc<Self> {
        let max = f64::from(max.max(1));
        Arc::new(Self {
            max,
            state: Mutex::new(State {
                limit: max,
                in_flight: 0,
                paused_until: None,
                last_cut: None,
            }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current limit (whole calls).
    pub fn limit(&self) -> usize {
        self.lock().limit.floor() as usize
    }

    /// Waits for a place (and for any pause to pass).
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let freed = self.freed.notified();
            let pause = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.paused_until {
                    Some(t) if t > now => Some(t - now),
                    _ => {
                        if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                            s.in_flight += 1;
                            return Permit(self.clone());
                        }
                        None
                    }
                }
            };
            match pause {
                Some(d) => tokio::time::sleep(d).await,
                // The timeout covers a wake-up sent between the check and the wait.
                None => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), freed).await;
                }
            }
        }
    }

    /// A call succeeded: grow the limit additively.
    pub fn on_success(&self) {
        let mut s = self.lock();
        s.limit = (s.limit + 1.0 / s.limit.max(1.0)).min(self.max);
    }

    /// The provider answered 429: halve the limit and pause every call for
    /// `retry_after` (capped at [`MAX_PAUSE`]).
    pub fn on_throttled(&self, retry_after: Option<Duration>) {
        let mut s = self.lock();
        let now = Instant::now();
        if s.last_cut
            .is_none_or(|t| now.duration_since(t) >= CUT_EVERY)
        {
            let base = s.limit.min(s.in_flight.max(1) as f64);
            s.limit = (base / 2.0).max(1.0);
            s.last_cut = Some(now);
            tracing::warn!(
                limit = s.limit.floor() as u64,
                "the model provider is rate limiting; fewer calls in flight"
            );
        }
        if let Some(d) = retry_after {
            let until = now + d.min(MAX_PAUSE);
            if s.paused_until.is_none_or(|t| t < until) {
                s.paused_until = Some(until);
            }
        }
    }
}

/// `Retry-After` in seconds (HTTP dates are not used by model providers).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_429_halves_the_calls_in_flight_and_pauses_everyone() {
        let t = Throttle::new(16);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(t.acquire().await);
        }
        t.on_throttled(Some(Duration::from_millis(200)));
        assert_eq!(t.limit(), 4);
        // A second 429 right after (a call already in flight) is the same signal.
        t.on_throttled(None);
        assert_eq!(t.limit(), 4);
        held.clear();
        let started = Instant::now();
        let _p = t.acquire().await;
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "the pause holds every caller"
        );
        for _ in 0..40 {
            t.on_success();
        }
        assert!(t.limit() > 4 && t.limit() <= 16, "{}", t.limit());
    }

    #[tokio::test]
    async fn callers_wait_for_a_place() {
        let t = Throttle::new(1);
        let first = t.acquire().await;
        let t2 = t.clone();
        let waiter = tokio::spawn(async move {
            let _p = t2.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter gets the freed place")
            .unwrap();
    }
}
