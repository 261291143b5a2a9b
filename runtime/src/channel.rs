//! Messages between the runtime (parent) and the container's init (child) during `create`.
//!
//! A SOCK_SEQPACKET socketpair: one message per datagram, so no framing. The sequence is
//! parent → `Go` (after cgroup placement and id maps), [init → `NamespacesReady`, parent →
//! `Continue(state)` around the runtime-side hooks, only when the spec has hooks], init →
//! `Ready` (namespaces and rootfs set up, waiting for `start`) or `Failed(reason)`.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::error::{Context, Error, Result};

#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Parent to init: you are in the cgroup and your id maps are written; carry on.
    Go,
    /// Init to parent: namespaces exist, time for the prestart/createRuntime hooks.
    NamespacesReady,
    /// Parent to init: hooks done; the payload is the state JSON for init's own hooks.
    Continue(String),
    /// Init to parent: set up and waiting on the exec socket.
    Ready,
    /// Init to parent: setup failed, with a one-line reason.
    Failed(String),
    /// Parent to init (or exec's child): the compiled seccomp filter
    /// (nestbox_seccomp::Program::to_bytes).
    Seccomp(Vec<u8>),
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        match self {
            Message::Go => b"G".to_vec(),
            Message::Ready => b"R".to_vec(),
            Message::NamespacesReady => b"N".to_vec(),
            Message::Continue(m) => {
                let mut v = b"C".to_vec();
                v.extend_from_slice(m.as_bytes());
                v
            }
            Message::Failed(m) => {
                let mut v = b"F".to_vec();
                v.extend_from_slice(m.as_bytes());
                v
            }
            Message::Seccomp(program) => {
                let mut v = b"S".to_vec();
                v.extend_from_slice(program);
                v
            }
        }
    }

    fn decode(buf: &[u8]) -> Result<Message> {
        match buf.split_first() {
            Some((b'G', _)) => Ok(Message::Go),
            Some((b'R', _)) => Ok(Message::Ready),
            Some((b'N', _)) => Ok(Message::NamespacesReady),
            Some((b'C', m)) => Ok(Message::Continue(String::from_utf8_lossy(m).into_owned())),
            Some((b'F', m)) => Ok(Message::Failed(String::from_utf8_lossy(m).into_owned())),
            Some((b'S', m)) => Ok(Message::Seccomp(m.to_vec())),
            Some(_) => Err(Error::Other("sync channel: unknown message".into())),
            None => Err(Error::Other(
                "container init exited before finishing its setup".into(),
            )),
        }
    }
}

/// One end of the channel.
pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair (parent end, init end), both close-on-exec.
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "creating the sync socketpair".into())?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl std::os::fd::AsRawFd for Channel {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Channel {
    pub fn send(&self, msg: &Message) -> Result<()> {
        send(self.fd.as_raw_fd(), &msg.encode(), MsgFlags::MSG_NOSIGNAL)
            .ctx(|| "sync channel: send".into())?;
        Ok(())
    }

    /// Receive a message, or None when the other end closed (e.g. by exec: close-on-exec).
    pub fn recv_or_closed(&self) -> Result<Option<Message>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Ok(None),
                Ok(n) => return Message::decode(&buf[..n]).map(Some),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "sync channel: receive".into()),
            }
        }
    }

    pub fn recv(&self) -> Result<Message> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => return Message::decode(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "sync channel: receive".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let (a, b) = pair().expect("pair");
        a.send(&Message::Go).expect("send");
        b.send(&Message::Failed("mount /proc: EPERM".into()))
            .expect("send");
        assert_eq!(b.recv().expect("recv"), Message::Go);
        assert_eq!(
            a.recv().expect("recv"),
            Message::Failed("mount /proc: EPERM".into())
        );
        drop(b);
        assert!(a.recv().is_err());
    }
}
