//! The admin API's endpoints (the contract in DESIGN §6).
//!
//! Unknown backend or user → 404, malformed request → 400, wrong method →
//! 405, each with `{"error": "..."}`. User names in paths are
//! percent-decoded and normalised with `server.user_key`, exactly as a
//! login would be.

use serde_json::{json, Value};

use crate::admin::http::{Request, Response};
use crate::admin::metrics::render_metrics;
use crate::admin::time::rfc3339;
use crate::config::Protocol;
use crate::control::state::Control;
use crate::route::backends::{AdminState, Backend, BackendId};
use crate::route::router::Reassign;

/// Answers one request.
pub async fn route(control: &Control, req: &Request) -> Response {
    let Some(segments) = req.segments() else {
        return Response::error(400, "bad percent-encoding in the path");
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method.as_str();
    match (method, segs.as_slice()) {
        ("GET", ["status"]) => status(control).await,
        ("GET", ["backends"]) => backends(control).await,
        ("POST", ["backends", name, action]) => backend_action(control, name, action).await,
        ("GET", ["users", user]) => user_info(control, user).await,
        ("POST", ["users", user, "kick"]) => kick(control, user).await,
        ("POST", ["users", user, "move"]) => move_user(control, user, req.param("to")).await,
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(control).await.into_bytes(),
        },
        (_, ["status"] | ["backends"] | ["metrics"] | ["users", _]) => {
            Response::error(405, format!("{method} is not allowed here"))
        }
        (_, ["backends", _, _] | ["users", _, "kick" | "move"]) => {
            Response::error(405, format!("{method} is not allowed here, use POST"))
        }
        _ => Response::error(
            404,
            format!("no such endpoint: {} {}", req.method, req.path),
        ),
    }
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
        }),
    )
}

fn admin_str(s: AdminState) -> &'static str {
    match s {
        AdminState::Up => "up",
        AdminState::Down => "down",
        AdminState::Drain => "drain",
    }
}

async fn backends(control: &Control) -> Response {
    let stats = control.stats().await;
    let set = control.backends();
    let rows: Vec<Value> = set
        .backends
        .iter()
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
        "admin": admin_str(b.admin),
        "health": b.health().as_str(),
        "protocols": protocols_json(b),
        "routable": b.routable(),
        "sessions": sessions,
        "users": users,
    });
    if let Some(e) = control.last_error(b.id) {
        v["last_error"] = Value::String(e);
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
    match action {
        "up" => {
            control.set_admin(id, AdminState::Up).await;
        }
        "down" => {
            if !control.set_admin(id, AdminState::Down).await {
                return Response::error(
                    503,
                    format!("{name} is down, but some of its sessions did not close in time"),
                );
            }
        }
        "drain" => {
            control.set_admin(id, AdminState::Drain).await;
        }
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
    }
    let set = control.backends();
    match set.get(id) {
        Some(b) => Response::json(200, &backend_json(control, b, 0, 0)),
        None => Response::error(404, format!("no backend named {name:?}")),
    }
}

fn key_of(control: &Control, user: &str) -> Result<String, Response> {
    if user.is_empty() || user.len() > 512 || user.chars().any(char::is_control) {
        return Err(Response::error(
            400,
            "a user name must be 1 to 512 printable characters",
        ));
    }
    Ok(control.shared.user_key.key(user))
}

async fn user_info(control: &Control, user: &str) -> Response {
    let key = match key_of(control, user) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(a) = control.lookup(&key).await else {
        return Response::error(404, format!("user {user:?} has no assignment"));
    };
    let set = control.backends();
    let backend = set
        .get(a.backend)
        .map(|b| b.name.to_string())
        .unwrap_or_default();
    Response::json(
        200,
        &json!({
            "user": user,
            "key": key,
            "backend": backend,
            "sessions": a.sessions,
            "since": rfc3339(a.since),
        }),
    )
}

async fn kick(control: &Control, user: &str) -> Response {
    let key = match key_of(control, user) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let kicked = control.kick_user(&key).await;
    Response::json(200, &json!({ "user": user, "key": key, "kicked": kicked }))
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
