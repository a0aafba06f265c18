//! LMTP deliveries into the held users' INBOXes through the director: a
//! steady stream while users move (the "backend receiving deliveries"
//! variant), and one message for each user at the end, which every
//! session still idling must then see as `* n EXISTS`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::super::{message, Rng};
use crate::client::conn::{Endpoint, Transport};
use crate::client::lmtp::{DataBody, LmtpClient};
use crate::client::tls::client_config;
use crate::runner::spawn_runtimes;

/// Size of each delivered message, bytes.
const MESSAGE_SIZE: usize = 1024;
/// Bound on one LMTP connection set-up or transaction.
const LMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Sender of every delivery.
const FROM: &str = "loadtest@example.org";

/// Deliveries made and refused.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Delivered {
    /// Recipients the backend accepted after DATA.
    pub ok: u64,
    /// Recipients refused, or lost with a failed connection.
    pub failed: u64,
}

/// Runs `job` on a client runtime of its own (not pinned: it must not
/// share a core with anything measured).
fn on_runtime<F, Fut>(name: &'static str, job: F) -> JoinHandle<Option<(Delivered, Duration)>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Delivered> + 'static,
{
    let job = Mutex::new(Some(job));
    spawn_runtimes(name, 1, false, move |_| {
        let job = job.lock().ok().and_then(|mut j| j.take());
        async move {
            match job {
                Some(job) => job().await,
                None => Delivered::default(),
            }
        }
    })
    .pop()
    .unwrap_or_else(|| std::thread::spawn(|| None))
}

/// Delivers one message to each recipient in `users`, one transaction
/// each, over one LMTP connection to `lmtp` (reconnecting after a failed
/// one).
async fn deliver_each(lmtp: SocketAddr, users: Vec<String>) -> Delivered {
    let tls = client_config(false);
    let endpoint = Endpoint {
        addr: lmtp,
        transport: Transport::Plain,
    };
    let body = DataBody::new(&message(MESSAGE_SIZE));
    let mut done = Delivered::default();
    let mut client: Option<LmtpClient> = None;
    for user in users {
        if client.is_none() {
            client = monoio::time::timeout(LMTP_TIMEOUT, LmtpClient::connect(endpoint, &tls))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = client.as_mut() else {
            done.failed += 1;
            continue;
        };
        let sent = monoio::time::timeout(
            LMTP_TIMEOUT,
            c.send(FROM, std::slice::from_ref(&user), &body),
        )
        .await;
        match sent {
            Ok(Ok(outcomes)) if outcomes.iter().all(|o| o.delivered()) => done.ok += 1,
            Ok(Ok(_)) => done.failed += 1,
            Ok(Err(_)) | Err(_) => {
                done.failed += 1;
                client = None;
            }
        }
    }
    if let Some(c) = client {
        let _ = monoio::time::timeout(LMTP_TIMEOUT, c.quit()).await;
    }
    done
}

/// Delivers one message to each of `users` through the director's LMTP
/// listener `lmtp`, and waits for it.
pub fn deliver_to_each(lmtp: SocketAddr, users: Vec<String>) -> Delivered {
    let handle = on_runtime("lt-deliver", move || deliver_each(lmtp, users));
    handle
        .join()
        .ok()
        .flatten()
        .map(|(d, _)| d)
        .unwrap_or_default()
}

/// A stream of deliveries at `rate` per second to users picked at random
/// from `users`, until `stop`.
pub fn stream(
    lmtp: SocketAddr,
    users: Vec<String>,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Option<(Delivered, Duration)>> {
    on_runtime("lt-stream", move || async move {
        let mut rng = Rng::new(0x11fe);
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let start = Instant::now();
        let mut total = Delivered::default();
        let mut sent = 0u32;
        while !stop.load(Ordering::Acquire) && !users.is_empty() {
            let pick = rng.below(users.len() as u64) as usize;
            let d = deliver_each(lmtp, vec![users[pick].clone()]).await;
            total.ok += d.ok;
            total.failed += d.failed;
            sent += 1;
            let due = start + gap * sent;
            let now = Instant::now();
            if due > now {
                monoio::time::sleep(due - now).await;
            }
        }
        total
    })
}
