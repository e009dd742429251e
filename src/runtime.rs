//! Process-wide services that outlive any one policy: metrics, the store,
//! the key cache and the audit log. A policy's stages hold handles to them;
//! a reload builds new stages over the same services.

use std::sync::Arc;

use crate::audit::Audit;
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct Runtime {
    pub metrics: Arc<Metrics>,
    pub store: Option<Store>,
    pub keys: Option<Arc<KeyCache>>,
    pub audit: Audit,
}

impl Runtime {
    /// No store and no audit: enough to compile and check a config.
    pub fn offline(metrics: Arc<Metrics>) -> Runtime {
        Runtime {
            metrics,
            store: None,
            keys: None,
            audit: Audit::disabled(),
        }
    }
}
