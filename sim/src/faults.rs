//! Fault injection: outages, error rates and cut watches, so tests can prove controllers survive them.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    outage_until: Option<Instant>,
    errors: Option<InjectedErrors>,
}

#[derive(Clone, Copy)]
struct InjectedErrors {
    code: u16,
    rate: f64,
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
        self.state.lock().errors = Some(InjectedErrors {
            code,
            rate: rate.clamp(0.0, 1.0),
            until: Instant::now() + duration,
        });
    }

    /// The error code to answer this request with, if one is due.
    pub fn injected_error(&self) -> Option<u16> {
        let mut s = self.state.lock();
        let e = s.errors?;
        if Instant::now() >= e.until {
            s.errors = None;
            return None;
        }
        drop(s);
        (rand::rng().random::<f64>() < e.rate).then_some(e.code)
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
