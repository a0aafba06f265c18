//! `Type=notify` readiness: started with `NOTIFY_SOCKET`, as systemd starts
//! a unit, `mailpin run` sends `READY=1` with `STATUS=` and its `MAINPID=`
//! once every listener accepts and the admin API answers, and `STOPPING=1`
//! when SIGTERM starts the drain. A binary upgrade hands the unit over:
//! the old process sends `MAINPID=` of the new one, which sends no
//! `READY=1` of its own (systemd would refuse it from a process that is
//! not yet the main one).

mod support;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use support::mailpin::{http, Mailpin};
use support::tempdir::TempDir;

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
}

#[test]
fn ready_after_listening_and_stopping_on_sigterm() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A backend nobody serves is enough: readiness is about our sockets.
    let config =
        "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\nplaintext_auth = true\n\n\
                  [[backend]]\nname = \"b0\"\nhost = \"127.0.0.1\"\nimap = 9\n";
    let mut m = Mailpin::start_with(config, 1, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);

    let ready = receive(&systemd);
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready}");
    assert!(
        lines.contains(&format!("MAINPID={}", m.pid()).as_str()),
        "{ready}"
    );
    let status = lines
        .iter()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS in {ready:?}"));
    assert!(status.contains(&m.listen[0].to_string()), "{status}");
    // What READY promises: the listener accepts, the admin API answers.
    TcpStream::connect_timeout(&m.listen[0], Duration::from_secs(5)).expect("listener accepts");
    let (code, _) = http(
        m.admin,
        &format!(
            "GET /status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            m.admin
        ),
    );
    assert_eq!(code, 200);

    m.stop();
    let stopping = receive(&systemd);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_director_serves() {
    // The variable may be set in the test's own environment (a CI runner
    // under systemd): the director must not inherit it here.
    let config =
        "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\nplaintext_auth = true\n\n\
                  [[backend]]\nname = \"b0\"\nhost = \"127.0.0.1\"\nimap = 9\n";
    let m = Mailpin::start_with(config, 1, &[("NOTIFY_SOCKET", "")]);
    TcpStream::connect_timeout(&m.listen[0], Duration::from_secs(5)).expect("listener accepts");
    assert!(!m.log().contains("cannot notify systemd"), "{}", m.log());
}

#[test]
fn an_upgrade_hands_mainpid_to_the_new_process() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config =
        "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\nplaintext_auth = true\n\n\
                  [[backend]]\nname = \"b0\"\nhost = \"127.0.0.1\"\nimap = 9\n";
    let mut m = Mailpin::start_with(config, 1, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    assert!(receive(&systemd).lines().any(|l| l == "READY=1"));
    let (code, out, err) = m.ctl(&["upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    let new_pid: u32 = out
        .split_once("the new process ")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .expect("new pid");
    let _new = KillOnDrop(new_pid);
    let handed = receive(&systemd);
    assert_eq!(handed.trim_end(), format!("MAINPID={new_pid}"), "{handed}");
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0));
    // The new process is the main one now: its stop is what systemd hears.
    support::procs::send_signal(new_pid, libc::SIGTERM);
    let stopping = receive(&systemd);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(support::procs::wait_gone(&[new_pid], Duration::from_secs(10)).is_empty());
}

/// SIGKILLs a process the test started indirectly if the test ends early.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if support::procs::pid_alive(self.0) {
            support::procs::send_signal(self.0, libc::SIGKILL);
        }
    }
}
