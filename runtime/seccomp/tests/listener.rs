//! send_to_listener: the agent at listenerPath receives the containerProcessState JSON and
//! a working fd in one message.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

#[test]
fn agent_receives_state_and_fd() {
    let dir = std::env::temp_dir().join(format!("nestbox-seccomp-listener-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("agent.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind");

    let agent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 65536];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        let mut fds = Vec::new();
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(f) = c {
                fds.extend(f);
            }
        }
        let n = msg.bytes;
        (buf[..n].to_vec(), fds)
    });

    // Any fd works for the transport; a pipe shows the received one is live.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds from pipe2.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let state = serde_json::json!({"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 42, "bundle": "/b"});
    nestbox_seccomp::send_to_listener(
        &sock,
        write_end.as_fd(),
        42,
        Some("MKNOD=/dev/null"),
        &state,
    )
    .expect("send");
    drop(write_end);

    let (payload, got) = agent.join().expect("agent thread");
    let v: serde_json::Value = serde_json::from_slice(&payload).expect("JSON payload");
    assert_eq!(v["fds"], serde_json::json!(["seccompFd"]));
    assert_eq!(v["pid"], 42);
    assert_eq!(v["metadata"], "MKNOD=/dev/null");
    assert_eq!(v["state"]["id"], "c1");
    assert_eq!(got.len(), 1);
    // SAFETY: the fd arrived through SCM_RIGHTS and is ours.
    let mut received = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(got[0]) });
    received
        .write_all(b"hi")
        .expect("write through received fd");
    drop(received);
    let mut s = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut s)
        .expect("read");
    assert_eq!(s, "hi");
    let _ = std::fs::remove_dir_all(&dir);
}
