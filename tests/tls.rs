//! Integration tests of TLS termination: `mailpin::tls::accept` and
//! `TlsStream` on a monoio io_uring runtime against rustls clients
//! (blocking std sockets, or monoio-rustls where both directions must run
//! at once).

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mailpin::bufpool;
use mailpin::io::{Connection, ReadSide, WriteSide};
use mailpin::tls::{self, DevCert, HandshakeError, MinVersion, TlsSettings, TlsStream};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, ServerConfig};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(20);

type Client = rustls::StreamOwned<ClientConnection, std::net::TcpStream>;

fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime")
}

/// Binds a loopback listener and serves exactly one connection with
/// `handler` on a monoio runtime in its own thread.
fn serve_one<F, Fut, T>(handler: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = monoio::net::TcpListener::from_std(std_listener).expect("listener");
            let (tcp, _) = listener.accept().await.expect("accept");
            handler(tcp).await
        })
    });
    (addr, handle)
}

struct Fixture {
    dev: DevCert,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dev: DevCert::generate().expect("dev cert"),
        }
    }

    fn server(&self, min_version: MinVersion) -> Arc<ServerConfig> {
        let settings = TlsSettings {
            min_version,
            ..TlsSettings::default()
        };
        tls::server_config_from_pem(
            self.dev.cert_pem.as_bytes(),
            self.dev.key_pem.as_bytes(),
            settings,
        )
        .expect("server config")
    }

    fn client(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pem_certs(&self.dev.cert_pem) {
            roots.add(cert).expect("trust dev cert");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn rustls_pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem")
}

fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> Client {
    let sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(CLIENT_IO_TIMEOUT))
        .expect("timeout");
    sock.set_write_timeout(Some(CLIENT_IO_TIMEOUT))
        .expect("timeout");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let conn = ClientConnection::new(config.clone(), name).expect("client conn");
    rustls::StreamOwned::new(conn, sock)
}

/// Echoes everything until the peer ends its side, then ends ours.
async fn echo<C: ReadSide + WriteSide>(c: &mut C) -> std::io::Result<u64> {
    let mut total = 0;
    loop {
        c.readable().await?;
        let (res, buf) = c.read_into(bufpool::take()).await;
        let n = res?;
        if n == 0 {
            bufpool::give(buf);
            break;
        }
        total += n as u64;
        let (res, buf) = c.write_all(buf).await;
        bufpool::give(buf);
        res?;
    }
    c.shutdown().await?;
    Ok(total)
}

/// Accepts TLS and echoes; returns the negotiated version and handshake kind.
/// What the echo server reports: the negotiated version and handshake kind.
type SessionInfo = (Option<ProtocolVersion>, Option<HandshakeKind>);

fn echo_server(
    config: Arc<ServerConfig>,
) -> (SocketAddr, JoinHandle<std::io::Result<SessionInfo>>) {
    serve_one(move |tcp| async move {
        let mut stream = tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await?;
        let info = stream.with_connection(|c| (c.protocol_version(), c.handshake_kind()));
        echo(&mut stream).await?;
        Ok(info)
    })
}

/// Sends `msg`, reads it back, then closes cleanly and checks the server's
/// close_notify arrived.
fn round_trip(client: &mut Client, msg: &[u8]) {
    client.write_all(msg).expect("client write");
    let mut back = vec![0u8; msg.len()];
    client.read_exact(&mut back).expect("client read");
    assert_eq!(back, msg);
}

fn close_and_expect_close_notify(mut client: Client) {
    client.conn.send_close_notify();
    client.flush().expect("flush close_notify");
    let mut rest = Vec::new();
    // Ok (not UnexpectedEof) means the server's close_notify arrived.
    client
        .read_to_end(&mut rest)
        .expect("clean TLS close from server");
    assert!(rest.is_empty());
}

