//! The in-process limiter: counters in a sharded hash map, each shard
//! behind its own short-lived mutex, so requests for different clients
//! rarely touch the same lock.
//!
//! Memory is bounded: a counter whose TAT has passed carries no information
//! (the client is back to a full burst) and is dropped by a sweep every ten
//! seconds; and when a shard is full, the counter closest to expiring among
//! a few sampled is dropped to make room (that client may get up to its
//! burst back a little early; the count is in
//! `portcullis_ratelimit_evictions_total`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use smallvec::SmallVec;

use super::gcra::{Check, Rate, check};

const SHARDS: usize = 64;
const EVICTION_SAMPLE: usize = 8;

/// Counter IDs are already hashes; hashing them again would be waste.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, i64, BuildHasherDefault<PassThrough>>;

pub struct LocalLimiter {
    /// Keys counter IDs; random per process, so IDs cannot be predicted
    /// (and collided) from outside.
    pub hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    epoch: Instant,
    evictions: IntCounter,
    entries: IntGauge,
}

impl LocalLimiter {
    pub fn new(max_entries: usize, metrics: &crate::metrics::Metrics) -> LocalLimiter {
        let evictions = IntCounter::new(
            "portcullis_ratelimit_evictions_total",
            "In-process rate-limit counters dropped early because the table was full.",
        )
        .expect("metric definitions are valid");
        let entries = IntGauge::new(
            "portcullis_ratelimit_local_entries",
            "Counters held by the in-process rate limiter (as of the last sweep).",
        )
        .expect("metric definitions are valid");
        metrics.register(Box::new(evictions.clone()));
        metrics.register(Box::new(entries.clone()));
        LocalLimiter {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (max_entries / SHARDS).max(16),
            epoch: Instant::now(),
            evictions,
            entries,
        }
    }

    /// Microseconds on this process's monotonic clock.
    pub fn now(&self) -> i64 {
        self.epoch.elapsed().as_micros() as i64
    }

    fn shard_of(id: u64) -> usize {
        // Not the top bits (the hash table uses those as tags) nor the
        // bottom ones (it uses those for buckets).
        (id >> 32) as usize % SHARDS
    }

    /// Checks every counter; admits (and counts) the request only if all
    /// pass, so a refused request consumes none of them.
    pub fn check(&self, counters: &[(u64, Rate)]) -> SmallVec<[Check; 4]> {
        let now = self.now();
        if let [(id, rate)] = counters {
            let mut one = SmallVec::new();
            one.push(self.check_one(*id, *rate, now));
            return one;
        }
        let mut order: SmallVec<[usize; 4]> = counters.iter().map(|(id, _)| Self::shard_of(*id)).collect();
        order.sort_unstable();
        order.dedup();
        // Locks are always taken in shard order, so two requests cannot
        // wait on each other.
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, Shard>)> = order
            .iter()
            .map(|&i| (i, self.shards[i].lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        let slot = |shard: usize| -> usize { order.binary_search(&shard).expect("locked above") };
        let checks: SmallVec<[Check; 4]> = counters
            .iter()
            .map(|(id, rate)| {
                let g = slot(Self::shard_of(*id));
                check(*rate, guards[g].1.get(id).copied(), now)
            })
            .collect();
        if checks.iter().all(|c| c.allowed) {
            for ((id, _), c) in counters.iter().zip(&checks) {
                let g = slot(Self::shard_of(*id));
                let map = &mut guards[g].1;
                if !map.contains_key(id) && map.len() >= self.per_shard {
                    self.make_room(map, now);
                }
                map.insert(*id, c.new_tat);
            }
        }
        checks
    }

    /// Counts one event against one counter (if it has room).
    pub fn count(&self, id: u64, rate: Rate) -> Check {
        self.check_one(id, rate, self.now())
    }

    /// The common case of one limit: one lock, nothing to coordinate.
    fn check_one(&self, id: u64, rate: Rate, now: i64) -> Check {
        let mut map = self.shards[Self::shard_of(id)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let c = check(rate, map.get(&id).copied(), now);
        if c.allowed {
            if !map.contains_key(&id) && map.len() >= self.per_shard {
                self.make_room(&mut map, now);
            }
            map.insert(id, c.new_tat);
        }
        c
    }

    fn make_room(&self, map: &mut Shard, now: i64) {
        map.retain(|_, tat| *tat > now);
        if map.len() < self.per_shard {
            return;
        }
        let victim = map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, tat)| **tat)
            .map(|(id, _)| *id);
        if let Some(id) = victim {
            map.remove(&id);
            self.evictions.inc();
        }
    }

    /// Drops counters that have expired.
    pub fn sweep(&self) {
        let now = self.now();
        let mut total = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, tat| *tat > now);
            total += map.len();
        }
        self.entries.set(total as i64);
    }

    /// Sweeps every ten seconds until the handle is aborted.
    pub fn spawn_sweeper(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                limiter.sweep();
            }
        })
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize) -> LocalLimiter {
        LocalLimiter::new(max, &crate::metrics::Metrics::new())
    }

    #[test]
    fn a_refused_request_consumes_no_counter() {
        let l = limiter(1000);
        let wide = Rate::new(100, 60_000_000, None);
        let narrow = Rate::new(2, 60_000_000, None);
        let counters = [(1u64 << 33, wide), (7u64 << 34, narrow)];
        assert!(l.check(&counters).iter().all(|c| c.allowed));
        assert!(l.check(&counters).iter().all(|c| c.allowed));
        // The narrow one is exhausted: refused, and the wide one is untouched.
        let third = l.check(&counters);
        assert!(!third[1].allowed);
        assert_eq!(third[0].remaining, 97);
        let again = l.check(&counters);
        assert_eq!(again[0].remaining, 97);
    }

    #[test]
    fn counting_one_event_stops_at_the_budget() {
        let l = limiter(1000);
        let rate = Rate::new(2, 60_000_000, None);
        let id = 5u64 << 40;
        assert!(l.count(id, rate).allowed);
        assert!(l.count(id, rate).allowed);
        assert!(!l.count(id, rate).allowed, "the budget is spent");
        assert!(!l.count(id, rate).allowed);
    }

    #[test]
    fn memory_stays_bounded_when_full() {
        let l = limiter(16 * SHARDS);
        let rate = Rate::new(10, 3_600_000_000, None);
        for id in 0..100_000u64 {
            l.check(&[(id.wrapping_mul(0x9E37_79B9_7F4A_7C15), rate)]);
        }
        assert!(l.len() <= 16 * SHARDS, "{}", l.len());
        assert!(l.evictions.get() > 0);
    }

    #[test]
    fn expired_counters_are_swept() {
        let l = limiter(1000);
        let rate = Rate::new(1000, 1000, None);
        l.check(&[(42, rate)]);
        assert_eq!(l.len(), 1);
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert!(l.is_empty());
    }
}
