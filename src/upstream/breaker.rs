//! A target's circuit breaker, which is also its passive health check.
//!
//! Closed, it lets every request through and counts consecutive failures
//! (connect errors, timeouts, the configured statuses). At `max_failures` it
//! opens: the target is ejected and requests go to the others, or fail at
//! once with 503, for a cool-down that doubles with each ejection in a row
//! (capped at `max_ejection`). After the cool-down one request is let
//! through as a trial (half-open): its success closes the breaker, its
//! failure opens it again for longer. A trial that never reports (the
//! client went away) is given up after `trial_window`, and another goes.
//!
//! A closed breaker costs one atomic load per request and, after a
//! failure, one store on the next success; the clock is read only while the
//! breaker is not closed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Milliseconds on a process-wide monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The breaker's settings (from `passive_health`), per compiled upstream.
#[derive(Clone, Copy, Debug)]
pub struct BreakerSettings {
    /// 0: never opens.
    pub max_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    /// How long a half-open trial may take before another is let through.
    pub trial_window: Duration,
}

/// Whether a request may go to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// The one request that tests a half-open target.
    Trial,
    /// Ejected; a trial may go in about this long.
    Refused {
        retry_in_ms: u64,
    },
}

/// A breaker's state, as `/readyz` and the gauge show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

pub struct Breaker {
    state: AtomicU8,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// Open: when the first trial may go. Half-open: when the trial in
    /// flight is given up.
    next_trial_ms: AtomicU64,
    /// Ejections in a row, for the cool-down's growth.
    trips: AtomicU32,
    closed_at_ms: AtomicU64,
    /// 0 closed, 1 open, 2 half-open.
    gauge: prometheus::IntGauge,
    ejections: prometheus::IntCounter,
    /// `upstream target`, for the log.
    name: String,
}