#[test]
fn tls13_echo() {
    let fx = Fixture::new();
    let (addr, server) = echo_server(fx.server(MinVersion::Tls12));
    let mut client = connect(addr, &fx.client(&[&rustls::version::TLS13]), "localhost");
    round_trip(&mut client, b"a1 CAPABILITY\r\n");
    assert_eq!(
        client.conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    close_and_expect_close_notify(client);
    let (version, _) = server.join().expect("server thread").expect("server");
    assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
}

#[test]
fn tls12_echo() {
    let fx = Fixture::new();
    let (addr, server) = echo_server(fx.server(MinVersion::Tls12));
    let mut client = connect(addr, &fx.client(&[&rustls::version::TLS12]), "localhost");
    round_trip(&mut client, b"a1 CAPABILITY\r\n");
    assert_eq!(
        client.conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    close_and_expect_close_notify(client);
    let (version, _) = server.join().expect("server thread").expect("server");
    assert_eq!(version, Some(ProtocolVersion::TLSv1_2));
}

#[test]
fn min_version_13_refuses_tls12_client() {
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls13);
    let (addr, server) =
        serve_one(
            move |tcp| async move { tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await.err() },
        );
    let mut client = connect(addr, &fx.client(&[&rustls::version::TLS12]), "localhost");
    let client_result = client.write_all(b"a1 NOOP\r\n");
    assert!(client_result.is_err(), "a TLS 1.2-only client must fail");
    let err = server
        .join()
        .expect("server thread")
        .expect("server refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(matches!(
        HandshakeError::of(&err),
        Some(HandshakeError::Tls(_))
    ));
}

#[test]
fn ticket_from_one_thread_resumes_on_another() {
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls12);
    let client_config = fx.client(&[&rustls::version::TLS13]);

    let (addr_a, server_a) = echo_server(config.clone());
    let mut first = connect(addr_a, &client_config, "localhost");
    // The echo makes the client read, which processes the tickets.
    round_trip(&mut first, b"a1 NOOP\r\n");
    assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
    close_and_expect_close_notify(first);
    let (_, kind_a) = server_a.join().expect("thread a").expect("server a");
    assert_eq!(kind_a, Some(HandshakeKind::Full));

    let (addr_b, server_b) = echo_server(config);
    let mut second = connect(addr_b, &client_config, "localhost");
    round_trip(&mut second, b"a2 NOOP\r\n");
    assert_eq!(second.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    close_and_expect_close_notify(second);
    let (_, kind_b) = server_b.join().expect("thread b").expect("server b");
    assert_eq!(kind_b, Some(HandshakeKind::Resumed));
}

#[test]
fn silent_client_times_out() {
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls12);
    let limit = Duration::from_millis(300);
    let (addr, server) = serve_one(move |tcp| async move {
        let started = Instant::now();
        let err = tls::accept(tcp, &config, limit).await.err();
        (err, started.elapsed())
    });
    let mut silent = std::net::TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(CLIENT_IO_TIMEOUT))
        .expect("timeout");
    let (err, elapsed) = server.join().expect("server thread");
    let err = err.expect("the handshake must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(matches!(
        HandshakeError::of(&err),
        Some(HandshakeError::TimedOut(_))
    ));
    assert!(elapsed >= limit, "gave up early: {elapsed:?}");
    assert!(elapsed < limit * 4, "gave up late: {elapsed:?}");
    // The server dropped the socket: the client sees the end of stream.
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).expect("eof"), 0);
}

