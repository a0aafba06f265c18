//! Process facts from `/proc` and signals by PID: which processes a
//! Dovecot master has forked, whether a PID is still alive, and waiting
//! (bounded) for processes to vanish.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// How often the bounded waits below look at `/proc` again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The state letter, parent PID and process group of `pid`, from
/// `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(char, u32, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the fields
    // after the last ')' are "STATE PPID PGRP ...".
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, parent, group))
}

/// The state letter and parent PID of `pid`, from `/proc/PID/stat`.
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    stat_of(pid).map(|(state, parent, _)| (state, parent))
}

/// Every live (not zombie) process of process group `group`, wherever its
/// parent chain leads now (a killed master's children are re-parented).
pub fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            matches!(stat_of(pid), Some((state, _, g)) if g == group && state != 'Z' && state != 'X')
        })
        .collect()
}

/// Sends `signal` to every process of process group `group` at once (one
/// `kill(-group)`); a group that is already gone is not an error.
pub fn signal_group(group: u32, signal: libc::c_int) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    if group <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative PID
    // names a process group, and a vanished group only yields ESRCH.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// Waits until process group `group` has no live member, at most `limit`.
/// Returns the members still alive when the limit passed (empty on
/// success).
pub fn wait_group_gone(group: u32, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let alive = group_members(group);
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// True while `pid` exists and is not a zombie (a zombie holds no sockets
/// and runs no code; its parent just has not reaped it yet).
pub fn pid_alive(pid: u32) -> bool {
    matches!(state_and_parent(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Every live process whose parent chain leads to `root` (children,
/// grandchildren, ...), not including `root` itself.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent_of: Vec<(u32, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (state, parent) = state_and_parent(pid)?;
            (state != 'Z' && state != 'X').then_some((pid, parent))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, _) in parent_of.iter().filter(|(_, ppid)| *ppid == parent) {
            if !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; a stale PID only
    // yields ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits until none of `pids` is alive, at most `limit`. Returns the ones
/// still alive when the limit passed (empty on success).
pub fn wait_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| pid_alive(pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(POLL_INTERVAL);
    }
}
