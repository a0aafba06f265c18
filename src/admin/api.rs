//! The admin API's endpoints (the contract in DESIGN §6).
//!
//! Unknown backend or user → 404, malformed request → 400, wrong method →
//! 405 (with `Allow`), each with `{"error": "..."}`. Also the status page
//! (`GET /`), its data (`GET /events`, `GET /history`) and the OpenAPI
//! description (`GET /openapi.json`, `openapi.json` beside this file). User names in paths are
//! percent-decoded and normalised with `server.user_key`, exactly as a
//! login would be.

use std::rc::Rc;

use serde_json::{json, Value};

use crate::admin::cluster_actions;
use crate::admin::http::{Request, Response};
use crate::admin::metrics::render_metrics;
use crate::admin::time::rfc3339;
use crate::config::Protocol;
use crate::control::history::SAMPLE_INTERVAL;
use crate::control::seam::{Since, StateSeam};
use crate::control::state::{Control, ReloadError};
use crate::route::backends::{AdminState, Backend, BackendId, Lifecycle};
use crate::route::router::Reassign;

/// The status page: one self-contained HTML file (inline CSS and script).
pub const STATUS_PAGE: &str = include_str!("status_page.html");

/// The OpenAPI 3 description of this API (kept in the repository).
pub const OPENAPI: &str = include_str!("openapi.json");

/// The largest integer a JSON client can hold exactly: the bound of
/// numbers taken in queries.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The methods each path takes, `None` for no such path.
fn allowed_methods(segs: &[&str]) -> Option<&'static str> {
    match segs {
        []
        | ["openapi.json" | "status" | "backends" | "metrics" | "events" | "history" | "cluster"] => {
            Some("GET")
        }
        ["users", _] => Some("GET"),
        ["backends", _, _] | ["users", _, "kick" | "move"] | ["reload"] | ["upgrade"] => {
            Some("POST")
        }
        _ => None,
    }
}

/// Answers one request (the access checks have passed).
pub async fn route(control: &Rc<Control>, req: &Request) -> Response {
    let Some(segments) = req.segments() else {
        return Response::error(400, "bad percent-encoding in the path");
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method.as_str();
    let Some(allowed) = allowed_methods(&segs) else {
        return Response::error(
            404,
            format!("no such endpoint: {} {}", req.method, req.path),
        );
    };
    if method != allowed {
        return Response::error(405, format!("{method} is not allowed here, use {allowed}"))
            .with_header("Allow", allowed);
    }
    match segs.as_slice() {
        [] => status_page(),
        ["openapi.json"] => Response::bytes(200, "application/json", OPENAPI),
        ["status"] => status(control).await,
        ["backends"] => backends(control).await,
        ["events"] => events(control, req),
        ["history"] => history(control),
        ["metrics"] => Response::bytes(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(control).await,
        ),
        ["backends", name, action] => backend_action(control, name, action).await,
        ["users", user] => user_info(control, user).await,
        ["users", user, "kick"] => kick(control, user).await,
        ["users", user, "move"] => move_user(control, user, req.param("to")).await,
        ["reload"] => reload(control).await,
        ["upgrade"] => upgrade(control).await,
        ["cluster"] => cluster(control),
        _ => Response::error(
            404,
            format!("no such endpoint: {} {}", req.method, req.path),
        ),
    }
}

/// `GET /cluster`: this director's view of the cluster; 404 for a
/// director on its own.
fn cluster(control: &Control) -> Response {
    match control.shared().cluster.as_ref() {
        Some(link) => match serde_json::to_value(&*link.view()) {
            Ok(view) => Response::json(200, &view),
            Err(e) => Response::error(500, format!("cluster view: {e}")),
        },
        None => Response::error(404, "not a cluster: this director has no [cluster] section"),
    }
}

/// `POST /reload`: 200 with what changed, or 400 with every error (the
/// old configuration stays in force).
async fn reload(control: &Rc<Control>) -> Response {
    match control.reload().await {
        Ok(changes) => Response::json(200, &json!({ "reloaded": true, "changes": changes })),
        Err(ReloadError(errors)) => Response::json(
            400,
            &json!({
                "error": format!("configuration not reloaded:\n{}", errors.join("\n")),
                "errors": errors,
            }),
        ),
    }
}

/// `POST /upgrade`: hand over to a new process of the binary; 200 with
/// both process ids once the new one serves (this one then drains and
/// exits), 409 when no upgrade is possible now, 500 when the new process
/// failed before it was ready (this one serves on).
async fn upgrade(control: &Rc<Control>) -> Response {
    match control.request_upgrade().await {
        Ok(done) => Response::json(
            200,
            &json!({ "upgraded": true, "old_pid": done.old_pid, "new_pid": done.new_pid }),
        ),
        Err(refused) => Response::error(refused.status, refused.message),
    }
}

/// `GET /`: the page, with headers that keep it out of frames and limit
/// it to its own inline code and this origin.
fn status_page() -> Response {
    Response::bytes(200, "text/html; charset=utf-8", STATUS_PAGE)
        .with_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )
        .with_header("X-Frame-Options", "DENY")
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
        .with_header("Cache-Control", "no-store")
}