#[test]
fn garbage_client_hello_is_an_error() {
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls12);
    let (addr, server) =
        serve_one(
            move |tcp| async move { tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await.err() },
        );
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(CLIENT_IO_TIMEOUT))
        .expect("timeout");
    // A plaintext IMAP command, then a handshake record with a corrupt body.
    sock.write_all(b"a1 LOGIN user pass\r\n").expect("write");
    let err = server
        .join()
        .expect("server thread")
        .expect("garbage refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(matches!(
        HandshakeError::of(&err),
        Some(HandshakeError::Tls(_))
    ));

    let config = fx.server(MinVersion::Tls12);
    let (addr, server) =
        serve_one(
            move |tcp| async move { tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await.err() },
        );
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    let mut record = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
    record.extend((0..0x3c).map(|i| (i * 37 % 251) as u8));
    sock.write_all(&record).expect("write");
    let err = server
        .join()
        .expect("server thread")
        .expect("corrupt hello refused");
    assert!(matches!(
        HandshakeError::of(&err),
        Some(HandshakeError::Tls(_))
    ));
}

#[test]
fn bytes_pipelined_after_finished_are_kept() {
    let fx = Fixture::new();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = fx.server(MinVersion::Tls12);
        let (addr, server) = serve_one(move |tcp| async move {
            let mut stream = tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await?;
            let mut got = Vec::new();
            while got.len() < 15 {
                stream.readable().await?;
                let (res, buf) = stream.read_into(Vec::with_capacity(256)).await;
                if res? == 0 {
                    break;
                }
                got.extend_from_slice(&buf);
            }
            std::io::Result::Ok(got)
        });
        let client_config = fx.client(&[version]);
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(CLIENT_IO_TIMEOUT))
            .expect("timeout");
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = ClientConnection::new(client_config, name).expect("client");
        // Queued before the handshake: rustls sends it right after Finished.
        conn.writer()
            .write_all(b"a1 CAPABILITY\r\n")
            .expect("queue");
        let mut steps = 0;
        while conn.is_handshaking() || conn.wants_write() {
            steps += 1;
            assert!(steps < 100, "handshake does not progress");
            if conn.wants_write() {
                // One write: Finished and the command share a segment.
                let mut flight = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut flight).expect("write_tls");
                }
                sock.write_all(&flight).expect("send flight");
            } else {
                conn.read_tls(&mut sock).expect("read_tls");
                conn.process_new_packets().expect("process");
            }
        }
        let got = server.join().expect("server thread").expect("server read");
        assert_eq!(got, b"a1 CAPABILITY\r\n", "with {version:?}");
    }
}

#[test]
fn half_close_reaches_each_side() {
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls12);
    let (addr, server) = serve_one(move |tcp| async move {
        let mut stream: TlsStream = tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await?;
        let mut got = Vec::new();
        loop {
            stream.readable().await?;
            let (res, buf) = stream.read_into(Vec::with_capacity(1024)).await;
            if res? == 0 {
                break;
            }
            got.extend_from_slice(&buf);
        }
        // The client's side is closed; ours still works.
        let (res, _) = stream
            .write_all(b"* BYE after your close\r\n".to_vec())
            .await;
        res?;
        stream.shutdown().await?;
        std::io::Result::Ok(got)
    });
    let mut client = connect(addr, &fx.client(&[&rustls::version::TLS13]), "localhost");
    client.write_all(b"a1 LOGOUT\r\n").expect("write");
    client.conn.send_close_notify();
    client.flush().expect("flush");
    client
        .sock
        .shutdown(std::net::Shutdown::Write)
        .expect("tcp half-close");
    let mut reply = Vec::new();
    client
        .read_to_end(&mut reply)
        .expect("server closes with close_notify");
    assert_eq!(reply, b"* BYE after your close\r\n");
    let got = server.join().expect("server thread").expect("server");
    assert_eq!(got, b"a1 LOGOUT\r\n");
}

