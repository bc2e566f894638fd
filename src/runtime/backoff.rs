//! How the controllers' watches retry after a failure (a member unreachable, a watch cut).
//!
//! kube's default (client-go's reflector policy: 0.8 s doubling to 30 s, reset only after
//! 120 s without errors) is kind to a struggling API server but slow to notice one that is back:
//! after a member outage of half a minute a member agent could sit out another 30 s or more
//! before it watched its InPlaceSets again, with a rollout waiting on it. These watches retry
//! sooner and cap the wait at [`MAX_DELAY`], with jitter so that many watchers do not retry in
//! step.

use std::time::Duration;

use kube::runtime::watcher::ExponentialBackoff;

/// The first retry comes after this long.
pub const MIN_DELAY: Duration = Duration::from_millis(250);
/// No retry waits longer than this.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// The backoff for every watch the hub and the member agent keep open.
pub fn watch_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_few_seconds() {
        let delays: Vec<Duration> = watch_backoff().take(20).collect();
        assert_eq!(delays.len(), 20, "it never gives up");
        // Jitter adds up to one more delay on top.
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 2), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(1), "{delays:?}");
    }
}
