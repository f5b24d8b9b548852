//! Per-caller rate limits: one token bucket per caller id (`admin/ci`, `jwt:alice`, …).
//!
//! A bucket holds at most `burst` tokens and refills at `requestsPerMinute / 60` tokens a
//! second; a request takes one token or is refused with `429`. Each check passes the caller's
//! current limit, so a config reload applies at the caller's next request: the bucket keeps its
//! tokens, clamped to the new capacity.
//!
//! # Memory
//! A bucket that has refilled to full says nothing a fresh bucket would not, so it is dropped.
//! Each shard sweeps such buckets inside [`RateLimiter::check`], amortised: when it has doubled
//! in size since its last sweep, and at least every [`SWEEP_INTERVAL`]. The map therefore holds
//! about twice the callers that were refused or spent tokens within one refill period, however
//! many distinct callers come and go.
//!
//! # Why not `governor`
//! `governor`'s keyed limiters fix one quota per limiter. Here every role has its own limit and
//! a reload may change it while keeping each caller's state, which would take one limiter per
//! distinct quota and lose the state on change. A token bucket is a few lines of arithmetic; the
//! sharded `std::sync::Mutex<HashMap>` keeps lock hold times to that arithmetic and spreads
//! concurrent callers over [`SHARDS`] locks.
//!
//! # Response headers
//! [`RateDecision::headers`] emits both generations of the IETF httpapi draft
//! (draft-ietf-httpapi-ratelimit-headers):
//! - `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (drafts up to -06): what most
//!   client libraries and gateways read today.
//! - `RateLimit-Policy: "caller";q=<burst>;w=<seconds>` and `RateLimit: "caller";r=<remaining>;t=<seconds>`
//!   (structured fields, drafts -07 and later). A token bucket has no fixed window; the policy
//!   states `q = burst` tokens over `w` = the seconds an empty bucket takes to refill, rounded up,
//!   so `q/w` is the sustained rate (understated, never overstated, by the rounding) and `r`
//!   never exceeds `q`.
//!
//! Both `RateLimit-Reset` and `t` are the seconds until the bucket is full again, rounded up.
//! A refusal adds `Retry-After`: the seconds until one token is available, rounded up, at least 1.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use sluice_crds::config::ResolvedRateLimit;

/// Number of independently locked shards.
pub const SHARDS: usize = 16;
/// Longest time a shard goes without dropping its full buckets, as long as it sees checks.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// A shard smaller than this is only swept by time, not by growth.
const MIN_SWEEP_LEN: usize = 64;
/// The policy name in the structured `RateLimit-Policy` and `RateLimit` fields.
const POLICY_NAME: &str = "caller";

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Token buckets for every caller with recent requests, shared by all request tasks.
pub struct RateLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

struct Shard {
    buckets: HashMap<String, Bucket>,
    next_sweep: Option<Instant>,
    sweep_at_len: usize,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    limit: ResolvedRateLimit,
}

/// The outcome of one check: whether the request may proceed, and what to tell the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct RateDecision {
    /// The request may proceed.
    pub allowed: bool,
    /// The bucket's capacity: the limit's burst.
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// For a refused request, until one token is available.
    pub retry_after: Option<Duration>,
    /// How long an empty bucket takes to refill: the window of `RateLimit-Policy`.
    pub window: Duration,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        next_sweep: None,
                        sweep_at_len: MIN_SWEEP_LEN,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes a token from `caller_key`'s bucket under `limit`, now.
    pub fn check(&self, caller_key: &str, limit: &ResolvedRateLimit) -> RateDecision {
        self.check_at(caller_key, limit, Instant::now())
    }

    /// Takes a token from `caller_key`'s bucket under `limit`, at `now`.
    ///
    /// `now` may be slightly older than a concurrent check's; time never runs backwards for a bucket.
    pub fn check_at(&self, caller_key: &str, limit: &ResolvedRateLimit, now: Instant) -> RateDecision {
        let index = (self.hasher.hash_one(caller_key) % SHARDS as u64) as usize;
        // A panic elsewhere while holding the lock cannot leave a bucket worse than stale.
        let mut shard = self.shards[index].lock().unwrap_or_else(PoisonError::into_inner);
        shard.sweep_if_due(now);
        let bucket = match shard.buckets.get_mut(caller_key) {
            Some(bucket) => bucket,
            None => shard.buckets.entry(caller_key.to_owned()).or_insert(Bucket {
                tokens: capacity(limit),
                updated: now,
                limit: *limit,
            }),
        };
        bucket.refill(now, *limit);
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let rate = rate_per_second(limit);
        let capacity = capacity(limit);
        RateDecision {
            allowed,
            limit: limit.burst.max(1),
            remaining: bucket.tokens.floor() as u32,
            reset: Duration::from_secs_f64((capacity - bucket.tokens).max(0.0) / rate),
            retry_after: (!allowed).then(|| Duration::from_secs_f64((1.0 - bucket.tokens) / rate)),
            window: Duration::from_secs_f64(capacity / rate),
        }
    }

    /// How long until `caller_key`'s bucket under `limit` holds a token again, without taking
    /// one; `None` when it holds one now (or was never used).
    pub fn empty_for(&self, caller_key: &str, limit: &ResolvedRateLimit) -> Option<Duration> {
        let now = Instant::now();
        let index = (self.hasher.hash_one(caller_key) % SHARDS as u64) as usize;
        let shard = self.shards[index].lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = shard.buckets.get(caller_key)?;
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * rate_per_second(limit)).min(capacity(limit));
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / rate_per_second(limit)))
    }

    /// Number of buckets held: callers that spent tokens within about one refill period.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).buckets.len())
            .sum()
    }
}

