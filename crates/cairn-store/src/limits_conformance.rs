//! The conformance suite of the RateLimiter port; each adapter's test file calls
//! [`limits_conformance_tests!`](crate::limits_conformance_tests).

#![allow(clippy::unwrap_used, missing_docs)]

use cairn_core::ports::{RateLimiter, RateRule};
use std::time::Duration;

fn rule(key: &str, per_minute: u32, burst: u32) -> RateRule {
    RateRule {
        key: format!("{}:{key}", uuid::Uuid::new_v4().simple()),
        per_minute,
        burst,
    }
}

/// A burst passes, counting down `remaining`; the next request is refused with a
/// retry time within one emission interval; other keys are untouched.
pub async fn a_burst_passes_then_the_key_is_refused<L: RateLimiter>(l: L) {
    let r = rule("messages", 60, 3);
    for expected in [2, 1, 0] {
        let d = l.check(std::slice::from_ref(&r)).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.limit, 3);
        assert_eq!(d.remaining, expected);
        assert!(d.reset <= Duration::from_secs(3), "{:?}", d.reset);
    }
    let d = l.check(std::slice::from_ref(&r)).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    let retry = d.retry_after.unwrap();
    assert!(
        retry > Duration::from_millis(500) && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    let other = rule("messages", 60, 3);
    assert!(l.check(&[other]).await.unwrap().allowed);
}

/// After the retry time the key passes again.
pub async fn the_key_passes_again_after_retry_after<L: RateLimiter>(l: L) {
    let r = rule("reads", 600, 1);
    assert!(l.check(std::slice::from_ref(&r)).await.unwrap().allowed);
    let d = l.check(std::slice::from_ref(&r)).await.unwrap();
    assert!(!d.allowed);
    tokio::time::sleep(d.retry_after.unwrap() + Duration::from_millis(20)).await;
    assert!(l.check(std::slice::from_ref(&r)).await.unwrap().allowed);
}

/// With a tenant rule and a user rule, the tighter one decides and is reported.
pub async fn the_tightest_rule_decides<L: RateLimiter>(l: L) {
    let tenant = rule("messages", 60, 10);
    let user = RateRule {
        key: format!("{}/ana:messages", tenant.key.split(':').next().unwrap()),
        per_minute: 60,
        burst: 2,
    };
    let both = [tenant.clone(), user.clone()];
    let d = l.check(&both).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (2, 1));
    assert!(l.check(&both).await.unwrap().allowed);
    let d = l.check(&both).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limit, 2);
    // Another user of the tenant still passes: the tenant rule has room.
    let bea = RateRule {
        key: user.key.replace("/ana:", "/bea:"),
        ..user
    };
    let d = l.check(&[tenant, bea]).await.unwrap();
    assert!(d.allowed, "{d:?}");
}

/// Many concurrent requests on one key: exactly the burst passes.
pub async fn concurrent_requests_pass_exactly_the_burst<L: RateLimiter + Clone>(l: L) {
    let r = rule("uploads", 1, 5);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (l, r) = (l.clone(), r.clone());
        tasks.push(tokio::spawn(
            async move { l.check(&[r]).await.unwrap().allowed },
        ));
    }
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 5);
}

#[macro_export]
macro_rules! limits_conformance_tests {
    ($make:expr) => {
        $crate::limits_conformance_tests!(@case $make; a_burst_passes_then_the_key_is_refused);
        $crate::limits_conformance_tests!(@case $make; the_key_passes_again_after_retry_after);
        $crate::limits_conformance_tests!(@case $make; the_tightest_rule_decides);
        $crate::limits_conformance_tests!(@case $make; concurrent_requests_pass_exactly_the_burst);
    };
    (@case $make:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let l = $make;
            $crate::limits_conformance::$name(l).await;
        }
    };
}
