//! Per-user quotas and the per-user request rate.
//!
//! A request past a quota of stored things (profiles, plugins, their bytes) answers 422 naming
//! the quota (`profiles_per_user_max: …`) and writes nothing. Requests past a user's rate answer
//! 429 with `Retry-After` and the limit named (`requests_per_second_max: …`): each user has a
//! token bucket of `request_burst_max` requests, refilled at `requests_per_second_max` a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_kernel::ids::UserId;
use keel_kernel::store::DirectoryEntry;

use crate::ApiError;
use crate::auth::JwtKeys;

/// Profiles one user may have unless configured otherwise (deleted ones do not count).
pub const PROFILES_PER_USER_MAX_DEFAULT: usize = 100;
/// Profiles of one user that run at once unless configured otherwise: each has its own loops
/// and exchange streams.
pub const RUNNING_PROFILES_PER_USER_MAX_DEFAULT: usize = 20;
/// Plugin versions one user may store unless configured otherwise.
pub const PLUGINS_PER_USER_MAX_DEFAULT: usize = 100;
/// Bytes of plugins one user may store unless configured otherwise: 256 MiB, about fourteen
/// Python components or hundreds of Rust ones.
pub const PLUGIN_BYTES_PER_USER_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Requests a second one user may make, on average, unless configured otherwise.
pub const REQUESTS_PER_SECOND_MAX_DEFAULT: u32 = 20;
/// Requests one user may make at once after a pause, unless configured otherwise.
pub const REQUEST_BURST_MAX_DEFAULT: u32 = 100;
/// The most a count quota may be set to: a list shows at most 1,000 rows, and the quotas are
/// counted on that list.
pub const COUNT_QUOTA_MAX: usize = 1_000;
/// Users whose request rate is tracked at once; past it, the buckets that are full (their
/// users idle long enough to have their whole burst back) are forgotten first, since a full
/// bucket is what a user without one gets.
pub const RATE_USERS_TRACKED_MAX: usize = 100_000;

/// What one user may store and how fast they may ask: the `[quotas]` section of the host's
/// configuration, each key defaulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Profiles (deleted ones not counted), at most [`COUNT_QUOTA_MAX`].
    pub profiles_per_user_max: usize,
    /// Profiles that run at once, at most [`COUNT_QUOTA_MAX`]: `keel serve` runs each user's
    /// oldest ones ([`within_running_quota`]), `keel demo` refuses to start more.
    pub running_profiles_per_user_max: usize,
    /// Stored plugin versions, at most [`COUNT_QUOTA_MAX`].
    pub plugins_per_user_max: usize,
    /// Bytes of every stored plugin version together.
    pub plugin_bytes_per_user_max: u64,
    /// Requests a second, on average (at least 1).
    pub requests_per_second_max: u32,
    /// Requests at once after a pause (at least 1).
    pub request_burst_max: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            profiles_per_user_max: PROFILES_PER_USER_MAX_DEFAULT,
            running_profiles_per_user_max: RUNNING_PROFILES_PER_USER_MAX_DEFAULT,
            plugins_per_user_max: PLUGINS_PER_USER_MAX_DEFAULT,
            plugin_bytes_per_user_max: PLUGIN_BYTES_PER_USER_MAX_DEFAULT,
            requests_per_second_max: REQUESTS_PER_SECOND_MAX_DEFAULT,
            request_burst_max: REQUEST_BURST_MAX_DEFAULT,
        }
    }
}

impl Quotas {
    /// Checks the ranges; the error names the quota.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("profiles_per_user_max", self.profiles_per_user_max),
            (
                "running_profiles_per_user_max",
                self.running_profiles_per_user_max,
            ),
            ("plugins_per_user_max", self.plugins_per_user_max),
        ] {
            if !(1..=COUNT_QUOTA_MAX).contains(&value) {
                return Err(format!("{name}: must be 1 to {COUNT_QUOTA_MAX}"));
            }
        }
        if self.plugin_bytes_per_user_max == 0 {
            return Err("plugin_bytes_per_user_max: must be at least 1".to_owned());
        }
        if self.requests_per_second_max == 0 {
            return Err("requests_per_second_max: must be at least 1".to_owned());
        }
        if self.request_burst_max == 0 {
            return Err("request_burst_max: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Splits `directory` (oldest first, as [`keel_kernel::store::Store::profile_directory`] lists
/// it) into the profiles that may run — each user's oldest `running_max` — and the ones that
/// wait for one of them to go, each in directory order. Every instance reading the same
/// directory draws the same line, so a user's profiles past it run nowhere.
pub fn within_running_quota(
    directory: Vec<DirectoryEntry>,
    running_max: usize,
) -> (Vec<DirectoryEntry>, Vec<DirectoryEntry>) {
    let mut per_user: HashMap<UserId, usize> = HashMap::new();
    directory.into_iter().partition(|entry| {
        let count = per_user.entry(entry.user).or_default();
        *count += 1;
        *count <= running_max
    })
}

/// Why a profile past its owner's running quota does not run.
pub fn running_quota_reason(running_max: usize) -> String {
    format!(
        "running_profiles_per_user_max: a user runs at most {running_max} profiles at once; \
         it starts when one of them is deleted"
    )
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per user.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    users_max: usize,
    buckets: Mutex<HashMap<UserId, Bucket>>,
}

impl RateLimiter {
    /// Buckets of `quotas.request_burst_max` refilled at `quotas.requests_per_second_max`.
    pub fn new(quotas: &Quotas) -> RateLimiter {
        RateLimiter::with_users_max(quotas, RATE_USERS_TRACKED_MAX)
    }

    fn with_users_max(quotas: &Quotas, users_max: usize) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(quotas.requests_per_second_max.max(1)),
            burst: f64::from(quotas.request_burst_max.max(1)),
            users_max: users_max.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request of `user`'s at `now`; `Err` with the wait until the next one is
    /// allowed when the bucket is empty.
    pub fn take(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("lock poisoned");
        if !buckets.contains_key(&user) && buckets.len() >= self.users_max {
            self.forget_idle(&mut buckets, now);
        }
        let bucket = buckets.entry(user).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Makes room for one more user: the full buckets go, and if none is full, the one used
    /// least recently (its user gets a whole burst back: a bound on memory, not on anyone).
    fn forget_idle(&self, buckets: &mut HashMap<UserId, Bucket>, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_second);
        buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        if buckets.len() >= self.users_max
            && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(u, _)| *u)
        {
            buckets.remove(&oldest);
        }
    }

    /// Users tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().expect("lock poisoned").len()
    }
}

