//! Measures the memory an idle TLS session costs the server.
//!
//! The process runs a monoio (io_uring) server on one thread and starts a
//! copy of itself as the client process, which opens N sessions over
//! loopback, makes one echo round trip on each and reports "ready". Every
//! server session then waits in `readable()`, holding no buffer. The server
//! process reports its RSS growth and its live heap growth (counted by a
//! wrapping global allocator) divided by N.
//!
//! ```text
//! cargo run --release --example tls_idle_memory -- [N] [tls|plain|monoio-rustls]
//! ```
//! `tls` is `mailpin::tls::TlsStream`, `plain` the bare `TcpStream` (the
//! floor: socket, task, readiness wait), `monoio-rustls` its `TlsStream`
//! waiting in a 1 KiB read, for comparison.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailpin::bufpool;
use mailpin::io::{ReadSide, WriteSide};
use mailpin::tls::{self, DevCert, TlsSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Counts live heap bytes on top of the system allocator.
struct CountingAlloc;

static LIVE_HEAP: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        client(
            &args[2],
            &args[3],
            args[4].parse().expect("count"),
            &args[5],
        );
        return;
    }
    let sessions: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(2000);
    let mode = args.get(2).cloned().unwrap_or_else(|| "tls".to_owned());
    server(sessions, &mode);
}

fn server(sessions: usize, mode: &str) {
    let dev = DevCert::generate().expect("dev cert");
    let dir = std::env::temp_dir().join(format!("mailpin-idle-{}", std::process::id()));
    let (cert_path, _) = dev.write_to(&dir).expect("write cert");
    let config = tls::server_config_from_pem(
        dev.cert_pem.as_bytes(),
        dev.key_pem.as_bytes(),
        TlsSettings::default(),
    )
    .expect("config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_mode = mode.to_owned();
    std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .enable_timer()
            .build()
            .expect("io_uring runtime");
        rt.block_on(accept_loop(listener, config, server_mode));
    });

    let heap_before = LIVE_HEAP.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "client",
            &addr.to_string(),
            &cert_path.display().to_string(),
        ])
        .arg(sessions.to_string())
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start client process");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("child stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    assert_eq!(line.trim(), "ready", "client failed");
    let heap_after = LIVE_HEAP.load(Ordering::Relaxed);
    let rss_after = rss_bytes();
    println!(
        "size_of UnbufferedServerConnection={} B (what mailpin's TLS stream holds)",
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>()
    );
    println!(
        "mode={mode} sessions={sessions} rss: {:.1} MiB -> {:.1} MiB, {:.0} B/session; \
         live heap: {:.0} B/session",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        (rss_after - rss_before) as f64 / sessions as f64,
        (heap_after - heap_before) as f64 / sessions as f64,
    );
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn accept_loop(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    mode: String,
) {
    let listener = monoio::net::TcpListener::from_std(listener).expect("listener");
    let acceptor = monoio_rustls::TlsAcceptor::from(config.clone());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        // One spawn per mode, so each task is only as large as its own future.
        match mode.as_str() {
            "plain" => {
                monoio::spawn(async move {
                    let mut tcp = tcp;
                    let _ = echo(&mut tcp).await;
                });
            }
            "monoio-rustls" => {
                let acceptor = acceptor.clone();
                monoio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = echo_monoio_rustls(stream).await;
                    }
                });
            }
            _ => {
                let config = config.clone();
                monoio::spawn(async move {
                    if let Ok(mut stream) = tls::accept(tcp, &config, Duration::from_secs(10)).await
                    {
                        let _ = echo(&mut stream).await;
                    }
                });
            }
        }
    }
}

async fn echo<C: ReadSide + WriteSide>(c: &mut C) -> std::io::Result<()> {
    loop {
        c.readable().await?;
        let (res, buf) = c.read_into(bufpool::take()).await;
        if res? == 0 {
            bufpool::give(buf);
            return Ok(());
        }
        let (res, buf) = c.write_all(buf).await;
        bufpool::give(buf);
        res?;
    }
}

async fn echo_monoio_rustls<S>(mut s: S) -> std::io::Result<()>
where
    S: monoio::io::AsyncReadRent + monoio::io::AsyncWriteRent,
{
    use monoio::io::AsyncWriteRentExt;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let (res, b) = s.read(buf).await;
        if res? == 0 {
            return Ok(());
        }
        let (res, b) = s.write_all(b).await;
        res?;
        buf = b;
        buf.clear();
    }
}

fn client(addr: &str, cert_path: &str, sessions: usize, mode: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(Path::new(cert_path)).expect("cert") {
        roots.add(cert.expect("cert")).expect("trust");
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut held: Vec<Box<dyn Read + Send>> = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut back = [0u8; 6];
        if mode == "plain" {
            sock.write_all(b"hello\n").expect("write");
            sock.read_exact(&mut back).expect("echo");
            held.push(Box::new(sock));
        } else {
            let name = ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(config.clone(), name).expect("conn");
            let mut tls = rustls::StreamOwned::new(conn, sock);
            tls.write_all(b"hello\n").expect("write");
            tls.read_exact(&mut back).expect("echo");
            held.push(Box::new(tls));
        }
    }
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
