//! The admin API: HTTP with JSON bodies and `/metrics`, on the control
//! thread (see DESIGN §6 for the contract).

use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpListener;
use tracing::{debug, warn};

use crate::control::state::Control;

pub mod api;
pub mod http;
pub mod metrics;
pub mod time;

/// How long an admin client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts admin connections forever, one task per connection.
pub async fn serve(control: Rc<Control>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                monoio::spawn(handle(control.clone(), stream, peer));
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    control: Rc<Control>,
    mut stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let resp = match monoio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut stream)).await {
        Ok(Ok(req)) => {
            debug!(%peer, method = %req.method, path = %req.path, "admin request");
            api::route(&control, &req).await
        }
        Ok(Err(http::ReadError::Malformed(m))) => http::Response::error(400, m),
        Ok(Err(http::ReadError::Io(_))) | Err(_) => return,
    };
    let _ = http::write_response(&mut stream, &resp).await;
    let _ = crate::io::WriteSide::shutdown(&mut stream).await;
}