impl Shard {
    fn sweep_if_due(&mut self, now: Instant) {
        let due_by_time = self.next_sweep.is_none_or(|at| now >= at);
        if !due_by_time && self.buckets.len() < self.sweep_at_len {
            return;
        }
        self.buckets.retain(|_, bucket| !bucket.is_full_at(now));
        self.sweep_at_len = (self.buckets.len() * 2).max(MIN_SWEEP_LEN);
        self.next_sweep = Some(now + SWEEP_INTERVAL);
    }
}

impl Bucket {
    /// Adds the tokens earned since the last update under `limit`, which may differ from the
    /// bucket's previous one after a reload.
    fn refill(&mut self, now: Instant, limit: ResolvedRateLimit) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_second(&limit)).min(capacity(&limit));
        self.updated = self.updated.max(now);
        self.limit = limit;
    }

    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate_per_second(&self.limit) >= capacity(&self.limit)
    }
}

// The CRD schema guarantees both numbers are at least 1; a hand-written config with 0 gets 1
// rather than a bucket that never fills or holds nothing.
fn capacity(limit: &ResolvedRateLimit) -> f64 {
    f64::from(limit.burst.max(1))
}

fn rate_per_second(limit: &ResolvedRateLimit) -> f64 {
    f64::from(limit.requests_per_minute.max(1)) / 60.0
}

fn whole_seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

impl RateDecision {
    /// The rate-limit response headers (see the module docs), with `Retry-After` on a refusal.
    pub fn headers(&self) -> HeaderMap {
        let reset = whole_seconds_up(self.reset);
        let window = whole_seconds_up(self.window).max(1);
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset));
        headers.insert(
            RATELIMIT_POLICY.clone(),
            structured(format!("\"{POLICY_NAME}\";q={};w={window}", self.limit)),
        );
        headers.insert(
            RATELIMIT.clone(),
            structured(format!("\"{POLICY_NAME}\";r={};t={reset}", self.remaining)),
        );
        if let Some(retry_after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(whole_seconds_up(retry_after).max(1)),
            );
        }
        headers
    }
}

