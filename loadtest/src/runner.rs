//! Client threads and the monitor that watches them.
//!
//! Each client thread runs its own monoio io_uring runtime (thread per
//! core, like the director), pinned to a core from the top of the machine
//! down so the director's cores (from 0 up) are left alone when there are
//! enough. The calling thread meanwhile samples the shared counters, the
//! backends' live-session registry and the director's process every tick
//! into a [`Timeline`], drives a progress bar, and fires scheduled events
//! (the failover kill).

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::harness::Harness;
use crate::timeline::{Sample, Timeline};

/// Name prefix of the client threads (their CPU time is read by name).
pub const CLIENT_THREAD_PREFIX: &str = "lt-client";

/// Starts `threads` client threads; thread `i` runs `make(i)` to completion
/// on its own runtime.
pub fn spawn_clients<R, F, Fut>(threads: usize, make: F) -> Vec<JoinHandle<Option<(R, Duration)>>>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + 'static,
{
    spawn_runtimes(CLIENT_THREAD_PREFIX, threads, true, make)
}

/// Starts `threads` threads named `prefix` and their number, each with its
/// own runtime; thread `i` runs `make(i)` to completion. With `pin`, they
/// are pinned from the highest core down; without, the kernel places them
/// (load that must not share a core with the measured clients).
pub fn spawn_runtimes<R, F, Fut>(
    prefix: &'static str,
    threads: usize,
    pin: bool,
    make: F,
) -> Vec<JoinHandle<Option<(R, Duration)>>>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + 'static,
{
    let make = Arc::new(make);
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    (0..threads)
        .filter_map(|i| {
            let make = make.clone();
            let core = cores.iter().rev().cycle().nth(i).copied();
            std::thread::Builder::new()
                .name(format!("{prefix}{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .with_entries(4096)
                        .enable_timer()
                        .build()
                        .map_err(|e| eprintln!("client thread {i}: no io_uring runtime: {e}"))
                        .ok()?;
                    let result = rt.block_on(make(i));
                    Some((result, crate::procstat::this_thread_cpu()))
                })
                .map_err(|e| eprintln!("cannot start client thread {i}: {e}"))
                .ok()
        })
        .collect()
}

/// Joins client threads: the results of those that ran, and the CPU time
/// all of them used.
pub fn join<R>(handles: Vec<JoinHandle<Option<(R, Duration)>>>) -> (Vec<R>, Duration) {
    let mut cpu = Duration::ZERO;
    let results = handles
        .into_iter()
        .filter_map(|h| h.join().ok().flatten())
        .map(|(r, c)| {
            cpu += c;
            r
        })
        .collect();
    (results, cpu)
}

/// How the monitor shows progress.
pub enum Progress {
    /// Towards a known duration.
    Duration(Duration),
    /// Towards a count of successes (e.g. sessions established).
    Count(u64),
}

/// Something to do at a moment of the run: returns the label of the event
/// for the timeline when it fired.
pub type Event<'a> = (Duration, Box<dyn FnOnce() -> String + 'a>);

/// How often the monitor samples.
pub const TICK: Duration = Duration::from_millis(250);

/// Samples until `done()` says so, firing `events` on time, and returns
/// the timeline.
pub fn monitor<'a>(
    harness: &Harness,
    label: &str,
    progress: Progress,
    mut events: Vec<Event<'a>>,
    mut done: impl FnMut(&Timeline) -> bool,
) -> Timeline {
    let bar = match progress {
        Progress::Duration(d) => ProgressBar::new(d.as_secs().max(1)),
        Progress::Count(n) => ProgressBar::new(n),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    events.sort_by_key(|(at, _)| *at);
    let mut events = events.into_iter().peekable();
    let start = Instant::now();
    let mut timeline = Timeline::new(harness.backend_names());
    let mut last = harness.observe(start);
    timeline.push(Sample::between(&last, &last));
    let mut next_tick = start + TICK;
    loop {
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        }
        next_tick += TICK;
        while let Some((at, _)) = events.peek() {
            if start.elapsed() < *at {
                break;
            }
            if let Some((_, fire)) = events.next() {
                let label = fire();
                timeline.mark(start.elapsed().as_secs_f64(), label);
            }
        }
        let obs = harness.observe(start);
        timeline.push(Sample::between(&last, &obs));
        last = obs;
        match progress {
            Progress::Duration(_) => bar.set_position(start.elapsed().as_secs()),
            Progress::Count(_) => bar.set_position(last.ok),
        }
        bar.set_message(format!(
            "ok {} err {} open {}",
            last.ok, last.errors, last.active
        ));
        if done(&timeline) {
            break;
        }
    }
    bar.finish_and_clear();
    timeline
}
