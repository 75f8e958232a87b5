//! A real TCP service behind the gate, and clients that connect to it from a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use crate::netns::in_netns;

/// An echo service on `port` (both families) in namespace `ns`, until dropped.
pub struct Echo(Arc<AtomicBool>);

impl Echo {
    #[must_use]
    pub fn start(ns: &str, port: u16) -> Self {
        let listener = in_netns(ns, || TcpListener::bind(("::", port)).expect("bind the echo service"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        if s.set_nonblocking(false).is_err() {
                            continue;
                        }
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 64];
                            while let Ok(n @ 1..) = s.read(&mut buf) {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self(stop)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection from namespace `ns` to `addr` (`"198.18.0.1:2222"`), 700 ms at most.
pub fn connect(ns: &str, addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("socket address");
    in_netns(ns, || TcpStream::connect_timeout(&addr, Duration::from_millis(700)))
}

/// As `connect`, from source address `src` (one of the namespace's own), within `limit`.
pub fn connect_from(ns: &str, src: &str, addr: &str, limit: Duration) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let src: SocketAddr = SocketAddr::new(src.parse().expect("source address"), 0);
    in_netns(ns, || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.bind(&src.into())?;
        socket.connect_timeout(&addr.into(), limit)?;
        Ok(socket.into())
    })
}

/// Whether the connection echoes what it is sent.
#[must_use]
pub fn echo_ok(s: &mut TcpStream) -> bool {
    if s.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// The body of `GET path` from `addr` (`"127.0.0.1:9742"`) in namespace `ns`, or the error.
pub fn http_get(ns: &str, addr: &str, path: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let path = path.to_owned();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(std::io::Error::other(format!("GET {path}: {head}")));
        }
        Ok(body.to_owned())
    })
}

/// Whether `src` in namespace `ns` gets through to the echo service at `service` and back.
#[must_use]
pub fn opens(ns: &str, src: &str, service: &str) -> bool {
    connect_from(ns, src, service, Duration::from_millis(700)).is_ok_and(|mut c| echo_ok(&mut c))
}

/// Whether a connection from `src` to `service` goes unanswered (a dropped SYN), not refused.
#[must_use]
pub fn shut_out(ns: &str, src: &str, service: &str) -> bool {
    matches!(
        connect_from(ns, src, service, Duration::from_millis(500)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock
    )
}
