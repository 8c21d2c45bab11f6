//! The data path: bytes copied both ways between a client and its backend. A direction starts
//! with plain reads and writes through a buffer on the stack, which costs a short exchange (a
//! request and its answer) the fewest system calls and no pipe; once it has moved
//! [`SPLICE_AFTER`] bytes it goes on with `splice(2)` through a pipe taken from a small pool,
//! so a long transfer moves inside the kernel and never through a buffer of ours. A direction
//! that reaches end of stream half-closes the other side and the other direction goes on, as
//! with `copy_bidirectional` (for a caller that closes both sockets as soon as both directions
//! end, the last one's half-close is skipped: the close says the same). A read that leaves the socket empty marks it so, as
//! tokio's own reads do, so the next wait sleeps instead of costing a read that would block.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call at most; a pipe holds this much.
const CHUNK: usize = 256 * 1024;

/// A direction switches from plain copies to splice once it has moved this many bytes: an
/// exchange shorter than that never makes a pipe.
pub const SPLICE_AFTER: u64 = 64 * 1024;

/// The stack buffer of plain copies: one read's worth at most.
const BUFFER: usize = 16 * 1024;

/// Empty pipes kept for the next long transfer, at most (two descriptors each).
const POOLED_PIPES: usize = 32;

/// Copies until both directions have ended; returns bytes (client → backend, backend → client).
/// `counted` are bumped as bytes go by (client → backend, backend → client).
pub async fn bidirectional(
    client: &TcpStream,
    backend: &TcpStream,
    counted: (&AtomicU64, &AtomicU64),
) -> io::Result<(u64, u64)> {
    let ended = Ended::half_close_both();
    tokio::try_join!(
        one_way(client, backend, counted.0, &ended),
        one_way(backend, client, counted.1, &ended)
    )
}

/// How a connection's two [`one_way`] copies pass the end of a direction on.
#[derive(Debug)]
pub struct Ended {
    /// Whether one direction has ended.
    one: AtomicBool,
    /// Whether the last direction to end skips its half-close.
    skip_last: bool,
}

impl Ended {
    /// Each end is passed on as a half-close.
    pub fn half_close_both() -> Ended {
        Ended {
            one: AtomicBool::new(false),
            skip_last: false,
        }
    }

    /// For a caller that closes both sockets as soon as both directions have ended: the last
    /// direction to end does not half-close, since the close right after says the same (a
    /// system call saved per connection).
    pub fn closed_after() -> Ended {
        Ended {
            one: AtomicBool::new(false),
            skip_last: true,
        }
    }

    fn pass_on(&self, to: &TcpStream) {
        let other_ended = self.one.swap(true, Ordering::AcqRel);
        if !(other_ended && self.skip_last) {
            let _ = rustix::net::shutdown(to.as_fd(), Shutdown::Write);
        }
    }
}

