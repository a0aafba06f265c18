//! The admin API: HTTP with JSON bodies, `/metrics`, the status page and
//! the OpenAPI description, on the control thread (see DESIGN §6 for the
//! contract), over TCP (`admin.listen`) and optionally a Unix socket
//! (`admin.socket`). [`access`] decides who may ask.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

use crate::config::AdminConfig;
use crate::control::state::Control;
use crate::io::{ReadSide, WriteSide};

pub mod access;
pub mod api;
pub mod bind;
pub mod cluster_actions;
pub mod http;
pub mod metrics;
pub mod time;

use access::{Access, Transport};

/// How long an admin client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin API's bound sockets and rules, handed to the control thread.
pub struct AdminListeners {
    /// `admin.listen`.
    pub tcp: std::net::TcpListener,
    /// `admin.socket` and its path, if configured.
    pub unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    /// Who may ask over TCP.
    pub access: Access,
}

/// The access rules in force and the `[admin]` settings they were made
/// from: a reload that changes those settings (token, names, ...) gets new
/// rules at the next request.
struct Rules {
    made_from: RefCell<(AdminConfig, Rc<Access>)>,
}

impl Rules {
    /// The rules for `admin` (the settings in force now).
    fn current(&self, admin: &AdminConfig) -> Rc<Access> {
        let mut made = self.made_from.borrow_mut();
        if made.0 != *admin {
            match Access::from_config(admin) {
                Ok(access) => *made = (admin.clone(), Rc::new(access)),
                Err(e) => warn!(error = %e, "admin access rules not changed"),
            }
        }
        made.1.clone()
    }
}

/// Stops the admin API's accept loops: after a binary upgrade the new
/// process accepts on the same sockets, so the old one must stop taking
/// requests (the ones it already took are answered).
pub struct AdminStop {
    stopped: Rc<std::cell::Cell<bool>>,
    canceller: Canceller,
}

impl AdminStop {
    /// Cancels the pending accepts; the loops end and drop their copies
    /// of the sockets.
    pub fn stop(self) {
        self.stopped.set(true);
        let _ = self.canceller.cancel();
    }
}

/// Serves the admin API on the listeners until the runtime stops or the
/// returned [`AdminStop`] is used.
pub fn spawn_servers(control: Rc<Control>, listeners: AdminListeners) -> AdminStop {
    let stop = AdminStop {
        stopped: Rc::new(std::cell::Cell::new(false)),
        canceller: Canceller::new(),
    };
    let until = |stop: &AdminStop| (stop.stopped.clone(), stop.canceller.handle());
    let access = Rc::new(Rules {
        made_from: RefCell::new((
            control.shared().config.admin.clone(),
            Rc::new(listeners.access),
        )),
    });
    match TcpListener::from_std(listeners.tcp) {
        Ok(l) => {
            monoio::spawn(serve_tcp(control.clone(), access.clone(), l, until(&stop)));
        }
        Err(e) => warn!(error = %e, "admin API unavailable over TCP"),
    }
    if let Some((unix, path)) = listeners.unix {
        match UnixListener::from_std(unix) {
            Ok(l) => {
                monoio::spawn(serve_unix(control, access, l, until(&stop)));
            }
            Err(e) => {
                warn!(error = %e, path = %path.display(), "admin API unavailable on its socket")
            }
        }
    }
    stop
}

/// Whether an accept loop was stopped, and the handle that cancels its
/// pending accept.
type Until = (Rc<std::cell::Cell<bool>>, CancelHandle);

/// Accepts TCP admin connections until stopped, one task per connection.
async fn serve_tcp(control: Rc<Control>, access: Rc<Rules>, listener: TcpListener, until: Until) {
    let (stopped, cancel) = until;
    while !stopped.get() {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                let peer = peer.to_string();
                monoio::spawn(handle(
                    control.clone(),
                    access.clone(),
                    stream,
                    Transport::Tcp { local },
                    peer,
                ));
            }
            Err(_) if stopped.get() => break,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts Unix socket admin connections until stopped, one task per
/// connection.
async fn serve_unix(control: Rc<Control>, access: Rc<Rules>, listener: UnixListener, until: Until) {
    let (stopped, cancel) = until;
    while !stopped.get() {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, _)) => {
                monoio::spawn(handle(
                    control.clone(),
                    access.clone(),
                    stream,
                    Transport::Unix,
                    "unix".to_string(),
                ));
            }
            Err(_) if stopped.get() => break,
            Err(e) => {
                warn!(error = %e, "admin accept failed on the socket");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle<S: ReadSide + WriteSide>(
    control: Rc<Control>,
    access: Rc<Rules>,
    mut stream: S,
    transport: Transport,
    peer: String,
) {
    let resp = match monoio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut stream)).await {
        Ok(Ok(req)) => {
            debug!(%peer, method = %req.method, path = %req.path, "admin request");
            let access = access.current(&control.shared().config.admin);
            match access.check(&req, transport) {
                Ok(()) => api::route(&control, &req).await,
                Err(refusal) => {
                    debug!(%peer, status = refusal.status, "admin request refused");
                    refusal
                }
            }
        }
        Ok(Err(http::ReadError::Malformed(m))) => http::Response::error(400, m),
        Ok(Err(http::ReadError::Io(_))) | Err(_) => return,
    };
    let _ = http::write_response(&mut stream, &resp).await;
    let _ = WriteSide::shutdown(&mut stream).await;
}
