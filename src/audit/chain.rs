//! The hash chain. Each event's hash is
//! `SHA-256(prev_hash + "\n" + canonical JSON of the event and its seq)`,
//! where the canonical JSON has a fixed field order and sorted `details`
//! keys, so it can be recomputed from what any sink stored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Event, Severity};

/// The `prev_hash` of the first event of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event with its place in a chain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChainedEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    id: &'a str,
    time: i64,
    #[serde(rename = "type")]
    kind: &'a str,
    severity: Severity,
    request_id: Option<&'a str>,
    client_ip: Option<&'a str>,
    consumer: Option<&'a str>,
    route: Option<&'a str>,
    details: &'a serde_json::Value,
}

pub fn event_hash(prev_hash: &str, seq: i64, event: &Event) -> String {
    let canonical = Canonical {
        seq,
        id: &event.id,
        time: event.time,
        kind: &event.kind,
        severity: event.severity,
        request_id: event.request_id.as_deref(),
        client_ip: event.client_ip.as_deref(),
        consumer: event.consumer.as_deref(),
        route: event.route.as_deref(),
        details: &event.details,
    };
    let json = serde_json::to_vec(&canonical).expect("events serialise");
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(&json);
    hex::encode(hasher.finalize())
}

/// Chains `events` after the event `(seq, hash)` (or from the start).
pub fn chain(after: Option<(i64, String)>, events: Vec<Event>) -> Vec<ChainedEvent> {
    let (mut seq, mut prev) = after.unwrap_or((0, GENESIS.to_string()));
    events
        .into_iter()
        .map(|event| {
            seq += 1;
            let hash = event_hash(&prev, seq, &event);
            ChainedEvent {
                seq,
                event,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}

/// The event type retention writes before deleting; its `pruned_through`
/// detail explains where the remaining chain starts.
pub const RETENTION_EVENT: &str = "audit.retention";

/// Why a chain failed to verify, at the first bad sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Checks a chain event by event, in sequence order.
#[derive(Default)]
pub struct Verifier {
    last: Option<(i64, String)>,
    first_seq: Option<i64>,
    /// `pruned_through` values named by retention events seen.
    anchors: Vec<i64>,
    pub checked: u64,
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    pub fn check(&mut self, e: &ChainedEvent) -> Result<(), Broken> {
        let broken = |reason: &str| Broken {
            seq: e.seq,
            reason: reason.to_string(),
        };
        match &self.last {
            None => {
                self.first_seq = Some(e.seq);
                if e.seq == 1 && e.prev_hash != GENESIS {
                    return Err(broken("the first event does not start the chain"));
                }
            }
            Some((seq, hash)) => {
                if e.seq != seq + 1 {
                    return Err(broken(&format!(
                        "expected sequence {} (events missing or reordered)",
                        seq + 1
                    )));
                }
                if &e.prev_hash != hash {
                    return Err(broken("prev_hash does not match the previous event's hash"));
                }
            }
        }
        if event_hash(&e.prev_hash, e.seq, &e.event) != e.hash {
            return Err(broken("the event's content does not match its hash (edited)"));
        }
        if e.event.kind == RETENTION_EVENT
            && let Some(through) = e.event.details.get("pruned_through").and_then(|v| v.as_i64())
        {
            self.anchors.push(through);
        }
        self.last = Some((e.seq, e.hash.clone()));
        self.checked += 1;
        Ok(())
    }

    /// After the last event: a chain that does not start at 1 must have been
    /// cut by retention exactly where it starts. `strict_start` is off for a
    /// file that may have been rotated.
    pub fn finish(&self, strict_start: bool) -> Result<(), Broken> {
        match self.first_seq {
            Some(first) if first > 1 && strict_start && !self.anchors.contains(&(first - 1)) => Err(Broken {
                seq: first,
                reason: format!(
                    "the chain starts at {first} but no retention event pruned through {} (events deleted)",
                    first - 1
                ),
            }),
            _ => Ok(()),
        }
    }

    pub fn last(&self) -> Option<&(i64, String)> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new("test.event", Severity::Info)
                    .detail("i", i as i64)
                    .detail("b", "x")
            })
            .collect()
    }

    fn verify(chain: &[ChainedEvent]) -> Result<(), Broken> {
        let mut v = Verifier::new();
        for e in chain {
            v.check(e)?;
        }
        v.finish(true)
    }

    #[test]
    fn a_chain_verifies_and_any_tampering_is_found() {
        let good = chain(None, events(5));
        assert_eq!(verify(&good), Ok(()));

        let mut edited = good.clone();
        edited[2].event.details["i"] = 99.into();
        assert_eq!(verify(&edited).unwrap_err().seq, 3);

        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted).unwrap_err().seq, 3);

        let mut reordered = good.clone();
        reordered.swap(1, 2);
        assert_eq!(verify(&reordered).unwrap_err().seq, 3);

        let mut head_cut = good.clone();
        head_cut.remove(0);
        assert_eq!(verify(&head_cut).unwrap_err().seq, 2);
    }

    #[test]
    fn continuing_a_chain_and_pruning_with_an_anchor() {
        let first = chain(None, events(3));
        let last = first.last().map(|e| (e.seq, e.hash.clone()));
        let retention = Event::new(RETENTION_EVENT, Severity::Notice).detail("pruned_through", 2);
        let more = chain(last, vec![retention]);
        let mut all = first.clone();
        all.extend(more);
        assert_eq!(verify(&all), Ok(()));
        // Deleting what the retention event names leaves a valid chain...
        assert_eq!(verify(&all[2..]), Ok(()));
        // ...but deleting one more does not.
        assert!(verify(&all[3..]).is_err());
    }

    #[test]
    fn hashes_survive_a_round_trip_through_json() {
        let c = chain(None, events(2));
        let text = serde_json::to_string(&c[1]).unwrap();
        let back: ChainedEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(event_hash(&back.prev_hash, back.seq, &back.event), back.hash);
    }
}