/// Copies one way until `from` ends, then half-closes `to` (as `ended` says); returns the
/// bytes moved.
pub async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    counted: &AtomicU64,
    ended: &Ended,
) -> io::Result<u64> {
    let mut total = 0u64;
    while total < SPLICE_AFTER {
        from.readable().await?;
        let n = match relay(from, to)? {
            Relayed::Nothing => continue,
            Relayed::End => {
                ended.pass_on(to);
                return Ok(total);
            }
            Relayed::All(n) => n,
            Relayed::Part { read, rest } => {
                // `to` is full: what it did not take waits on the heap, not in every
                // connection's state.
                write_all(to, &rest).await?;
                read
            }
        };
        total += n as u64;
        counted.fetch_add(n as u64, Ordering::Relaxed);
    }
    let pipe = Pipe::take()?;
    loop {
        let n = splice_ready(from, Interest::READABLE, from, &pipe.write, CHUNK).await?;
        if n == 0 {
            // End of stream: pass the half-close on; the other direction may go on. The pipe
            // is empty: it serves another connection.
            ended.pass_on(to);
            pipe.give_back();
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            left -= splice_ready(to, Interest::WRITABLE, &pipe.read, to, left).await?;
        }
        total += n as u64;
        counted.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What one [`relay`] did.
enum Relayed {
    /// `from` had nothing after all.
    Nothing,
    /// `from` has ended.
    End,
    /// Read and written this many bytes.
    All(usize),
    /// Read `read` bytes; `to` took all but `rest`.
    Part { read: usize, rest: Vec<u8> },
}

/// Reads what `from` has (a buffer's worth at most) and writes it to `to`, without waiting.
/// A function of its own so that the buffer lives on the stack of this call only, never in
/// the state of an idle connection.
fn relay(from: &TcpStream, to: &TcpStream) -> io::Result<Relayed> {
    let mut buf = [0u8; BUFFER];
    let read = match try_read(from, &mut buf)? {
        Some(0) => return Ok(Relayed::End),
        Some(n) => n,
        None => return Ok(Relayed::Nothing),
    };
    let mut written = 0;
    while written < read {
        match to.try_write(&buf[written..read]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let rest = buf[written..read].to_vec();
                return Ok(Relayed::Part { read, rest });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Relayed::All(read))
}

/// Reads what `from` has into `buf` without waiting; `None` if it has nothing, `Some(0)` at its
/// end. A read shorter than `buf` has emptied the socket: its readiness is cleared then, as
/// tokio's own reads do, so the next wait sleeps until more comes rather than costing a read
/// that would block. Cleared within `try_io`, which clears only if no new readiness came
/// since the read began: bytes that arrive meanwhile are never missed.
pub fn try_read(from: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let len = buf.len();
    let mut read = None;
    let done = from.try_io(Interest::READABLE, || {
        let n = rustix::io::read(from, &mut *buf)?;
        read = Some(n);
        if n > 0 && n < len {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match done {
        Ok(()) => Ok(read),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(read),
        Err(e) => Err(e),
    }
}

/// Writes all of `bytes` to `to` (bytes read before the copy began, a PROXY header), through a
/// shared reference, as the copy's directions hold the sockets.
pub async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A pipe for splice: both ends, non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// Empty pipes of finished transfers. A std mutex: it is held for a push or a pop, never
/// across an await.
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    /// A pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A bigger pipe means fewer system calls per byte; the default (64 KiB) still works.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, CHUNK);
        Ok(Pipe { read, write })
    }

    /// Keeps an empty pipe for another transfer (closes it when the pool is full).
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_PIPES {
            pool.push(self);
        }
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of real sockets: (the connecting side, the accepted side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// A short exchange and a long transfer (past the switch to splice) both arrive whole and
    /// in order, half-closes included, and are counted; also when the last half-close is left
    /// to the close of both sockets (as the `tcp` listener does).
    #[tokio::test]
    async fn short_and_long_transfers_arrive_whole_both_ways() {
        let sizes = [5, SPLICE_AFTER as usize + 3 * CHUNK + 17];
        for (size, closed_after) in sizes.into_iter().flat_map(|n| [(n, false), (n, true)]) {
            let (mut client, client_side) = pair().await;
            let (backend_side, mut backend) = pair().await;
            let counted = (AtomicU64::new(0), AtomicU64::new(0));
            let up: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let down: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
            let counted_ref = &counted;
            let proxy = async move {
                let moved = if closed_after {
                    let ended = Ended::closed_after();
                    tokio::try_join!(
                        one_way(&client_side, &backend_side, &counted_ref.0, &ended),
                        one_way(&backend_side, &client_side, &counted_ref.1, &ended)
                    )
                } else {
                    bidirectional(
                        &client_side,
                        &backend_side,
                        (&counted_ref.0, &counted_ref.1),
                    )
                    .await
                };
                // Closed as soon as both directions have ended, as the listeners do.
                drop((client_side, backend_side));
                moved
            };
            let client_io = async {
                client.write_all(&up).await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            };
            let backend_io = async {
                // The backend answers while it still reads: both directions move at once.
                let (mut r, mut w) = backend.split();
                let (got, ()) = tokio::join!(
                    async {
                        let mut got = Vec::new();
                        r.read_to_end(&mut got).await.unwrap();
                        got
                    },
                    async {
                        w.write_all(&down).await.unwrap();
                        w.shutdown().await.unwrap();
                    }
                );
                got
            };
            let (moved, at_client, at_backend) = tokio::join!(proxy, client_io, backend_io);
            assert_eq!(moved.unwrap(), (size as u64, size as u64));
            assert!(at_backend == up, "{size} bytes up arrived changed");
            assert!(at_client == down, "{size} bytes down arrived changed");
            assert_eq!(counted.0.load(Ordering::Relaxed), size as u64);
            assert_eq!(counted.1.load(Ordering::Relaxed), size as u64);
        }
    }
}
