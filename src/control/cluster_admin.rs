//! The control plane's part in cluster mode's shared admin states and
//! health: applying an admin state the cluster agreed on (by backend
//! name, as etcd stores it), and reporting this director's own health
//! verdicts to the cluster thread through the
//! [`crate::cluster_link::HealthPort`].

use std::collections::BTreeMap;

use tracing::debug;

use crate::control::state::Control;
use crate::route::backends::{AdminState, BackendHealth, BackendSet};

impl Control {
    /// Applies the cluster's admin `state` of the backend named `backend`
    /// ([`Control::set_admin`]); true once done (for `down`: every session
    /// there closed). A name this director does not know is done at once.
    pub async fn cluster_admin(&self, backend: &str, state: AdminState) -> bool {
        let id = self.backends().by_name(backend).map(|b| b.id);
        match id {
            Some(id) => self.set_admin(id, state).await,
            None => {
                debug!(
                    backend,
                    "cluster admin state for a backend not configured here"
                );
                true
            }
        }
    }

    /// In cluster mode, reports every configured backend of `set` as up
    /// (not every checked port failing) or down to the cluster thread.
    pub fn report_health_to_cluster(&self, set: &BackendSet) {
        if let Some(link) = self.shared().cluster.as_ref() {
            let verdicts: BTreeMap<String, bool> = set
                .configured()
                .map(|b| (b.name.to_string(), b.health() != BackendHealth::Unhealthy))
                .collect();
            link.health.report(verdicts);
        }
    }
}
