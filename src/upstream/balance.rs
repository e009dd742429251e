//! Which target a request goes to first, and which next when that one is
//! ejected, full or already tried.
//!
//! Round robin (weighted or not) is a fixed schedule computed once with
//! nginx's smooth weighted round robin, walked by one shared counter: no
//! lock per request. Least-outstanding compares requests in flight per
//! unit of weight, starting the scan at a rotating target so ties spread.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::config::Balance;

pub struct Balancer {
    strategy: Balance,
    /// Target indexes in round-robin order (one slot per unit of weight).
    schedule: Box<[u8]>,
    weights: Box<[u32]>,
    next: AtomicUsize,
}

/// Where one request is in its walk over the targets.
#[derive(Default)]
pub struct Cursor {
    first: Option<usize>,
    step: usize,
}

impl Balancer {
    /// `weights[i]` is target `i`'s weight (1 to 100, at most 64 targets).
    pub fn new(strategy: Balance, weights: &[u32]) -> Self {
        Balancer {
            strategy,
            schedule: smooth_weighted_schedule(weights),
            weights: weights.into(),
            next: AtomicUsize::new(0),
        }
    }

    fn len(&self) -> usize {
        self.weights.len()
    }

    /// The next target to consider that is not in `skip` (a bit per
    /// target), or `None` when every target was considered.
    /// `in_flight(i)` is target `i`'s requests in flight.
    pub fn next(&self, cursor: &mut Cursor, skip: u64, in_flight: impl Fn(usize) -> usize) -> Option<usize> {
        let n = self.len();
        if n == 1 {
            let first = cursor.step == 0 && skip & 1 == 0;
            cursor.step = 1;
            return first.then_some(0);
        }
        match self.strategy {
            Balance::RoundRobin | Balance::Weighted => {
                let first = *cursor.first.get_or_insert_with(|| {
                    let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
                    usize::from(self.schedule[slot])
                });
                while cursor.step < n {
                    let i = (first + cursor.step) % n;
                    cursor.step += 1;
                    if skip & (1 << i) == 0 {
                        return Some(i);
                    }
                }
                None
            }
            Balance::LeastOutstanding => {
                let start = *cursor
                    .first
                    .get_or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed) % n);
                let mut best: Option<(usize, usize)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if skip & (1 << i) != 0 || cursor.step & (1 << i) != 0 {
                        continue;
                    }
                    let load = in_flight(i);
                    // load_i / w_i < load_b / w_b, without division.
                    let better = match best {
                        None => true,
                        Some((b, load_b)) => {
                            (load as u64) * u64::from(self.weights[b])
                                < (load_b as u64) * u64::from(self.weights[i])
                        }
                    };
                    if better {
                        best = Some((i, load));
                    }
                }
                // `step` is a mask of the targets this walk already gave.
                let (i, _) = best?;
                cursor.step |= 1 << i;
                Some(i)
            }
        }
    }
}

/// nginx's smooth weighted round robin, run for one full cycle: each turn
/// every target gains its weight, the largest total is chosen and loses
/// the sum of weights. Weights 5, 1, 1 give `a a b a c a a`, not
/// `a a a a a b c`.
fn smooth_weighted_schedule(weights: &[u32]) -> Box<[u8]> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total.max(1) as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u8);
    }
    if schedule.is_empty() {
        schedule.push(0);
    }
    schedule.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(b: &Balancer, skip: u64, in_flight: &[usize]) -> Vec<usize> {
        let mut cursor = Cursor::default();
        std::iter::from_fn(|| b.next(&mut cursor, skip, |i| in_flight[i])).collect()
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        assert_eq!(&*smooth_weighted_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*smooth_weighted_schedule(&[1, 1, 1]), &[0, 1, 2]);
    }

    #[test]
    fn round_robin_takes_turns_and_then_offers_the_rest() {
        let b = Balancer::new(Balance::RoundRobin, &[1, 1, 1]);
        let firsts: Vec<usize> = (0..6).map(|_| walk(&b, 0, &[0; 3])[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(walk(&b, 0, &[0; 3]), [0, 1, 2], "every target once per walk");
        assert_eq!(
            walk(&b, 0b010, &[0; 3]),
            [2, 0],
            "skipped targets are not offered"
        );
    }

    #[test]
    fn weights_share_the_first_choices() {
        let b = Balancer::new(Balance::Weighted, &[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[walk(&b, 0, &[0; 2])[0]] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn least_outstanding_prefers_the_least_loaded_per_weight() {
        let b = Balancer::new(Balance::LeastOutstanding, &[1, 1, 2]);
        // 4/1, 1/1, 3/2: the second target first, then the third, then the first.
        assert_eq!(walk(&b, 0, &[4, 1, 3]), [1, 2, 0]);
        assert_eq!(walk(&b, 0b010, &[4, 1, 3]), [2, 0]);
    }

    #[test]
    fn one_target_is_offered_once() {
        let b = Balancer::new(Balance::LeastOutstanding, &[1]);
        assert_eq!(walk(&b, 0, &[7]), [0]);
        assert!(walk(&b, 1, &[7]).is_empty());
    }
}
