//! What the kernel says about a process: resident memory and CPU time,
//! read from `/proc`, for one process or a process and all its descendants
//! (nginx and Dovecot run as several processes).

use std::fs;
use std::time::Duration;

/// Memory and CPU of a process (tree) at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size, bytes (VmRSS summed over the tree).
    pub rss_bytes: u64,
    /// User + system CPU time consumed so far, summed over the tree.
    pub cpu: Duration,
}

/// Reads VmRSS of one process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// CPU time (user + system) of one process.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let f = stat_fields(pid)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let ticks = clock_ticks_per_second();
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// `pid` and every live descendant of it.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, parent_of(p)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// Samples `pid` alone, or with all its descendants when `tree` is set.
pub fn sample(pid: u32, tree: bool) -> ProcSample {
    let pids = if tree { process_tree(pid) } else { vec![pid] };
    pids.into_iter()
        .fold(ProcSample::default(), |acc, p| ProcSample {
            rss_bytes: acc.rss_bytes + rss_bytes(p).unwrap_or(0),
            cpu: acc.cpu + cpu_time(p).unwrap_or_default(),
        })
}

/// CPU time used so far by this process's threads whose name starts with
/// `prefix` (the client threads, or the dev backends' thread).
pub fn own_threads_cpu(prefix: &str) -> Duration {
    let ticks = clock_ticks_per_second();
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = Duration::ZERO;
    for task in dir.filter_map(|e| e.ok()) {
        let path = task.path();
        let name = fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += Duration::from_micros((utime + stime) * 1_000_000 / ticks);
    }
    total
}

/// CPU time (user + system) the calling thread has used.
pub fn this_thread_cpu() -> Duration {
    // SAFETY: getrusage writes the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Raises the soft open-file limit to the hard one (20000 here), so
/// thousands of sessions fit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_memory_and_is_in_its_tree() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap_or(0) > 0);
        assert!(process_tree(me).contains(&me));
        // RSS moves between two samples, so compare nothing across time:
        // the tree sample must count this process at least.
        assert!(sample(me, true).rss_bytes > 0);
    }
}