/// `GET /events?since=SEQ`: the recent events numbered above SEQ.
fn events(control: &Control, req: &Request) -> Response {
    let since = match req.param("since") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= MAX_SAFE_INTEGER => n,
            _ => return Response::error(400, "since must be a whole number from 0 to 2^53 - 1"),
        },
    };
    let (events, last) = control.events_since(since);
    let rows: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "time": rfc3339(e.time),
                "kind": e.kind.as_str(),
                "backend": e.backend,
                "user": e.user,
                "message": e.message,
            })
        })
        .collect();
    Response::json(200, &json!({ "last_seq": last, "events": rows }))
}

/// `GET /history`: the load samples of the last minutes.
fn history(control: &Control) -> Response {
    let samples: Vec<Value> = control
        .load_history()
        .iter()
        .map(|s| {
            json!({
                "time": rfc3339(s.time),
                "sessions": s.sessions,
                "connections": s.connections,
                "logins_per_s": s.logins_per_s,
                "connections_per_s": s.connections_per_s,
                "tls_share": s.tls_share,
            })
        })
        .collect();
    Response::json(
        200,
        &json!({ "interval": SAMPLE_INTERVAL.as_secs(), "samples": samples }),
    )
}

async fn status(control: &Control) -> Response {
    Response::json(
        200,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": control.uptime(),
            "cores": control.cores(),
            "sessions": control.session_count().await,
            "state_version": control.backends().version,
            "cluster": control.shared().cluster.as_ref().map(|c| c.name.clone()),
            "pid": std::process::id(),
            "degraded": control.shared().cluster.as_ref().map_or_else(Vec::new, |c| c.view().degraded.clone()),
        }),
    )
}

async fn backends(control: &Control) -> Response {
    let stats = control.stats().await;
    let set = control.backends();
    let rows: Vec<Value> = set
        .configured()
        .map(|b| {
            let i = usize::from(b.id);
            let sessions: u64 = stats
                .iter()
                .filter_map(|s| s.sessions.get(i))
                .map(|p| p.iter().map(|n| u64::from(*n)).sum::<u64>())
                .sum();
            let users: u64 = stats
                .iter()
                .filter_map(|s| s.users.get(i))
                .map(|n| u64::from(*n))
                .sum();
            backend_json(control, b, sessions, users)
        })
        .collect();
    Response::json(200, &Value::Array(rows))
}

fn backend_json(control: &Control, b: &Backend, sessions: u64, users: u64) -> Value {
    let mut v = json!({
        "name": &*b.name,
        "host": b.host,
        "weight": b.weight,
        "admin": b.admin.as_str(),
        "health": b.health().as_str(),
        "protocols": protocols_json(b),
        "routable": b.routable(),
        "sessions": sessions,
        "users": users,
    });
    if let Some(e) = control.last_error(b.id) {
        v["last_error"] = Value::String(e);
    }
    if b.lifecycle == Lifecycle::Removed {
        v["removed"] = Value::Bool(true);
    }
    v
}

/// `{"imap": "healthy", "pop3": "unhealthy", ...}` over the checked
/// protocols.
fn protocols_json(b: &Backend) -> Value {
    let map = Protocol::ALL
        .iter()
        .filter_map(|p| {
            b.protocol_health(*p)
                .map(|h| (p.as_str().to_string(), Value::String(h.as_str().into())))
        })
        .collect();
    Value::Object(map)
}

fn find_backend(control: &Control, name: &str) -> Result<BackendId, Response> {
    control
        .backends()
        .by_name(name)
        .map(|b| b.id)
        .ok_or_else(|| Response::error(404, format!("no backend named {name:?}")))
}

