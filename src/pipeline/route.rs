//! A compiled route, as the phases after routing see it, with one typed slot
//! per stage for that stage's own compiled policy on the route (the model is
//! Envoy's `typed_per_filter_config`): adding a stage adds a slot, not a
//! field here.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::metrics::RouteMetrics;
use crate::upstream::Upstream;

type AnyPolicy = Box<dyn Any + Send + Sync>;

/// Each stage's per-route policy, by slot number.
#[derive(Default)]
pub struct RouteSlots(Box<[Option<AnyPolicy>]>);

impl RouteSlots {
    pub fn new(slots: Vec<Option<AnyPolicy>>) -> Self {
        RouteSlots(slots.into_boxed_slice())
    }
}

/// A stage's handle to its slot on every route; made at compile time, when
/// the slot is filled, so the type always matches.
pub struct Slot<T> {
    index: usize,
    _policy: PhantomData<fn() -> T>,
}

impl<T> Slot<T> {
    pub fn new(index: usize) -> Self {
        Slot {
            index,
            _policy: PhantomData,
        }
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slot<T> {}

impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.index)
    }
}

/// A compiled `[[routes]]` entry.
pub struct Route {
    /// Names the route in metrics, logs, audit events and limit keys.
    pub id: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
    /// `retry_non_idempotent`: the upstream may retry any method here.
    pub retry_non_idempotent: bool,
    slots: RouteSlots,
}

impl Route {
    pub fn new(id: Arc<str>, upstream: Arc<Upstream>, metrics: RouteMetrics, slots: RouteSlots) -> Route {
        Route {
            id,
            upstream,
            metrics,
            retry_non_idempotent: false,
            slots,
        }
    }

    /// A route `test` to an unused local port, with these slots, for unit
    /// tests of stage decisions.
    #[cfg(test)]
    pub fn for_test_with(slots: RouteSlots) -> Route {
        let metrics = crate::metrics::Metrics::new();
        let upstream = Arc::new(Upstream::for_test("http://127.0.0.1:9", &metrics));
        Route::new("test".into(), upstream, metrics.for_route("test"), slots)
    }

    /// [`Route::for_test_with`] no slots.
    #[cfg(test)]
    pub fn for_test() -> Route {
        Route::for_test_with(RouteSlots::default())
    }

    /// The stage's policy for this route, if it has one here.
    pub fn get<T: 'static>(&self, slot: Slot<T>) -> Option<&T> {
        self.slots.0.get(slot.index)?.as_ref()?.downcast_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_returns_its_own_policy_or_nothing() {
        let slots = RouteSlots::new(vec![Some(Box::new(7u32)), None, Some(Box::new("limits"))]);
        let route = Route::for_test_with(slots);
        assert_eq!(route.get(Slot::<u32>::new(0)), Some(&7));
        assert_eq!(route.get(Slot::<u32>::new(1)), None);
        assert_eq!(route.get(Slot::<&str>::new(2)), Some(&"limits"));
        assert_eq!(route.get(Slot::<u32>::new(9)), None);
    }
}
