//! GCRA, the generic cell rate algorithm: one number per counter, the
//! theoretical arrival time (TAT) of the next request, and no bursts at
//! window boundaries because there are no windows.
//!
//! A limit of `count` per `period` with burst `B` lets `B` requests through
//! at once and then one every `T = period / count` (the emission interval).
//! A request at `now` passes when `TAT - now <= (B - 1) * T`; passing moves
//! `TAT` to `max(TAT, now) + T`. The Redis backend runs the same arithmetic
//! in Lua ([`crate::ratelimit::redis`]), so both backends mean the same thing.
//!
//! Times are microseconds.

/// A limit's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period_us: i64,
    /// `T`: one request's worth of time, rounded up so the long-run rate
    /// never exceeds the limit.
    pub emission_us: i64,
    /// `(B - 1) * T`: how far ahead of now the TAT may run.
    pub tolerance_us: i64,
    pub burst: u32,
}

impl Rate {
    pub fn new(count: u32, period_us: i64, burst: Option<u32>) -> Rate {
        let count = count.max(1);
        let burst = burst.unwrap_or(count).max(1);
        let emission_us = (period_us + count as i64 - 1) / count as i64;
        Rate {
            count,
            period_us,
            emission_us: emission_us.max(1),
            tolerance_us: emission_us.max(1) * (burst as i64 - 1),
            burst,
        }
    }
}

/// The outcome of checking one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub allowed: bool,
    /// The TAT to store if the request is admitted.
    pub new_tat: i64,
    /// Requests that could still pass right now.
    pub remaining: u32,
    /// Until the counter is back to a full burst.
    pub reset_us: i64,
    /// Until a refused request would pass (0 when allowed).
    pub retry_after_us: i64,
}

pub fn check(rate: Rate, stored_tat: Option<i64>, now: i64) -> Check {
    let tat = stored_tat.unwrap_or(now).max(now);
    let ahead = tat - now;
    if ahead > rate.tolerance_us {
        return Check {
            allowed: false,
            new_tat: tat,
            remaining: 0,
            reset_us: ahead,
            retry_after_us: ahead - rate.tolerance_us,
        };
    }
    let remaining = ((rate.tolerance_us - ahead) / rate.emission_us).clamp(0, u32::MAX as i64) as u32;
    Check {
        allowed: true,
        new_tat: tat + rate.emission_us,
        remaining,
        reset_us: ahead + rate.emission_us,
        retry_after_us: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    /// Runs requests at the given times; returns which passed.
    fn run(rate: Rate, times: &[i64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| {
                let c = check(rate, tat, now);
                if c.allowed {
                    tat = Some(c.new_tat);
                }
                c.allowed
            })
            .collect()
    }

    #[test]
    fn a_full_burst_then_one_per_interval() {
        let rate = Rate::new(10, 60 * SECOND, None);
        assert_eq!(rate.emission_us, 6 * SECOND);
        let burst = run(rate, &[0; 11]);
        assert_eq!(burst.iter().filter(|a| **a).count(), 10);
        assert!(!burst[10]);
        let mut tat = None;
        for _ in 0..10 {
            tat = Some(check(rate, tat, 0).new_tat);
        }
        let refused = check(rate, tat, 0);
        assert_eq!(refused.retry_after_us, 6 * SECOND);
        assert!(!check(rate, tat, 6 * SECOND - 1).allowed);
        let later = check(rate, tat, 6 * SECOND);
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn no_double_burst_at_a_window_boundary() {
        // A fixed window would allow 10 at 59.9 s and 10 more at 60.0 s.
        let rate = Rate::new(10, 60 * SECOND, None);
        let mut times = vec![59_900_000; 10];
        times.extend(vec![60 * SECOND; 10]);
        let passed = run(rate, &times).iter().filter(|a| **a).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn remaining_and_reset_count_down() {
        let rate = Rate::new(3, 3 * SECOND, None);
        let a = check(rate, None, 0);
        assert_eq!((a.remaining, a.reset_us), (2, SECOND));
        let b = check(rate, Some(a.new_tat), 0);
        assert_eq!((b.remaining, b.reset_us), (1, 2 * SECOND));
        let c = check(rate, Some(b.new_tat), 0);
        assert_eq!((c.remaining, c.reset_us), (0, 3 * SECOND));
        let d = check(rate, Some(c.new_tat), 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, SECOND);
    }

    #[test]
    fn an_explicit_burst_caps_what_passes_at_once() {
        let rate = Rate::new(100, 60 * SECOND, Some(5));
        assert_eq!(run(rate, &[0; 8]).iter().filter(|a| **a).count(), 5);
        // After one interval (0.6 s) one more passes.
        let mut times = vec![0; 5];
        times.push(600_000);
        assert!(run(rate, &times)[5]);
    }

    #[test]
    fn over_a_long_run_the_rate_is_never_exceeded() {
        // The bucket starts full (7) and refills at 7 a day: over two days
        // of one attempt a minute, at most 7 + 2 * 7 pass.
        let rate = Rate::new(7, 86_400 * SECOND, None);
        let times: Vec<i64> = (0..2 * 1440).map(|m| m * 60 * SECOND).collect();
        let passed = run(rate, &times).iter().filter(|a| **a).count();
        assert!((20..=21).contains(&passed), "{passed}");
    }
}
