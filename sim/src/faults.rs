//! Fault injection: outages, error rates, slow answers and cut watches, so tests can prove
//! controllers survive them.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    outage_until: Option<Instant>,
    errors: Option<InjectedErrors>,
    slow: Option<Slow>,
}

#[derive(Clone)]
struct InjectedErrors {
    /// One is picked at random for each refused request.
    codes: Vec<u16>,
    rate: f64,
    until: Instant,
}

#[derive(Clone, Copy)]
struct Slow {
    max: Duration,
    until: Instant,
}

/// One cluster's faults.
pub struct Faults {
    state: Mutex<State>,
    /// Every open watch holds a child of this token; cutting watches cancels and replaces it.
    watches: Mutex<CancellationToken>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            watches: Mutex::new(CancellationToken::new()),
        }
    }
}

impl Faults {
    /// The API refuses connections (and drops open ones) for `duration`.
    pub fn outage(&self, duration: Duration) {
        self.state.lock().outage_until = Some(Instant::now() + duration);
        // Open watches die with the connections they ride on.
        self.cut_watches();
    }

    pub fn in_outage(&self) -> bool {
        let mut s = self.state.lock();
        match s.outage_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                s.outage_until = None;
                false
            }
            None => false,
        }
    }

    /// Answer a fraction `rate` of requests with `code` for `duration`.
    pub fn inject_errors(&self, code: u16, rate: f64, duration: Duration) {
        self.inject_error_mix(&[code], rate, duration);
    }

    /// Answer a fraction `rate` of requests for `duration`, each with one of `codes` at random
    /// (500 InternalError, 409 Conflict, 429 TooManyRequests with Retry-After).
    pub fn inject_error_mix(&self, codes: &[u16], rate: f64, duration: Duration) {
        self.state.lock().errors = (!codes.is_empty()).then(|| InjectedErrors {
            codes: codes.to_vec(),
            rate: rate.clamp(0.0, 1.0),
            until: Instant::now() + duration,
        });
    }

    /// The error code to answer this request with, if one is due.
    pub fn injected_error(&self) -> Option<u16> {
        let mut s = self.state.lock();
        let e = s.errors.clone()?;
        if Instant::now() >= e.until {
            s.errors = None;
            return None;
        }
        drop(s);
        let mut rng = rand::rng();
        (rng.random::<f64>() < e.rate).then(|| e.codes[rng.random_range(0..e.codes.len())])
    }

    /// Delay every answer by a random 0..=`max` for `duration` (a slow or distant member).
    pub fn slow(&self, max: Duration, duration: Duration) {
        self.state.lock().slow = Some(Slow {
            max,
            until: Instant::now() + duration,
        });
    }

    /// How long to hold this answer back, if the cluster is slow now.
    pub fn delay(&self) -> Option<Duration> {
        let mut s = self.state.lock();
        let slow = s.slow?;
        if Instant::now() >= slow.until {
            s.slow = None;
            return None;
        }
        drop(s);
        let millis = u64::try_from(slow.max.as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(rand::rng().random_range(0..=millis)))
    }

    pub fn watch_token(&self) -> CancellationToken {
        self.watches.lock().child_token()
    }

    /// Closes every open watch (clients must re-watch, as after an API server restart).
    pub fn cut_watches(&self) {
        let mut w = self.watches.lock();
        w.cancel();
        *w = CancellationToken::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_mix_answers_with_its_codes_only_and_ends() {
        let faults = Faults::default();
        faults.inject_error_mix(&[500, 409, 429], 1.0, Duration::from_secs(60));
        let seen: std::collections::BTreeSet<u16> =
            (0..200).filter_map(|_| faults.injected_error()).collect();
        assert_eq!(seen, [409, 429, 500].into());
        faults.inject_error_mix(&[500], 1.0, Duration::ZERO);
        assert_eq!(faults.injected_error(), None, "over");
    }

    #[test]
    fn a_slow_cluster_delays_answers_up_to_its_maximum_while_it_lasts() {
        let faults = Faults::default();
        assert_eq!(faults.delay(), None);
        faults.slow(Duration::from_millis(500), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..200).filter_map(|_| faults.delay()).collect();
        assert_eq!(delays.len(), 200);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(500)));
        assert!(
            delays.iter().any(|d| *d > Duration::from_millis(250)),
            "spread over the range"
        );
        faults.slow(Duration::from_millis(500), Duration::ZERO);
        assert_eq!(faults.delay(), None, "over");
    }
}