fn structured(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("a quoted ASCII name and integers form a valid header value")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn limit(requests_per_minute: u32, burst: u32) -> ResolvedRateLimit {
        ResolvedRateLimit {
            requests_per_minute,
            burst,
        }
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|value| value.to_str().unwrap())
    }

    #[test]
    fn allows_the_burst_then_refuses_with_headers() {
        let limiter = RateLimiter::new();
        let limit = limit(60, 3);
        let now = Instant::now();

        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                let decision = limiter.check_at("admin/ci", &limit, now);
                assert!(decision.allowed);
                decision.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);

        let refused = limiter.check_at("admin/ci", &limit, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        let headers = refused.headers();
        assert_eq!(header(&headers, "RateLimit-Limit"), Some("3"));
        assert_eq!(header(&headers, "RateLimit-Remaining"), Some("0"));
        assert_eq!(header(&headers, "RateLimit-Reset"), Some("3"));
        assert_eq!(header(&headers, "Retry-After"), Some("1"));
        assert_eq!(header(&headers, "RateLimit-Policy"), Some("\"caller\";q=3;w=3"));
        assert_eq!(header(&headers, "RateLimit"), Some("\"caller\";r=0;t=3"));
    }

    #[test]
    fn allowed_requests_carry_no_retry_after_and_round_up() {
        let limiter = RateLimiter::new();
        // 600 a minute, burst 100: one token per 100 ms, 10 s to refill from empty.
        let decision = limiter.check_at("jwt:alice", &limit(600, 100), Instant::now());
        assert!(decision.allowed);
        let headers = decision.headers();
        assert_eq!(header(&headers, "RateLimit-Remaining"), Some("99"));
        assert_eq!(
            header(&headers, "RateLimit-Reset"),
            Some("1"),
            "100 ms rounds up to a second"
        );
        assert_eq!(header(&headers, "RateLimit-Policy"), Some("\"caller\";q=100;w=10"));
        assert_eq!(header(&headers, "Retry-After"), None);
    }

    #[test]
    fn refills_over_time() {
        let limiter = RateLimiter::new();
        let limit = limit(60, 2);
        let start = Instant::now();
        assert!(limiter.check_at("k", &limit, start).allowed);
        assert!(limiter.check_at("k", &limit, start).allowed);
        assert!(!limiter.check_at("k", &limit, start).allowed);

        let half = limiter.check_at("k", &limit, start + Duration::from_millis(500));
        assert!(!half.allowed);
        assert_eq!(half.retry_after, Some(Duration::from_millis(500)));

        let one = start + Duration::from_secs(1);
        assert!(limiter.check_at("k", &limit, one).allowed);
        assert!(!limiter.check_at("k", &limit, one).allowed);

        let long_after = limiter.check_at("k", &limit, start + Duration::from_secs(3600));
        assert!(long_after.allowed);
        assert_eq!(long_after.remaining, 1, "the bucket never holds more than the burst");
    }

    #[test]
    fn callers_have_independent_buckets() {
        let limiter = RateLimiter::new();
        let limit = limit(60, 1);
        let now = Instant::now();
        assert!(limiter.check_at("admin/ci", &limit, now).allowed);
        assert!(!limiter.check_at("admin/ci", &limit, now).allowed);
        assert!(limiter.check_at("jwt:alice", &limit, now).allowed);
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn a_changed_limit_applies_at_the_next_check_and_keeps_spent_tokens() {
        let limiter = RateLimiter::new();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check_at("k", &limit(60, 10), now).allowed);
        }

        let lowered = limiter.check_at("k", &limit(60, 3), now);
        assert!(lowered.allowed, "5 tokens left, clamped to 3");
        assert_eq!((lowered.limit, lowered.remaining), (3, 2));

        let raised = limiter.check_at("k", &limit(120, 20), now + Duration::from_secs(1));
        assert!(raised.allowed);
        assert_eq!(
            (raised.limit, raised.remaining),
            (20, 3),
            "2 kept + 2 earned at the new rate - 1"
        );
    }

    #[test]
    fn idle_full_buckets_are_dropped() {
        let limiter = RateLimiter::new();
        let limit = limit(600, 10);
        let start = Instant::now();
        for caller in 0..1000 {
            limiter.check_at(&format!("old/{caller}"), &limit, start);
        }
        assert_eq!(limiter.tracked(), 1000);

        let later = start + SWEEP_INTERVAL + Duration::from_secs(1);
        for caller in 0..1000 {
            limiter.check_at(&format!("new/{caller}"), &limit, later);
        }
        assert_eq!(limiter.tracked(), 1000, "the refilled old buckets are gone");
    }

    #[test]
    fn memory_stays_bounded_under_100k_churning_callers() {
        let limiter = RateLimiter::new();
        // One token refills in 100 ms; one new caller each millisecond, so about 100 buckets are
        // not full at any moment.
        let limit = limit(600, 10);
        let start = Instant::now();
        let mut most = 0;
        for caller in 0..100_000u64 {
            let now = start + Duration::from_millis(caller);
            assert!(limiter.check_at(&format!("jwt:user-{caller}"), &limit, now).allowed);
            if caller % 100 == 0 {
                most = most.max(limiter.tracked());
            }
        }
        assert!(
            most <= SHARDS * MIN_SWEEP_LEN,
            "held {most} buckets for about 100 live callers"
        );
    }

    #[test]
    fn concurrent_checks_at_one_instant_allow_exactly_the_burst() {
        let limiter = RateLimiter::new();
        let limit = limit(60, 50);
        let now = Instant::now();
        let allowed = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        if limiter.check_at("shared", &limit, now).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 50);
    }

    #[test]
    fn concurrent_checks_never_allow_more_than_burst_plus_refill() {
        let limiter = RateLimiter::new();
        let limit = limit(6000, 20);
        let allowed = AtomicU32::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        if limiter.check("shared", &limit).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = f64::from(allowed.into_inner());
        let most = 20.0 + elapsed * 100.0;
        assert!(allowed >= 20.0, "the burst is always available at first");
        assert!(
            allowed <= most.floor(),
            "allowed {allowed} in {elapsed:.3} s, at most {most:.1}"
        );
    }
}
