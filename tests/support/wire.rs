//! A minimal line-based client for talking to mail servers in tests
//! without a client library: IMAP commands with automatic tags, SMTP/LMTP
//! style numbered replies, and raw bytes (say, a PROXY header) first.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for any one read or connect.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to one tagged IMAP command.
#[derive(Debug)]
pub struct ImapReply {
    /// Every line before the tagged one (untagged data, literal contents).
    pub untagged: Vec<String>,
    /// The tagged status line without its tag: `OK ...`, `NO ...`, `BAD ...`.
    pub status: String,
}

impl ImapReply {
    /// True when the tagged status is OK.
    pub fn is_ok(&self) -> bool {
        self.status.starts_with("OK")
    }
}

/// A connection read line by line (CRLF stripped).
pub struct LineClient {
    reader: BufReader<TcpStream>,
    next_tag: u32,
}

impl LineClient {
    /// Connects with 5-second connect, read and write timeouts.
    pub fn connect(addr: SocketAddr) -> io::Result<LineClient> {
        LineClient::connect_after(addr, &[])
    }

    /// Connects and sends `preamble` (a PROXY header, say) before reading.
    pub fn connect_after(addr: SocketAddr, preamble: &[u8]) -> io::Result<LineClient> {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        if !preamble.is_empty() {
            stream.write_all(preamble)?;
        }
        Ok(LineClient {
            reader: BufReader::new(stream),
            next_tag: 1,
        })
    }

    /// Wraps a connected stream (say, one bound to a chosen source
    /// address), with the same 5-second timeouts.
    pub fn from_stream(stream: TcpStream) -> io::Result<LineClient> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(LineClient {
            reader: BufReader::new(stream),
            next_tag: 1,
        })
    }

    /// Connects from the local address `from` (any 127.0.0.0/8 address
    /// works on Linux), so a test can tell the client's address apart.
    pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> io::Result<LineClient> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
        LineClient::from_stream(socket.into())
    }

    /// The next line, without CRLF; an error at end of stream.
    pub fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Writes `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Writes `line` and CRLF.
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes())
    }

    /// Sends `a<N> COMMAND` and reads up to its tagged answer. Literals in
    /// the command must be non-synchronising (`{n+}`, LITERAL+).
    pub fn imap(&mut self, command: &str) -> io::Result<ImapReply> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        self.send_line(&format!("{tag} {command}"))?;
        let mut untagged = Vec::new();
        loop {
            let line = self.read_line()?;
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                return Ok(ImapReply {
                    untagged,
                    status: status.to_owned(),
                });
            }
            untagged.push(line);
        }
    }

    /// Reads one SMTP/LMTP reply: lines `NNN-...` up to the last `NNN ...`.
    pub fn smtp_reply(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(lines);
            }
        }
    }
}
