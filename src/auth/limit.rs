//! Failure counting for brute-force protection: sign-in attempts per account and per address, and
//! failed client authentications per address at the token endpoint. Counts live in memory, per
//! server, in fixed windows; a success does not reset an address, only an account.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// The address of the peer of a request, as the socket saw it (forwarding headers are not
/// trusted). `None` when the server runs without connection info.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// A limiter key for this address.
    pub fn key(&self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Counts failures per key and refuses a key once it reached `max` in the current window.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Keys kept before stale windows are swept.
const SWEEP_AT: usize = 10_000;

impl FailureLimiter {
    /// At most `max` failures per key in each `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` is currently blocked; when it is, also how long until its window ends.
    pub fn blocked(&self, key: &str) -> Option<Duration> {
        let map = self.lock();
        let (start, n) = map.get(key)?;
        let elapsed = start.elapsed();
        (*n >= self.max && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Records one failure of `key`.
    pub fn fail(&self, key: &str) {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, (start, _)| start.elapsed() < window);
        }
        let now = Instant::now();
        let entry = map.entry(key.to_owned()).or_insert((now, 0));
        if entry.0.elapsed() >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Forgets `key` (an account after a successful sign-in).
    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The limits of one server.
pub struct Limits {
    /// Failed sign-ins per account: 5 per 15 minutes.
    pub login_account: FailureLimiter,
    /// Failed sign-ins per client address: 30 per 15 minutes.
    pub login_address: FailureLimiter,
    /// Failed client authentications and grants at the token endpoint per address: 60 a minute.
    pub token_address: FailureLimiter,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_account: FailureLimiter::new(5, Duration::from_secs(15 * 60)),
            login_address: FailureLimiter::new(30, Duration::from_secs(15 * 60)),
            token_address: FailureLimiter::new(60, Duration::from_secs(60)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_and_resets() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            l.fail("a");
        }
        assert!(l.blocked("a").is_none());
        l.fail("a");
        assert!(l.blocked("a").is_some());
        assert!(l.blocked("b").is_none());
        l.reset("a");
        assert!(l.blocked("a").is_none());
    }

    #[test]
    fn a_window_ends() {
        let l = FailureLimiter::new(1, Duration::from_millis(20));
        l.fail("a");
        assert!(l.blocked("a").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.blocked("a").is_none());
    }
}