/// What the rate limiting middleware reads.
#[derive(Clone)]
pub(crate) struct RateLimit {
    pub(crate) keys: JwtKeys,
    pub(crate) limiter: std::sync::Arc<RateLimiter>,
    pub(crate) quotas: Quotas,
}

/// Counts every request with a valid token against its user's rate; one past it answers 429.
/// A request without a valid token goes on, to be refused 401 by its route.
pub(crate) async fn limit_rate(
    State(limit): State<RateLimit>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if let Ok(caller) = limit.keys.verify_header(header)
        && let Err(wait) = limit.limiter.take(caller.user, Instant::now())
    {
        let retry_after_s = wait.as_secs_f64().ceil().max(1.0) as u64;
        return ApiError::TooManyRequests {
            message: format!(
                "requests_per_second_max: a user may make {} requests a second (bursts of {}); retry in {retry_after_s} s",
                limit.quotas.requests_per_second_max, limit.quotas.request_burst_max
            ),
            retry_after_s,
        }
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(per_second: u32, burst: u32) -> Quotas {
        Quotas {
            requests_per_second_max: per_second,
            request_burst_max: burst,
            ..Quotas::default()
        }
    }

    #[test]
    fn each_users_oldest_profiles_are_within_the_running_quota() {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let entry = |user| DirectoryEntry {
            profile: keel_kernel::ids::ProfileId::new_random(),
            user,
        };
        let directory = vec![entry(a), entry(b), entry(a), entry(a), entry(b), entry(a)];
        let (running, waiting) = within_running_quota(directory.clone(), 2);
        assert_eq!(
            running,
            [directory[0], directory[1], directory[2], directory[4]]
        );
        assert_eq!(waiting, [directory[3], directory[5]]);
        // One of the running ones goes: the next oldest takes its place.
        let mut fewer = directory.clone();
        fewer.remove(2);
        let (running, waiting) = within_running_quota(fewer, 2);
        assert_eq!(
            running,
            [directory[0], directory[1], directory[3], directory[4]]
        );
        assert_eq!(waiting, [directory[5]]);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(&quotas(2, 3));
        let user = UserId::new_random();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(user, t0).is_ok());
        }
        let wait = limiter.take(user, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            limiter.take(UserId::new_random(), t0).is_ok(),
            "another user has a bucket of their own"
        );
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.take(user, later).is_ok(), "refilled at the rate");
        assert!(limiter.take(user, later).is_err());
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.take(user, much_later).is_ok());
        }
        assert!(
            limiter.take(user, much_later).is_err(),
            "never more than the burst"
        );
    }

    #[test]
    fn the_users_tracked_are_bounded_and_the_idle_go_first() {
        let limiter = RateLimiter::with_users_max(&quotas(1, 2), 4);
        let t0 = Instant::now();
        for _ in 0..100 {
            limiter.take(UserId::new_random(), t0).unwrap();
            assert!(limiter.tracked() <= 4);
        }
        // Three users idle past a full refill, one who just spent their burst.
        let limiter = RateLimiter::with_users_max(&quotas(1, 2), 4);
        for _ in 0..3 {
            limiter.take(UserId::new_random(), t0).unwrap();
        }
        let busy = UserId::new_random();
        let t1 = t0 + Duration::from_millis(2_500);
        limiter.take(busy, t1).unwrap();
        limiter.take(busy, t1).unwrap();
        limiter.take(UserId::new_random(), t1).unwrap();
        assert_eq!(limiter.tracked(), 2, "the idle users' full buckets went");
        assert!(
            limiter.take(busy, t1).is_err(),
            "the busy user's empty bucket was kept"
        );
    }
}
