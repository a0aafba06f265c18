//! Planning a configuration reload: what a newly read configuration changes
//! against the one in force, and whether it may change it at all.
//!
//! Everything here is pure: [`plan`] compares the configuration in force,
//! the current backend snapshot and the bound listeners with a new,
//! validated configuration, and returns either every reason the reload is
//! refused or a [`ReloadPlan`]: the new process-wide settings, the next
//! backend snapshot (added backends get new ids, removed ones start to
//! drain, ids never change), the listener changes and a line per change for
//! the log and the API. The control plane applies the plan
//! (`Control::reload`).
//!
//! Settings that cannot change while sessions run are refused with the
//! advice to restart: `server.cores` and `server.driver` (the cores and
//! their runtimes exist once), `server.user_key` (every live session is
//! counted under its key: a new format would let a user's new sessions
//! land beside its old ones), `admin.listen`, `log.format` (the log is
//! set up once) and `[cluster]`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, Listen, Protocol};
use crate::limits::Limits;
use crate::plane::Shared;
use crate::prepare::{backend_set, tls_config};
use crate::route::backends::{Backend, BackendId, BackendSet, Lifecycle};
use crate::route::user_key::UserKeyFormat;

/// A listener as configured, and the address it is bound to (a configured
/// port 0 becomes the port the kernel chose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundListener {
    /// The `[[listen]]` block as written.
    pub configured: Listen,
    /// Where it listens.
    pub bound: SocketAddr,
}

/// What a reload does to the listeners.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListenerChanges {
    /// New `[[listen]]` blocks: to bind on every core.
    pub add: Vec<Listen>,
    /// Blocks whose address stays but whose settings change: the sockets
    /// stay open (no connection is refused), new connections get the new
    /// settings. Each with `addr` set to the bound address.
    pub update: Vec<Listen>,
    /// Bound addresses no longer configured: stop accepting, close.
    pub remove: Vec<SocketAddr>,
}

/// A reload that may go ahead.
pub struct ReloadPlan {
    /// The settings in force from now on.
    pub shared: Arc<Shared>,
    /// The next backend snapshot (version not yet bumped).
    pub backends: Vec<Backend>,
    /// Backends the new configuration no longer has: they drain.
    pub removed: Vec<BackendId>,
    /// What happens to the listeners.
    pub listeners: ListenerChanges,
    /// One line per change, for the log and the API.
    pub changes: Vec<String>,
}

