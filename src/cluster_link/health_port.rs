//! This director's own health verdicts, from the control plane to the
//! cluster thread, which publishes them (`health/{B}/{D}`) for the
//! majority verdict.
//!
//! The control plane reports the whole map (backend name → up) whenever
//! its backend state changes; the cluster thread keeps only the latest.
//! Up means "not every checked port fails" (a backend that only some
//! protocols fail on still holds its users).

use std::collections::BTreeMap;

/// The channel of this director's verdicts.
#[derive(Debug)]
pub struct HealthPort {
    tx: flume::Sender<BTreeMap<String, bool>>,
    rx: flume::Receiver<BTreeMap<String, bool>>,
}

impl Default for HealthPort {
    fn default() -> Self {
        let (tx, rx) = flume::unbounded();
        HealthPort { tx, rx }
    }
}

impl HealthPort {
    /// Reports every backend's verdict of this director.
    pub fn report(&self, verdicts: BTreeMap<String, bool>) {
        let _ = self.tx.send(verdicts);
    }

    /// The latest report not yet taken, if any (earlier ones are dropped).
    pub fn latest(&self) -> Option<BTreeMap<String, bool>> {
        self.rx.try_iter().last()
    }

    /// The cluster thread's end, to await the next report.
    pub fn reports(&self) -> flume::Receiver<BTreeMap<String, bool>> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_report_counts() {
        let port = HealthPort::default();
        assert_eq!(port.latest(), None);
        port.report([("b1".to_string(), true)].into_iter().collect());
        port.report([("b1".to_string(), false)].into_iter().collect());
        assert!(!port.latest().unwrap()["b1"]);
        assert_eq!(port.latest(), None);
    }
}
