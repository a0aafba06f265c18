//! The admin API's cluster-wide actions: in cluster mode, `kick` and a
//! backend's `up`/`drain`/`down` go through the cluster thread (the
//! [`AdminPort`] of the [`ClusterLink`]) and answer once every live
//! director has acted — its sessions closed, backend side first — or with
//! 503 naming the directors that did not.

use std::time::Duration;

use serde_json::{json, Value};

use crate::admin::http::Response;
use crate::cluster_link::{ClusterLink, ClusterOutcome, ClusterReply};
use crate::control::state::{Control, CLOSE_LIMIT};
use crate::route::backends::AdminState;

/// How long the admin API waits for the cluster thread: its own bound
/// (closing sessions, plus a lease TTL for a director cut off), and more.
fn reply_limit(control: &Control) -> Duration {
    let ttl = control
        .shared()
        .config
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |c| c.lease_ttl);
    CLOSE_LIMIT + ttl + Duration::from_secs(5)
}

/// Awaits the cluster thread's reply, bounded.
async fn await_reply(control: &Control, rx: flume::Receiver<ClusterReply>) -> ClusterReply {
    match monoio::time::timeout(reply_limit(control), rx.recv_async()).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err("the cluster thread has stopped".into()),
        Err(_) => Err("the cluster thread did not answer in time".into()),
    }
}

/// `{"directors": [...], "gone": [...]}`: who acted, whose lease expired.
fn who_acted(outcome: &ClusterOutcome, count: Option<&str>) -> Value {
    let directors: Vec<Value> = outcome
        .acted
        .iter()
        .map(|(name, n)| match count {
            Some(field) => json!({ "name": name, field: n }),
            None => json!({ "name": name }),
        })
        .collect();
    json!({ "directors": directors, "gone": outcome.gone })
}

/// `POST /users/{user}/kick` in a cluster: every director ends the user's
/// sessions; `kicked` is the sum over all of them.
pub async fn kick(control: &Control, link: &ClusterLink, user: &str, key: &str) -> Response {
    let reply = await_reply(control, link.admin.kick(key)).await;
    match reply {
        Ok(outcome) if outcome.complete() => {
            let mut v = who_acted(&outcome, Some("kicked"));
            v["user"] = json!(user);
            v["key"] = json!(key);
            v["kicked"] = json!(outcome.total());
            Response::json(200, &v)
        }
        Ok(outcome) => Response::error(
            503,
            format!(
                "{user} kicked on {} directors, not on all: {}",
                outcome.acted.len() - outcome.failed.len(),
                outcome.shortfall()
            ),
        ),
        Err(e) => Response::error(503, format!("not kicked: {e}")),
    }
}

/// `POST /backends/{name}/up|drain|down` in a cluster: the state is stored
/// in etcd and applied by every director; `Ok` with who acted (the caller
/// adds the backend's row), else the error response.
pub async fn set_admin(
    control: &Control,
    link: &ClusterLink,
    name: &str,
    state: AdminState,
) -> Result<Value, Response> {
    let reply = await_reply(control, link.admin.set_admin(name, state.as_str())).await;
    match reply {
        Ok(outcome) if outcome.complete() => Ok(who_acted(&outcome, None)),
        Ok(outcome) => Err(Response::error(
            503,
            format!(
                "{name} is {} in the cluster, but not every director has acted: {}",
                state.as_str(),
                outcome.shortfall()
            ),
        )),
        Err(e) => Err(Response::error(
            503,
            format!("{name} not set {}: {e}", state.as_str()),
        )),
    }
}
