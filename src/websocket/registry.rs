//! Open WebSocket connections, process-wide: the per-route caps per client
//! IP and per user, how many are open, and the signal that closes them all
//! on shutdown. Connections outlive a policy (a reload keeps them open), so
//! this lives in the [`crate::runtime::Runtime`].
//!
//! The counts are per instance: a handshake takes one lock, a message none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::sync::{Notify, watch};

/// What a cap counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Counted {
    Ip(IpAddr),
    User(String),
}

type CountKey = (Arc<str>, Counted);

/// Which cap a handshake would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapReached {
    PerIp,
    PerUser,
}

impl CapReached {
    pub fn reason(self) -> &'static str {
        match self {
            CapReached::PerIp => "Too many WebSocket connections from this address.",
            CapReached::PerUser => "Too many WebSocket connections for this user.",
        }
    }
}

/// Where the policy serving now comes from (the gateway's `ArcSwap`).
type PolicySource = Box<dyn Fn() -> Option<Arc<crate::policy::Policy>> + Send + Sync>;

pub struct WebSockets {
    counts: Mutex<HashMap<CountKey, u32>>,
    /// Rechecks run against the policy serving now, not the handshake's.
    current: std::sync::OnceLock<PolicySource>,
    open: AtomicUsize,
    all_closed: Notify,
    shutdown: watch::Sender<bool>,
}

/// One open connection's place in the counts; dropping it gives it back.
pub struct Place {
    registry: Arc<WebSockets>,
    keys: SmallVec<[CountKey; 2]>,
}

impl Drop for Place {
    fn drop(&mut self) {
        {
            let mut counts = self.registry.counts.lock().unwrap_or_else(|e| e.into_inner());
            for key in self.keys.drain(..) {
                if let Some(n) = counts.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&key);
                    }
                }
            }
        }
        if self.registry.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.registry.all_closed.notify_waiters();
        }
    }
}

/// The caps of one route.
pub struct Caps<'a> {
    pub route: &'a Arc<str>,
    /// The client IP, IPv6 grouped by `[rate_limits] ipv6_prefix` (one
    /// host usually holds a whole /64).
    pub ip: IpAddr,
    pub per_ip: Option<u32>,
    pub user: Option<&'a str>,
    pub per_user: Option<u32>,
}

impl WebSockets {
    pub fn new() -> Arc<WebSockets> {
        Arc::new(WebSockets {
            counts: Mutex::new(HashMap::new()),
            current: std::sync::OnceLock::new(),
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            shutdown: watch::channel(false).0,
        })
    }

    /// Takes a place for a new connection, or says which cap is full.
    pub fn open(self: &Arc<Self>, caps: Caps<'_>) -> Result<Place, CapReached> {
        let mut wanted: SmallVec<[(CountKey, u32, CapReached); 2]> = SmallVec::new();
        if let Some(max) = caps.per_ip {
            wanted.push(((caps.route.clone(), Counted::Ip(caps.ip)), max, CapReached::PerIp));
        }
        if let (Some(max), Some(user)) = (caps.per_user, caps.user) {
            wanted.push((
                (caps.route.clone(), Counted::User(user.to_string())),
                max,
                CapReached::PerUser,
            ));
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (key, max, which) in &wanted {
            if counts.get(key).copied().unwrap_or(0) >= *max {
                return Err(*which);
            }
        }
        let mut keys = SmallVec::new();
        for (key, _, _) in wanted {
            *counts.entry(key.clone()).or_insert(0) += 1;
            keys.push(key);
        }
        drop(counts);
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(Place {
            registry: self.clone(),
            keys,
        })
    }

    /// Lets rechecks find the policy serving now (set once, at start).
    pub fn follow(&self, source: impl Fn() -> Option<Arc<crate::policy::Policy>> + Send + Sync + 'static) {
        let _ = self.current.set(Box::new(source));
    }

    /// The policy serving now, if the gateway said where to find it.
    pub fn current_policy(&self) -> Option<Arc<crate::policy::Policy>> {
        self.current.get().and_then(|source| source())
    }

    /// Open connections.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Tells every open connection to close (with 1001, going away).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Closes every connection and waits, at most `limit`, for them to end.
    pub async fn close_all(&self, limit: Duration) {
        self.shutdown.send_replace(true);
        let wait = async {
            loop {
                let notified = self.all_closed.notified();
                if self.open_count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_route_ip_and_user_and_free_on_drop() {
        let ws = WebSockets::new();
        let route: Arc<str> = "chat".into();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let caps = |user| Caps {
            route: &route,
            ip,
            per_ip: Some(2),
            user,
            per_user: Some(1),
        };
        let a = ws.open(caps(Some("ann"))).unwrap();
        assert_eq!(ws.open(caps(Some("ann"))).err(), Some(CapReached::PerUser));
        let b = ws.open(caps(Some("bob"))).unwrap();
        assert_eq!(ws.open(caps(Some("cy"))).err(), Some(CapReached::PerIp));
        assert_eq!(ws.open_count(), 2);
        drop(a);
        assert!(ws.open(caps(Some("ann"))).is_ok());
        drop(b);
        assert_eq!(ws.open_count(), 0);
        assert!(ws.counts.lock().unwrap().is_empty());
    }
}
