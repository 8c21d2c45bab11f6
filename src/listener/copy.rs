//! The data path: bytes copied both ways between a client and its backend with `splice(2)`
//! through a pipe, so they move inside the kernel and never through a buffer of ours. A
//! direction that reaches end of stream half-closes the other side and the other direction
//! goes on, as with `copy_bidirectional`.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call at most; the pipe holds this much.
const CHUNK: usize = 256 * 1024;

/// Copies until both directions have ended; returns bytes (client → backend, backend → client).
/// `counted` are bumped as bytes go by (client → backend, backend → client).
pub async fn bidirectional(
    client: &TcpStream,
    backend: &TcpStream,
    counted: (&AtomicU64, &AtomicU64),
) -> io::Result<(u64, u64)> {
    tokio::try_join!(
        one_way(client, backend, counted.0),
        one_way(backend, client, counted.1)
    )
}

/// Copies one way until `from` ends, then half-closes `to`; returns the bytes moved.
pub async fn one_way(from: &TcpStream, to: &TcpStream, counted: &AtomicU64) -> io::Result<u64> {
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // A bigger pipe means fewer system calls per byte; the default (64 KiB) still works.
    let _ = rustix::pipe::fcntl_setpipe_size(&pipe_in, CHUNK);
    let mut total = 0u64;
    loop {
        let n = splice_ready(from, Interest::READABLE, from, &pipe_in, CHUNK).await?;
        if n == 0 {
            // End of stream: pass the half-close on; the other direction may go on.
            let _ = rustix::net::shutdown(to.as_fd(), Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            left -= splice_ready(to, Interest::WRITABLE, &pipe_out, to, left).await?;
        }
        total += n as u64;
        counted.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Writes all of `bytes` to `to` (bytes read before the copy began, a PROXY header), through a
/// shared reference, as the copy's directions hold the sockets.
pub async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `splice` from `src` to `dst` once `socket` is ready for `interest`. The pipe is always
/// drained before the socket is read again, so "would block" can only mean the socket.
async fn splice_ready(
    socket: &TcpStream,
    interest: Interest,
    src: impl AsFd,
    dst: impl AsFd,
    len: usize,
) -> io::Result<usize> {
    loop {
        socket.ready(interest).await?;
        let moved = socket.try_io(interest, || {
            splice(
                &src,
                None,
                &dst,
                None,
                len,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(io::Error::from)
        });
        match moved {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}