impl Breaker {
    pub fn new(name: String, gauge: prometheus::IntGauge, ejections: prometheus::IntCounter) -> Self {
        gauge.set(0);
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            next_trial_ms: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            closed_at_ms: AtomicU64::new(now_ms()),
            gauge,
            ejections,
            name,
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Whether a request may go now; a `Trial` must be reported.
    pub fn admit(&self, settings: &BreakerSettings) -> Admission {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Admission::Closed;
        }
        let now = now_ms();
        let at = self.next_trial_ms.load(Ordering::Acquire);
        if now < at {
            return Admission::Refused {
                retry_in_ms: at - now,
            };
        }
        let give_up_at = now + settings.trial_window.as_millis() as u64;
        match self
            .next_trial_ms
            .compare_exchange(at, give_up_at, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                if state == OPEN {
                    self.set_state(HALF_OPEN);
                    tracing::info!(backend = %self.name, "circuit breaker half-open: one trial request");
                }
                Admission::Trial
            }
            // Another request took the trial.
            Err(_) => Admission::Refused {
                retry_in_ms: settings.trial_window.as_millis() as u64,
            },
        }
    }

    /// The target served a request (or accepted a connection, for a
    /// WebSocket).
    pub fn succeeded(&self, admission: Admission) {
        if admission == Admission::Trial {
            self.failures.store(0, Ordering::Relaxed);
            self.closed_at_ms.store(now_ms(), Ordering::Relaxed);
            self.set_state(CLOSED);
            tracing::info!(backend = %self.name, "circuit breaker closed: the trial request succeeded");
        } else if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The target failed a request.
    pub fn failed(&self, admission: Admission, settings: &BreakerSettings) {
        if settings.max_failures == 0 {
            return;
        }
        if admission == Admission::Trial {
            self.trip(settings);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= settings.max_failures
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.trip(settings);
        }
    }

    /// Opens the breaker for the next cool-down.
    fn trip(&self, settings: &BreakerSettings) {
        let now = now_ms();
        let since_closed = now.saturating_sub(self.closed_at_ms.load(Ordering::Relaxed));
        // A target that stayed closed for a whole `max_ejection` starts
        // again at the first cool-down.
        let trips = if since_closed > settings.max_ejection.as_millis() as u64 {
            self.trips.store(1, Ordering::Relaxed);
            1
        } else {
            self.trips.fetch_add(1, Ordering::Relaxed) + 1
        };
        let cool_down = cool_down(settings, trips);
        self.next_trial_ms
            .store(now + cool_down.as_millis() as u64, Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        self.set_state(OPEN);
        self.ejections.inc();
        tracing::warn!(
            backend = %self.name,
            cool_down_ms = cool_down.as_millis() as u64,
            ejections_in_a_row = trips,
            "circuit breaker open: target ejected"
        );
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.gauge.set(i64::from(state));
    }
}

/// `ejection × 2^(trips-1)`, at most `max_ejection`.
fn cool_down(settings: &BreakerSettings, trips: u32) -> Duration {
    let factor = 1u32 << trips.saturating_sub(1).min(20);
    settings
        .ejection
        .saturating_mul(factor)
        .min(settings.max_ejection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "app 127.0.0.1:1".into(),
            prometheus::IntGauge::new("state", "test").unwrap(),
            prometheus::IntCounter::new("ejections", "test").unwrap(),
        )
    }

    fn settings(ejection_ms: u64) -> BreakerSettings {
        BreakerSettings {
            max_failures: 3,
            ejection: Duration::from_millis(ejection_ms),
            max_ejection: Duration::from_millis(ejection_ms * 3),
            trial_window: Duration::from_millis(ejection_ms),
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let (b, s) = (breaker(), settings(60_000));
        b.failed(Admission::Closed, &s);
        b.failed(Admission::Closed, &s);
        b.succeeded(Admission::Closed);
        b.failed(Admission::Closed, &s);
        b.failed(Admission::Closed, &s);
        assert_eq!(b.admit(&s), Admission::Closed, "2 in a row is below 3");
        b.failed(Admission::Closed, &s);
        assert!(matches!(b.admit(&s), Admission::Refused { retry_in_ms } if retry_in_ms > 59_000));
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.gauge.get(), 1);
        assert_eq!(b.ejections.get(), 1);
    }

    #[test]
    fn one_trial_after_the_cool_down_and_it_decides() {
        let (b, s) = (breaker(), settings(300));
        for _ in 0..3 {
            b.failed(Admission::Closed, &s);
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(b.admit(&s), Admission::Trial);
        assert_eq!(b.state(), State::HalfOpen);
        assert!(
            matches!(b.admit(&s), Admission::Refused { .. }),
            "one trial at a time"
        );
        // The trial fails: open again, for twice as long.
        b.failed(Admission::Trial, &s);
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            matches!(b.admit(&s), Admission::Refused { .. }),
            "600 ms this time"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(b.admit(&s), Admission::Trial);
        b.succeeded(Admission::Trial);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.gauge.get(), 0);
        assert_eq!(b.admit(&s), Admission::Closed);
    }

    #[test]
    fn a_trial_that_never_reports_is_given_up() {
        let (b, s) = (breaker(), settings(20));
        for _ in 0..3 {
            b.failed(Admission::Closed, &s);
        }
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(&s), Admission::Trial);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(&s), Admission::Trial, "the first trial's window passed");
    }

    #[test]
    fn the_cool_down_doubles_up_to_its_cap() {
        let s = settings(1000);
        assert_eq!(cool_down(&s, 1), Duration::from_secs(1));
        assert_eq!(cool_down(&s, 2), Duration::from_secs(2));
        assert_eq!(cool_down(&s, 3), Duration::from_secs(3));
        assert_eq!(cool_down(&s, 60), Duration::from_secs(3));
    }

    #[test]
    fn max_failures_zero_never_opens() {
        let b = breaker();
        let s = BreakerSettings {
            max_failures: 0,
            ..settings(1000)
        };
        for _ in 0..100 {
            b.failed(Admission::Closed, &s);
        }
        assert_eq!(b.admit(&s), Admission::Closed);
    }
}
