//! The admin API: HTTP with JSON bodies, `/metrics`, the status page and
//! the OpenAPI description, on the control thread (see DESIGN §6 for the
//! contract), over TCP (`admin.listen`) and optionally a Unix socket
//! (`admin.socket`). [`access`] decides who may ask.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

use crate::config::AdminConfig;
use crate::control::state::Control;
use crate::io::{ReadSide, WriteSide};

pub mod access;
pub mod api;
pub mod bind;
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

/// Serves the admin API on the listeners until the runtime stops.
pub fn spawn_servers(control: Rc<Control>, listeners: AdminListeners) {
    let access = Rc::new(Rules {
        made_from: RefCell::new((
            control.shared().config.admin.clone(),
            Rc::new(listeners.access),
        )),
    });
    match TcpListener::from_std(listeners.tcp) {
        Ok(l) => {
            monoio::spawn(serve_tcp(control.clone(), access.clone(), l));
        }
        Err(e) => warn!(error = %e, "admin API unavailable over TCP"),
    }
    if let Some((unix, path)) = listeners.unix {
        match UnixListener::from_std(unix) {
            Ok(l) => {
                monoio::spawn(serve_unix(control, access, l));
            }
            Err(e) => {
                warn!(error = %e, path = %path.display(), "admin API unavailable on its socket")
            }
        }
    }
}

/// Accepts TCP admin connections forever, one task per connection.
async fn serve_tcp(control: Rc<Control>, access: Rc<Rules>, listener: TcpListener) {
    loop {
        match listener.accept().await {
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
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts Unix socket admin connections forever, one task per connection.
async fn serve_unix(control: Rc<Control>, access: Rc<Rules>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(handle(
                    control.clone(),
                    access.clone(),
                    stream,
                    Transport::Unix,
                    "unix".to_string(),
                ));
            }
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
