//! A configured service's own sockets (`tcp`, `udp`, `bedrock` listeners): each is kept open
//! apart from its accept loop (a duplicate of its descriptor), so that a reload can stop the
//! loop and serve the same socket again (with a new actor or new listener settings) without
//! closing it: clients arriving meanwhile wait in the kernel's queue, and the connections the
//! loop handed out live in the connection tracker, not in the loop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::listener::config::Listen;
use crate::listener::{self, Connections};
use crate::service::ServiceHandle;

/// The descriptor kept open while a loop comes and goes.
#[derive(Debug)]
pub enum Fd {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Fd {
    fn duplicate(&self) -> std::io::Result<Fd> {
        Ok(match self {
            Fd::Tcp(s) => Fd::Tcp(s.try_clone()?),
            Fd::Udp(s) => Fd::Udp(s.try_clone()?),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Fd::Tcp(s) => s.local_addr(),
            Fd::Udp(s) => s.local_addr(),
        }
    }

    /// Keeps a tokio socket's descriptor, and gives back a tokio socket on a duplicate.
    pub fn keep_tcp(socket: tokio::net::TcpListener) -> std::io::Result<Fd> {
        Ok(Fd::Tcp(socket.into_std()?))
    }

    pub fn keep_udp(socket: tokio::net::UdpSocket) -> std::io::Result<Fd> {
        Ok(Fd::Udp(socket.into_std()?))
    }

    /// Whether a listener of this kind can use this socket.
    fn fits(&self, listen: &Listen) -> bool {
        matches!(
            (self, listen),
            (Fd::Tcp(_), Listen::Tcp(_)) | (Fd::Udp(_), Listen::Udp(_) | Listen::Bedrock(_))
        )
    }
}

/// One own socket of a service, and the loop serving it.
#[derive(Debug)]
pub struct Own {
    /// Its listener as configured.
    pub listen: Listen,
    /// Where it is bound (the real port when the config said 0).
    pub addr: SocketAddr,
    fd: Fd,
    /// Stops its loop (not its connections).
    accepting: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// How long closing a socket waits for its loop to let go of it.
const LOOP_END: Duration = Duration::from_secs(5);

impl Own {
    pub fn new(listen: Listen, fd: Fd) -> std::io::Result<Own> {
        Ok(Own {
            listen,
            addr: fd.local_addr()?,
            fd,
            accepting: CancellationToken::new(),
            task: None,
        })
    }

    /// Binds a listener's socket (port 0: any free one).
    pub async fn bind(listen: &Listen, service: &str) -> Result<Own, String> {
        let bind = listen.bind();
        let fd = if listen.is_udp() {
            let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| {
                format!("cannot listen on udp {bind} for service `{service}`: {e}; is another program using that port?")
            })?;
            Fd::keep_udp(socket)
        } else {
            let socket = crate::listener::bind(bind).map_err(|e| {
                format!("cannot listen on {bind} for service `{service}`: {e}; is another program using that port?")
            })?;
            Fd::keep_tcp(socket)
        };
        fd.and_then(|fd| Own::new(listen.clone(), fd))
            .map_err(|e| format!("cannot keep the socket on {bind}: {e}"))
    }

    /// A new `Own` on the same socket (a duplicate descriptor) for `listen`, if it fits and
    /// `listen` asks for this socket: the same bind as configured, or port 0 for one that was.
    pub fn reuse(&self, listen: &Listen) -> Option<Own> {
        if !self.fd.fits(listen) || self.listen.bind() != listen.bind() {
            return None;
        }
        let fd = self.fd.duplicate().ok()?;
        Own::new(listen.clone(), fd).ok()
    }

    /// Serves the socket for `service` on `tracker`, once the service has reconciled (clients
    /// wait in the queue until then).
    pub fn serve(
        &mut self,
        service: &ServiceHandle,
        connections: &Connections,
        tracker: &TaskTracker,
    ) {
        let fd = match self.fd.duplicate() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(service = %service.name(), bind = %self.addr, error = %e, "Cannot serve this socket.");
                return;
            }
        };
        self.accepting = CancellationToken::new();
        let (accepting, service, connections, listen, addr) = (
            self.accepting.clone(),
            service.clone(),
            connections.clone(),
            self.listen.clone(),
            self.addr,
        );
        self.task = Some(tracker.spawn(async move {
            tokio::select! {
                () = service.reconciled() => {}
                () = accepting.cancelled() => return,
                () = connections.stop_accepting.cancelled() => return,
            }
            let run = serve(fd, listen, addr, service, connections);
            tokio::select! {
                () = run => {}
                () = accepting.cancelled() => {}
            }
        }));
    }

    /// Stops the loop and waits until it has let go of its descriptor; the socket stays open
    /// while `self` (or another `Own` on it) lives.
    pub async fn stop(&mut self) {
        self.accepting.cancel();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(LOOP_END, task).await.is_err()
        {
            warn!(bind = %self.addr, "An accept loop did not stop in time.");
        }
    }
}

/// Runs the accept loop of one own socket.
async fn serve(
    fd: Fd,
    listen: Listen,
    addr: SocketAddr,
    service: ServiceHandle,
    connections: Connections,
) {
    let name = service.name().to_string();
    match (fd, listen) {
        (Fd::Tcp(socket), Listen::Tcp(tcp)) => {
            let Ok(socket) = tokio_socket(socket, tokio::net::TcpListener::from_std) else {
                return;
            };
            info!(service = %name, bind = %addr, "Listening.");
            listener::tcp::run(socket, service, connections, tcp).await;
        }
        (Fd::Udp(socket), Listen::Udp(udp)) => {
            let Ok(socket) = tokio_socket(socket, tokio::net::UdpSocket::from_std) else {
                return;
            };
            info!(service = %name, bind = %addr, "Listening for UDP.");
            listener::udp::run(socket, service, connections, udp).await;
        }
        (Fd::Udp(socket), Listen::Bedrock(bedrock)) => {
            let Ok(socket) = tokio_socket(socket, tokio::net::UdpSocket::from_std) else {
                return;
            };
            info!(service = %name, bind = %addr, "Listening for Minecraft Bedrock.");
            listener::bedrock::run(socket, service, connections, bedrock).await;
        }
        _ => warn!(service = %name, bind = %addr, "This socket does not fit its listener."),
    }
}

/// A tokio socket on a std one (non-blocking, as tokio needs).
fn tokio_socket<S, T>(socket: S, into: impl FnOnce(S) -> std::io::Result<T>) -> std::io::Result<T>
where
    S: NonBlocking,
{
    socket.set_nonblocking(true)?;
    into(socket).inspect_err(|e| warn!(error = %e, "Cannot serve a socket."))
}

/// The two std sockets' `set_nonblocking`.
trait NonBlocking {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
}

impl NonBlocking for std::net::TcpListener {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        std::net::TcpListener::set_nonblocking(self, on)
    }
}

impl NonBlocking for std::net::UdpSocket {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        std::net::UdpSocket::set_nonblocking(self, on)
    }
}
