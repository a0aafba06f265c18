//! What the watch keeps of the state every director shares: backends'
//! admin states (`backends/{B}/admin`), every director's own health
//! verdicts (`health/{B}/{D}`) and the cluster verdicts counted from them,
//! and commands (`cmd/…`, see [`crate::cluster::commands`]).
//!
//! An admin state seen in etcd — from the watch, or read at start and on a
//! resync, so a director that joins later gets every state set before —
//! goes to the control plane at once (`ControlMsg::ClusterAdmin`), which
//! applies it as a local `up`/`down`/`drain` would be.

use etcd_client::{GetOptions, TxnOp};
use tracing::{info, warn};

use crate::cluster::commands;
use crate::cluster::context::{Context, Seen};
use crate::cluster::keys::{decode, unescape, AdminRecord, HealthRecord, KeyKind};
use crate::plane::ControlMsg;
use crate::route::backends::{AdminState, Health};

/// The API spelling of an admin state back to the state.
pub fn admin_state(text: &str) -> Option<AdminState> {
    match text {
        "up" => Some(AdminState::Up),
        "down" => Some(AdminState::Down),
        "drain" => Some(AdminState::Drain),
        _ => None,
    }
}

/// The reads a resync adds to its transaction.
pub fn resync_reads(ctx: &Context) -> Vec<TxnOp> {
    [
        ctx.keys.backends(),
        ctx.keys.health_all(),
        ctx.keys.commands(),
    ]
    .into_iter()
    .map(|prefix| TxnOp::get(prefix, Some(GetOptions::new().with_prefix())))
    .collect()
}

/// Before a resync applies what it read: forget what it replaces.
pub fn resync_begin(seen: &mut Seen) {
    seen.admin.clear();
    seen.health.clear();
    // Commands already carried out are not carried out again: they stay,
    // marked, until the resync has read them (their acks anew).
    for c in seen.commands.values_mut() {
        c.stale = true;
        c.acks.clear();
    }
}

/// A key of this module's kinds changed (`value` `None` for a delete);
/// other kinds are left alone.
pub fn on_key(ctx: &Context, seen: &mut Seen, kind: KeyKind<'_>, value: Option<&[u8]>) {
    match kind {
        KeyKind::BackendAdmin(escaped) => {
            let Some(backend) = unescape(escaped) else {
                return;
            };
            let Some(record) = value.and_then(decode::<AdminRecord>) else {
                seen.admin.remove(&backend);
                return;
            };
            let Some(state) = admin_state(&record.state) else {
                warn!(
                    backend,
                    state = record.state,
                    "unknown admin state in etcd, ignored"
                );
                return;
            };
            if seen.admin.get(&backend) != Some(&record.state) {
                info!(
                    backend,
                    state = record.state,
                    by = record.by,
                    "cluster admin state"
                );
            }
            seen.admin.insert(backend.clone(), record.state);
            if let Some(control) = &ctx.control {
                let _ = control.send(ControlMsg::ClusterAdmin {
                    backend,
                    state,
                    done: None,
                });
            }
        }
        KeyKind::Health { backend, director } => {
            let Some(backend) = unescape(backend) else {
                return;
            };
            match value.and_then(decode::<HealthRecord>) {
                Some(r) => {
                    seen.health
                        .entry(backend)
                        .or_default()
                        .insert(director.to_owned(), r.up);
                }
                None => {
                    if let Some(reports) = seen.health.get_mut(&backend) {
                        reports.remove(director);
                        if reports.is_empty() {
                            seen.health.remove(&backend);
                        }
                    }
                }
            }
        }
        KeyKind::Command(_) | KeyKind::CommandAck { .. } => {
            commands::on_key(ctx, seen, kind, value)
        }
        _ => {}
    }
}

/// After a batch of changes: count the verdicts again (directors may have
/// come or gone too), log the ones that changed, and wake whoever waits
/// for acknowledgements.
pub fn after_changes(ctx: &Context, seen: &mut Seen) {
    seen.commands.retain(|_, c| !c.stale);
    let before = std::mem::take(&mut seen.verdicts);
    seen.recount();
    for (backend, verdict) in &seen.verdicts {
        if before.get(backend) != Some(verdict) {
            match verdict {
                Health::Unhealthy => {
                    warn!(backend, "cluster verdict: down (a majority of directors)")
                }
                Health::Healthy => info!(backend, "cluster verdict: up"),
            }
        }
    }
    ctx.changed.notify_waiters();
}