/// Compares `new` with what is in force; see the module documentation.
pub fn plan(
    old: &Shared,
    old_set: &BackendSet,
    listeners: &[BoundListener],
    new: Config,
) -> Result<ReloadPlan, Vec<String>> {
    let mut errors = Vec::new();
    let mut changes = Vec::new();
    let restart = |key: &str, old: String, new: String| {
        format!("{key} cannot change on reload ({old} -> {new}): restart mailpin for that")
    };
    let (o, n) = (&old.config, &new);
    if o.server.cores != n.server.cores {
        errors.push(restart(
            "server.cores",
            o.server.cores.to_string(),
            n.server.cores.to_string(),
        ));
    }
    if o.server.driver != n.server.driver {
        errors.push(restart(
            "server.driver",
            format!("{:?}", o.server.driver),
            format!("{:?}", n.server.driver),
        ));
    }
    if o.server.user_key != n.server.user_key {
        errors.push(restart(
            "server.user_key",
            format!("{:?}", o.server.user_key),
            format!("{:?}", n.server.user_key),
        ));
    }
    if o.admin.listen != n.admin.listen {
        errors.push(restart(
            "admin.listen",
            o.admin.listen.to_string(),
            n.admin.listen.to_string(),
        ));
    }
    if o.log != n.log {
        errors.push(restart(
            "log.format",
            format!("{:?}", o.log.format),
            format!("{:?}", n.log.format),
        ));
    }
    if o.cluster != n.cluster {
        errors.push("[cluster] cannot change on reload: restart mailpin for that".into());
    }
    let user_key =
        UserKeyFormat::parse(&n.server.user_key).map_err(|e| format!("server.user_key: {e}"));
    let tls = tls_config(n).map_err(|e| e.to_string());
    let fresh = backend_set(n).map_err(|e| e.to_string());
    let (user_key, tls, fresh) = match (user_key, tls, fresh) {
        (Ok(u), Ok(t), Ok(f)) => (u, t, f),
        (u, t, f) => {
            errors.extend(u.err());
            errors.extend(t.err());
            errors.extend(f.err());
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    // Settings read by new connections and the checks: each changed line
    // of a section's description is one change.
    changes.extend(section_changes(
        "server",
        &format!("{:#?}", o.server),
        &format!("{:#?}", n.server),
    ));
    changes.extend(section_changes(
        "health",
        &format!("{:#?}", o.health),
        &format!("{:#?}", n.health),
    ));
    changes.extend(section_changes(
        "limits",
        &format!("{:#?}", o.limits),
        &format!("{:#?}", n.limits),
    ));
    changes.extend(section_changes(
        "admin",
        &format!("{:#?}", o.admin),
        &format!("{:#?}", n.admin),
    ));
    if tls.is_some() {
        changes.push("tls: certificate and key re-read".into());
    }

    let (backends, removed) = merge_backends(old_set, fresh, &mut changes);
    let listeners = listener_changes(listeners, &n.listen, &mut changes);
    // The limit counters go on unless their settings or the backend
    // count changed (then new connections count afresh; the ones already
    // counted leave the counters they entered).
    let limits = if o.limits == n.limits && old_set.backends.len() == backends.len() {
        old.limits.clone()
    } else {
        Arc::new(Limits::new(&n.limits, backends.len()))
    };

    Ok(ReloadPlan {
        shared: Arc::new(Shared {
            config: new,
            user_key,
            tls,
            limits,
            cluster: old.cluster.clone(),
        }),
        backends,
        removed,
        listeners,
        changes,
    })
}

/// The fields of a section whose value differs, as `section.field: old ->
/// new`, from the section's pretty-printed description (one top-level
/// field per group of lines; a nested value is shown on one line).
/// Secrets print redacted.
fn section_changes(section: &str, old: &str, new: &str) -> Vec<String> {
    if old == new {
        return Vec::new();
    }
    let (old, new) = (fields(old), fields(new));
    let mut out = Vec::new();
    for (name, value) in &new {
        let before = old.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        if before != Some(value.as_str()) {
            out.push(format!(
                "{section}.{name}: {} -> {value}",
                before.unwrap_or("(none)")
            ));
        }
    }
    out
}

/// The top-level `name: value` fields of a `{:#?}` description, each value
/// with its nested lines joined by spaces.
fn fields(pretty: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in pretty.lines() {
        let depth = line.len() - line.trim_start().len();
        let text = line.trim().trim_end_matches(',');
        if depth == 4 {
            if let Some((name, value)) = text.split_once(": ") {
                out.push((name.to_string(), value.to_string()));
                continue;
            }
        }
        if depth > 4 {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(text);
            }
        }
    }
    out
}

/// The next backends: configured ones keep their id, state and health and
/// take the new address, weight and settings; new names get new ids;
/// names no longer configured start to drain (`Lifecycle::Removed`).
fn merge_backends(
    old: &BackendSet,
    fresh: BackendSet,
    changes: &mut Vec<String>,
) -> (Vec<Backend>, Vec<BackendId>) {
    let mut next = old.backends.clone();
    let mut seen = vec![false; next.len()];
    for f in fresh.backends {
        match next.iter().position(|b| b.name == f.name) {
            Some(i) => {
                seen[i] = true;
                let b = &mut next[i];
                if b.lifecycle != Lifecycle::Active {
                    changes.push(format!("backend {}: configured again", b.name));
                    b.lifecycle = Lifecycle::Active;
                }
                if b.weight != f.weight {
                    changes.push(format!(
                        "backend {}: weight {} -> {}",
                        b.name, b.weight, f.weight
                    ));
                    b.set_weight(f.weight);
                }
                if b.addrs != f.addrs || b.host != f.host {
                    changes.push(format!("backend {}: host {} -> {}", b.name, b.host, f.host));
                    b.host = f.host.clone();
                    b.addrs = f.addrs;
                }
                if b.forward != f.forward || b.connect_timeout != f.connect_timeout {
                    changes.push(format!("backend {}: forward or connect_timeout", b.name));
                    b.forward = f.forward;
                    b.connect_timeout = f.connect_timeout;
                }
                for p in Protocol::ALL {
                    let checked = f.protocol_health(p).is_some();
                    let was = b.protocol_health(p);
                    if checked && was.is_none() {
                        b.protocols[p.index()] = f.protocols[p.index()];
                    } else if !checked && was.is_some() {
                        b.protocols[p.index()] = None;
                    }
                }
            }
            None => {
                let Ok(id) = BackendId::try_from(next.len()) else {
                    continue;
                };
                changes.push(format!("backend {}: added ({})", f.name, f.host));
                let mut b = f;
                b.id = id;
                next.push(b);
                seen.push(true);
            }
        }
    }
    let mut removed = Vec::new();
    for (b, seen) in next.iter_mut().zip(seen) {
        if !seen && b.lifecycle == Lifecycle::Active {
            changes.push(format!(
                "backend {}: removed (takes no new users; its sessions drain)",
                b.name
            ));
            b.lifecycle = Lifecycle::Removed;
            removed.push(b.id);
        }
    }
    (next, removed)
}

/// Which listeners to add, update in place and remove. A listener is the
/// same one when its configured address is; for a configured port 0 (the
/// kernel chooses, so several blocks may say `127.0.0.1:0`) its protocol
/// and TLS mode must match too.
fn listener_changes(
    bound: &[BoundListener],
    new: &[Listen],
    changes: &mut Vec<String>,
) -> ListenerChanges {
    let mut out = ListenerChanges::default();
    let mut matched = vec![false; bound.len()];
    let same = |b: &BoundListener, l: &Listen| {
        b.configured.addr == l.addr
            && (l.addr.port() != 0
                || (b.configured.protocol == l.protocol && b.configured.tls == l.tls))
    };
    for l in new {
        let found = (0..bound.len()).find(|&i| !matched[i] && same(&bound[i], l));
        match found {
            Some(i) => {
                matched[i] = true;
                let b = &bound[i];
                if b.configured != *l {
                    changes.push(format!(
                        "listener {} {}: settings changed",
                        l.protocol.as_str(),
                        b.bound
                    ));
                    let mut updated = l.clone();
                    updated.addr = b.bound;
                    out.update.push(updated);
                }
            }
            None => {
                changes.push(format!(
                    "listener {} {}: added",
                    l.protocol.as_str(),
                    l.addr
                ));
                out.add.push(l.clone());
            }
        }
    }
    for (b, matched) in bound.iter().zip(matched) {
        if !matched {
            changes.push(format!(
                "listener {} {}: removed",
                b.configured.protocol.as_str(),
                b.bound
            ));
            out.remove.push(b.bound);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "[server]\ncores = 1\n\n[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\n\n\
        [[backend]]\nname = \"a\"\nhost = \"127.0.0.1\"\n\n[[backend]]\nname = \"b\"\nhost = \"127.0.0.2\"\n";

    fn in_force(text: &str) -> (Shared, BackendSet, Vec<BoundListener>) {
        let c = config(text);
        let set = backend_set(&c).unwrap();
        let bound = c
            .listen
            .iter()
            .map(|l| BoundListener {
                configured: l.clone(),
                bound: "127.0.0.1:40000".parse().unwrap(),
            })
            .collect();
        let shared = Shared {
            user_key: UserKeyFormat::parse(&c.server.user_key).unwrap(),
            tls: None,
            limits: Arc::new(Limits::new(&c.limits, set.backends.len())),
            config: c,
            cluster: None,
        };
        (shared, set, bound)
    }

    #[test]
    fn backends_are_added_reweighted_and_removed_keeping_their_ids() {
        let (old, set, bound) = in_force(BASE);
        let new = BASE
            .replace(
                "name = \"a\"\nhost = \"127.0.0.1\"\n",
                "name = \"a\"\nhost = \"127.0.0.1\"\nweight = 300\n",
            )
            .replace("name = \"b\"", "name = \"c\"");
        let plan = plan(&old, &set, &bound, config(&new)).unwrap_or_else(|e| panic!("{e:?}"));
        let by = |n: &str| plan.backends.iter().find(|b| &*b.name == n).unwrap();
        assert_eq!((by("a").id, by("a").weight), (0, 300));
        assert_eq!((by("b").id, by("b").lifecycle), (1, Lifecycle::Removed));
        assert_eq!((by("c").id, by("c").lifecycle), (2, Lifecycle::Active));
        assert_eq!(plan.removed, vec![1]);
        assert!(
            plan.changes
                .iter()
                .any(|c| c == "backend a: weight 100 -> 300"),
            "{:?}",
            plan.changes
        );
        assert!(plan
            .changes
            .iter()
            .any(|c| c.starts_with("backend c: added")));
        assert!(plan
            .changes
            .iter()
            .any(|c| c.starts_with("backend b: removed")));
    }

    #[test]
    fn settings_and_listeners_changes_are_listed() {
        let (old, set, bound) = in_force(BASE);
        // A second listener on 127.0.0.1:0: port 0 matches by protocol too.
        let new = BASE.replace("cores = 1\n", "cores = 1\nstall_timeout = \"5s\"\n")
            + "\n[[listen]]\nprotocol = \"pop3\"\naddr = \"127.0.0.1:0\"\n";
        let plan = plan(&old, &set, &bound, config(&new)).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            plan.changes
                .iter()
                .any(|c| c == "server.stall_timeout: 60s -> 5s"),
            "{:?}",
            plan.changes
        );
        assert_eq!(plan.listeners.add.len(), 1);
        assert_eq!(plan.listeners.add[0].protocol, Protocol::Pop3);
        assert!(plan.listeners.remove.is_empty() && plan.listeners.update.is_empty());

        let mut no_imap = config(&new);
        no_imap.listen.retain(|l| l.protocol != Protocol::Imap);
        let plan = super::plan(&old, &set, &bound, no_imap).unwrap();
        assert_eq!(
            plan.listeners.remove,
            vec!["127.0.0.1:40000".parse().unwrap()]
        );
    }

    #[test]
    fn a_listener_whose_settings_change_is_updated_in_place() {
        let (old, set, bound) = in_force(BASE);
        let new = BASE.replace(
            "addr = \"127.0.0.1:0\"\n",
            "addr = \"127.0.0.1:0\"\nplaintext_auth = true\n",
        );
        let plan = plan(&old, &set, &bound, config(&new)).unwrap();
        assert_eq!(plan.listeners.update.len(), 1);
        assert!(plan.listeners.update[0].plaintext_auth);
        assert_eq!(plan.listeners.update[0].addr, bound[0].bound);
        assert!(plan.listeners.add.is_empty() && plan.listeners.remove.is_empty());
    }

    #[test]
    fn settings_that_need_a_restart_are_refused_together() {
        let (old, set, bound) = in_force(BASE);
        let new = BASE.replace("cores = 1\n", "cores = 2\nuser_key = \"%Ld\"\n");
        let errors = match plan(&old, &set, &bound, config(&new)) {
            Err(e) => e,
            Ok(_) => panic!("refused"),
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("server.cores cannot change on reload (1 -> 2)"));
        assert!(errors[1].starts_with("server.user_key cannot change on reload"));
    }

    #[test]
    fn a_removed_backend_that_comes_back_is_active_again() {
        let (old, set, bound) = in_force(BASE);
        let set = set.with_change(1, |b| b.lifecycle = Lifecycle::Removed);
        let plan = plan(&old, &set, &bound, config(BASE)).unwrap();
        assert_eq!(plan.backends[1].lifecycle, Lifecycle::Active);
        assert!(plan.removed.is_empty());
    }

    #[test]
    fn nested_values_are_compared_whole() {
        let (old, set, bound) = in_force(BASE);
        let new = format!("[limits]\ntrusted = [\"127.0.0.0/8\"]\n\n{BASE}");
        let plan = plan(&old, &set, &bound, config(&new)).unwrap();
        assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
        assert!(
            plan.changes[0].starts_with("limits.trusted: [] -> ["),
            "{:?}",
            plan.changes
        );
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let (old, set, bound) = in_force(BASE);
        let plan = plan(&old, &set, &bound, config(BASE)).unwrap();
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    }
}
