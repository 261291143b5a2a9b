//! Container logs in the CRI format: nestlet reads each container's stdout and stderr FIFOs
//! (the shim writes the process's output into them) and appends
//! `<RFC3339Nano> stdout|stderr F|P <text>` lines to
//! `<pod log dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`. A line longer than 16 KiB is
//! split into partial (`P`) records, as the kubelet does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

const MAX_LINE: usize = 16 * 1024;

/// The directory of a pod's logs.
pub fn pod_log_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// Write one record (`text` without its newline).
fn record(out: &Mutex<std::fs::File>, stream: &str, tag: &str, text: &[u8]) {
    let mut line = Vec::with_capacity(text.len() + 48);
    line.extend_from_slice(crate::util::now_rfc3339_nano().as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.push(b' ');
    line.extend_from_slice(tag.as_bytes());
    line.push(b' ');
    line.extend_from_slice(text);
    line.push(b'\n');
    if let Ok(mut f) = out.lock() {
        let _ = f.write_all(&line);
    }
}

/// Copy one FIFO into the log until `exited` turns true and the FIFO has been drained.
/// The FIFO is opened read-write so that it never reports EOF while the shim (re)opens its
/// end; after the exit, reading stops once no data came for a short while.
pub async fn copy_fifo(
    fifo: PathBuf,
    stream: &'static str,
    out: Arc<Mutex<std::fs::File>>,
    mut exited: watch::Receiver<bool>,
) {
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo);
    let mut rx = match rx {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(fifo = %fifo.display(), "opening the log FIFO: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut draining = *exited.borrow();
    loop {
        let n = if draining {
            match tokio::time::timeout(std::time::Duration::from_millis(150), rx.read(&mut buf))
                .await
            {
                Ok(Ok(n)) => n,
                _ => break,
            }
        } else {
            tokio::select! {
                r = rx.read(&mut buf) => match r { Ok(n) => n, Err(_) => break },
                c = exited.changed() => {
                    if c.is_err() || *exited.borrow() { draining = true; }
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            record(&out, stream, "F", &line[..line.len() - 1]);
        }
        while pending.len() >= MAX_LINE {
            let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
            record(&out, stream, "P", &part);
        }
    }
    if !pending.is_empty() {
        record(&out, stream, "F", &pending);
    }
}

/// Make the two FIFOs of a container and start copying them into `log`. Returns the FIFO
/// paths (for the shim's Create) and the sender that tells the copiers the process exited.
pub fn start(
    io_dir: &Path,
    container_id: &str,
    log: &Path,
) -> std::io::Result<(String, String, watch::Sender<bool>)> {
    std::fs::create_dir_all(io_dir)?;
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let out = Arc::new(Mutex::new(out));
    let (tx, rx) = watch::channel(false);
    let mut paths = Vec::new();
    for stream in ["stdout", "stderr"] {
        let p = io_dir.join(format!("{container_id}-{stream}"));
        if !p.exists() {
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(std::io::Error::from)?;
        }
        tokio::spawn(copy_fifo(p.clone(), stream, out.clone(), rx.clone()));
        paths.push(p.display().to_string());
    }
    Ok((paths[0].clone(), paths[1].clone(), tx))
}