/// Deterministic test data: block `i` of a xorshift stream.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn split_halves_relay_10mb_both_ways() {
    const TOTAL: usize = 10 * 1024 * 1024;
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls12);
    // Server: the read half passes every buffer to the write half through a
    // channel; both run at once in one task.
    let (addr, server) = serve_one(move |tcp| async move {
        let stream = tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await?;
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = local_sync::mpsc::bounded::channel::<Vec<u8>>(4);
        let read_side = async move {
            loop {
                reader.readable().await?;
                let (res, buf) = reader.read_into(bufpool::take()).await;
                if res? == 0 {
                    return std::io::Result::Ok(());
                }
                if tx.send(buf).await.is_err() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
        };
        let write_side = async move {
            let mut relayed = 0u64;
            while let Some(buf) = rx.recv().await {
                relayed += buf.len() as u64;
                let (res, buf) = writer.write_all(buf).await;
                bufpool::give(buf);
                res?;
            }
            writer.shutdown().await?;
            std::io::Result::Ok(relayed)
        };
        let (r, w) = monoio::join!(read_side, write_side);
        r?;
        w
    });

    // Client: monoio-rustls, split, sending and receiving at the same time.
    let client_config = fx.client(&[&rustls::version::TLS13]);
    let data = pattern(42, TOTAL);
    let expected = xxhash_rust::xxh3::xxh3_64(&data);
    let received_hash = runtime().block_on(async move {
        use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = monoio_rustls::TlsConnector::from(client_config);
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        let (mut rd, mut wr) = tls.into_split();
        let send = async move {
            for chunk in data.chunks(100_000) {
                let (res, _) = wr.write_all(chunk.to_vec()).await;
                res.expect("client write");
            }
            wr.shutdown().await.expect("client shutdown");
        };
        let recv = async move {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            let mut total = 0usize;
            let mut buf = Vec::with_capacity(64 * 1024);
            loop {
                let (res, b) = rd.read(buf).await;
                let n = res.expect("client read");
                if n == 0 {
                    break;
                }
                hasher.update(&b[..n]);
                total += n;
                buf = b;
                buf.clear();
            }
            (total, hasher.digest())
        };
        let ((), got) = monoio::join!(send, recv);
        got
    });
    assert_eq!(received_hash, (TOTAL, expected));
    let relayed = server.join().expect("server thread").expect("server");
    assert_eq!(relayed, TOTAL as u64);
}

#[test]
fn devcert_serves_localhost_and_loopback_ip() {
    let fx = Fixture::new();
    let dir = std::env::temp_dir().join(format!("mailpin-devcert-{}", std::process::id()));
    let (cert_path, key_path) = fx.dev.write_to(&dir).expect("write dev cert");
    let from_files =
        tls::server_config_from_pem_files(&cert_path, &key_path, TlsSettings::default())
            .expect("dev cert loads from files");
    std::fs::remove_dir_all(&dir).expect("clean up");
    let client_config = fx.client(&[&rustls::version::TLS13]);
    for name in ["localhost", "127.0.0.1"] {
        let (addr, server) = echo_server(from_files.clone());
        let mut client = connect(addr, &client_config, name);
        round_trip(&mut client, b"a1 NOOP\r\n");
        close_and_expect_close_notify(client);
        server.join().expect("server thread").expect("server");
    }
}

#[test]
fn idle_stream_holds_no_buffers() {
    let fx = Fixture::new();
    let config = fx.server(MinVersion::Tls12);
    let (addr, server) = serve_one(move |tcp| async move {
        let mut stream = tls::accept(tcp, &config, HANDSHAKE_TIMEOUT).await?;
        stream.readable().await?;
        let (res, buf) = stream.read_into(Vec::with_capacity(1024)).await;
        res?;
        let (res, _) = stream.write_all(buf).await;
        res?;
        // Waiting for the client's next bytes: no ciphertext or plaintext
        // buffer is kept.
        let held = stream.held_bytes();
        echo(&mut stream).await?;
        std::io::Result::Ok(held)
    });
    let mut client = connect(addr, &fx.client(&[&rustls::version::TLS13]), "localhost");
    round_trip(&mut client, b"a1 NOOP\r\n");
    close_and_expect_close_notify(client);
    let held = server.join().expect("server thread").expect("server");
    assert_eq!(held, 0);
}
