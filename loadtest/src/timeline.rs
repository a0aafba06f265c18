//! The run as a function of time: rates and levels sampled every tick, and
//! marked events (a backend killed). Feeds the JSON report and the SVG.

use serde::Serialize;

/// Raw readings at one instant (cumulative counters).
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Seconds since the run started.
    pub t: f64,
    /// Successes so far.
    pub ok: u64,
    /// Failures so far.
    pub errors: u64,
    /// Client sessions open.
    pub active: u64,
    /// Payload bytes received so far.
    pub bytes: u64,
    /// Live authenticated sessions per backend (registry).
    pub per_backend: Vec<usize>,
    /// Director resident memory, bytes (0 when unknown).
    pub rss_bytes: u64,
    /// Director CPU seconds so far.
    pub director_cpu_s: f64,
}

/// One tick of the timeline: rates over the tick, levels at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started (end of the tick).
    pub t: f64,
    /// Successes per second over the tick.
    pub ok_per_s: f64,
    /// Failures per second over the tick.
    pub errors_per_s: f64,
    /// Failures in the tick.
    pub errors: u64,
    /// Client sessions open.
    pub active: u64,
    /// Payload bytes per second.
    pub bytes_per_s: f64,
    /// Live sessions per backend, in [`Timeline::backends`] order.
    pub per_backend: Vec<usize>,
    /// Director RSS, bytes.
    pub rss_bytes: u64,
    /// Director CPU use over the tick, in cores.
    pub director_cores_busy: f64,
}

impl Sample {
    /// The tick from `prev` to `cur`.
    pub fn between(prev: &Observation, cur: &Observation) -> Sample {
        let dt = cur.t - prev.t;
        let rate = |a: u64, b: u64| {
            if dt > 0.0 {
                b.saturating_sub(a) as f64 / dt
            } else {
                0.0
            }
        };
        Sample {
            t: cur.t,
            ok_per_s: rate(prev.ok, cur.ok),
            errors_per_s: rate(prev.errors, cur.errors),
            errors: cur.errors.saturating_sub(prev.errors),
            active: cur.active,
            bytes_per_s: rate(prev.bytes, cur.bytes),
            per_backend: cur.per_backend.clone(),
            rss_bytes: cur.rss_bytes,
            director_cores_busy: if dt > 0.0 {
                (cur.director_cpu_s - prev.director_cpu_s) / dt
            } else {
                0.0
            },
        }
    }
}

/// A marked moment.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    /// Seconds since the run started.
    pub t: f64,
    /// What happened.
    pub label: String,
}

/// Samples and marks of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// The backends' names, the order of [`Sample::per_backend`].
    pub backends: Vec<String>,
    /// One sample per tick.
    pub samples: Vec<Sample>,
    /// Marked events.
    pub marks: Vec<Mark>,
}

impl Timeline {
    /// An empty timeline over these backends.
    pub fn new(backends: Vec<String>) -> Timeline {
        Timeline {
            backends,
            ..Timeline::default()
        }
    }

    /// Appends a sample.
    pub fn push(&mut self, s: Sample) {
        self.samples.push(s);
    }

    /// Marks an event.
    pub fn mark(&mut self, t: f64, label: String) {
        self.marks.push(Mark { t, label });
    }

    /// The latest sample.
    pub fn last(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// Appends another timeline, shifting its times to follow this one.
    pub fn append(&mut self, other: Timeline) {
        let offset = self.last().map(|s| s.t).unwrap_or(0.0);
        self.samples.extend(other.samples.into_iter().map(|mut s| {
            s.t += offset;
            s
        }));
        self.marks.extend(other.marks.into_iter().map(|mut m| {
            m.t += offset;
            m
        }));
    }
}
