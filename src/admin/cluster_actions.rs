//! How the admin API words what cluster-wide actions did: in cluster
//! mode, `kick` and a backend's `up`/`drain`/`down` act on every live
//! director (through the [`StateSeam`](crate::control::seam::StateSeam));
//! the answer says who acted and whose lease expired meanwhile, and a 503
//! names the directors that did not act.

use serde_json::{json, Value};

use crate::cluster_link::ClusterOutcome;
use crate::control::seam::ActError;
use crate::route::backends::AdminState;

/// Adds `"directors": [...]` (with `count` per director when given) and
/// `"gone": [...]` to `v`.
pub fn add_who_acted(v: &mut Value, outcome: &ClusterOutcome, count: Option<&str>) {
    let directors: Vec<Value> = outcome
        .acted
        .iter()
        .map(|(name, n)| match count {
            Some(field) => json!({ "name": name, field: n }),
            None => json!({ "name": name }),
        })
        .collect();
    v["directors"] = json!(directors);
    v["gone"] = json!(outcome.gone);
}

/// Why `user` was not kicked everywhere.
pub fn not_kicked(user: &str, e: &ActError) -> String {
    match e {
        ActError::Incomplete(outcome) => format!(
            "{user} kicked on {} directors, not on all: {}",
            outcome.acted.len() - outcome.failed.len(),
            outcome.shortfall()
        ),
        ActError::Failed(why) => format!("not kicked: {why}"),
    }
}

/// Why backend `name` is not in `state` everywhere.
pub fn not_set(name: &str, state: AdminState, e: &ActError) -> String {
    match e {
        ActError::Incomplete(outcome) => format!(
            "{name} is {} in the cluster, but not every director has acted: {}",
            state.as_str(),
            outcome.shortfall()
        ),
        ActError::Failed(why) => format!("{name} not set {}: {why}", state.as_str()),
    }
}
