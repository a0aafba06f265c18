//! Passing listening sockets between processes: SCM_RIGHTS over a Unix
//! socket, at most [`MAX_FDS_PER_MESSAGE`] per message, and checking each
//! received descriptor before it is used.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// The kernel's bound on descriptors in one message (SCM_MAX_FD).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `fds` in batches of at most [`MAX_FDS_PER_MESSAGE`], each with
/// one byte of data; the receiver reads them with [`recv_fds`].
pub fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    for batch in fds.chunks(MAX_FDS_PER_MESSAGE) {
        send_batch(stream, batch)?;
    }
    Ok(())
}

fn send_batch(stream: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    let data = [b'F'];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msg points at live buffers of the sizes given; the control
    // buffer is CMSG_SPACE(payload) long, so the one header and its data fit.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), payload);
        loop {
            let n = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n == 1 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if n < 0 {
                e
            } else {
                std::io::Error::other("short send")
            });
        }
    }
}

/// Receives `count` descriptors sent by [`send_fds`] (close-on-exec set).
pub fn recv_fds(stream: &UnixStream, count: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let want = (count - out.len()).min(MAX_FDS_PER_MESSAGE);
        let got = recv_batch(stream, want)?;
        if got.len() != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("expected {want} descriptors, got {}", got.len()),
            ));
        }
        out.extend(got);
    }
    Ok(out)
}

fn recv_batch(stream: &UnixStream, want: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let payload = want * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msg points at live buffers of the sizes given; the kernel
    // fills at most msg_controllen bytes, and the headers are walked with
    // the CMSG macros within that length.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "descriptors were cut off",
            ));
        }
        Ok(fds)
    }
}

/// Checks that `fd` is a listening socket and returns the address it is
/// bound to (`None` for a Unix socket).
pub fn check_listener(fd: &OwnedFd) -> std::io::Result<Option<SocketAddr>> {
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is open; the out pointers are valid for their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut listening as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if listening == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a listening socket",
        ));
    }
    let addr = socket2::SockRef::from(fd).local_addr()?;
    Ok(addr.as_socket())
}

/// Lets `fd` survive `exec` (clears close-on-exec): the one descriptor a
/// new process inherits.
pub fn inherit_across_exec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is touched.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets close-on-exec on `fd` (the inherited link, once taken over).
pub fn close_on_exec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is touched.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_pass_in_batches_and_are_checked() {
        let listeners: Vec<std::net::TcpListener> = (0..300)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let (a, b) = UnixStream::pair().unwrap();
        let raw: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let sender = std::thread::spawn(move || send_fds(&a, &raw).map(|()| a));
        let got = recv_fds(&b, 300).unwrap();
        let _a = sender.join().unwrap().unwrap();
        assert_eq!(got.len(), 300, "two messages: 253 and 47");
        for (fd, l) in got.iter().zip(&listeners) {
            assert_eq!(check_listener(fd).unwrap(), Some(l.local_addr().unwrap()));
        }
        let not_listening = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check_listener(&OwnedFd::from(not_listening)).is_err());
    }
}