async fn backend_action(control: &Control, name: &str, action: &str) -> Response {
    let id = match find_backend(control, name) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let state = match action {
        "up" => AdminState::Up,
        "drain" => AdminState::Drain,
        "down" => AdminState::Down,
        "flush" => {
            let (users, sessions) = control.flush(id).await;
            return Response::json(
                200,
                &json!({ "backend": name, "flushed_users": users, "closed_sessions": sessions }),
            );
        }
        other => {
            return Response::error(
                400,
                format!("unknown action {other:?}: use up, down, drain or flush"),
            )
        }
    };
    // Cluster mode: up, drain and down act on every director.
    let acted = match StateSeam::of(control).set_admin(control, id, state).await {
        Ok(acted) => acted,
        Err(e) => return Response::error(503, cluster_actions::not_set(name, state, &e)),
    };
    let set = control.backends();
    match set.get(id) {
        Some(b) => {
            let mut row = backend_json(control, b, 0, 0);
            if let Some(outcome) = &acted.directors {
                cluster_actions::add_who_acted(&mut row, outcome, None);
            }
            Response::json(200, &row)
        }
        None => Response::error(404, format!("no backend named {name:?}")),
    }
}

fn key_of(control: &Control, user: &str) -> Result<String, Response> {
    if user.is_empty() || user.chars().count() > 512 || user.chars().any(char::is_control) {
        return Err(Response::error(
            400,
            "a user name must be 1 to 512 printable characters",
        ));
    }
    Ok(control.shared().user_key.key(user))
}

async fn user_info(control: &Control, user: &str) -> Response {
    let key = match key_of(control, user) {
        Ok(k) => k,
        Err(r) => return r,
    };
    // Cluster mode: a user this director serves no session of may be
    // assigned by another; etcd says where.
    let Some(place) = StateSeam::of(control).lookup(control, &key).await else {
        return Response::error(404, format!("user {user:?} has no assignment"));
    };
    Response::json(
        200,
        &json!({
            "user": user,
            "key": key,
            "backend": place.backend,
            "sessions": place.sessions,
            "since": match place.since {
                Since::At(t) => rfc3339(t),
                Since::Text(t) => t,
            },
        }),
    )
}

async fn kick(control: &Control, user: &str) -> Response {
    let key = match key_of(control, user) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match StateSeam::of(control).kick(control, &key).await {
        Ok(acted) => {
            let mut v = json!({ "user": user, "key": key, "kicked": acted.closed });
            if let Some(outcome) = &acted.directors {
                cluster_actions::add_who_acted(&mut v, outcome, Some("kicked"));
            }
            Response::json(200, &v)
        }
        Err(e) => Response::error(503, cluster_actions::not_kicked(user, &e)),
    }
}

async fn move_user(control: &Control, user: &str, to: Option<String>) -> Response {
    let key = match key_of(control, user) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(to) = to.filter(|t| !t.is_empty()) else {
        return Response::error(400, "move needs ?to=BACKEND");
    };
    let id = match find_backend(control, &to) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match control.move_user(&key, Reassign::To(id)).await {
        Ok(closed) => Response::json(
            200,
            &json!({ "user": user, "key": key, "backend": to, "closed_sessions": closed }),
        ),
        Err(e) => Response::error(503, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path of the OpenAPI document is routed with the methods it
    /// lists, and every routed path is in the document.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let paths = doc["paths"].as_object().unwrap();
        for (path, ops) in paths {
            let segs: Vec<&str> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect();
            let methods: Vec<String> = ops
                .as_object()
                .unwrap()
                .keys()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            assert_eq!(
                allowed_methods(&segs).map(|m| vec![m.to_string()]),
                Some(methods),
                "{path}"
            );
        }
        let routed = [
            "/",
            "/openapi.json",
            "/status",
            "/backends",
            "/metrics",
            "/events",
            "/history",
            "/users/{user}",
            "/backends/{name}/{action}",
            "/users/{user}/kick",
            "/users/{user}/move",
            "/reload",
            "/upgrade",
            "/cluster",
        ];
        for path in routed {
            assert!(paths.contains_key(path), "{path} is documented");
        }
        assert_eq!(paths.len(), routed.len());
    }

    #[test]
    fn the_status_page_is_self_contained() {
        // The SVG namespace is a name, not something loaded.
        let page = STATUS_PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for outside in ["http://", "https://", "src=", "<link", "@import"] {
            assert!(!page.contains(outside), "{outside}");
        }
        assert!(!STATUS_PAGE.contains("innerHTML"), "text only into the DOM");
    }
}
