//! tmp
use std::net::SocketAddr;
use std::rc::Rc;
pub(crate) async fn serve(_c: monoio::net::TcpStream, _p: SocketAddr, _x: Rc<super::server::BackendContext>) {}
