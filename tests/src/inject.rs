//! Sending crafted Ethernet frames from inside a namespace (`AF_PACKET`), so that tests can
//! knock from any (spoofed) source address, tagged or not.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::netns::sh;

/// An `AF_PACKET` socket bound to one interface of one namespace.
pub struct Injector {
    fd: OwnedFd,
    ifindex: i32,
    /// Destination then source MAC, written over each frame's first 12 bytes.
    macs: [u8; 12],
}

/// The MAC address of `iface` in namespace `ns`.
#[must_use]
pub fn mac_of(ns: &str, iface: &str) -> [u8; 6] {
    let out = sh(&format!("ip -n {ns} -br link show dev {iface}")).stdout;
    let text = String::from_utf8_lossy(&out);
    let word = text.split_whitespace().nth(2).expect("mac in `ip -br link` output");
    let mut mac = [0u8; 6];
    for (b, hex) in mac.iter_mut().zip(word.split(':')) {
        *b = u8::from_str_radix(hex, 16).expect("hex");
    }
    mac
}

impl Injector {
    /// Opens the socket in namespace `ns` on `iface`, addressing frames to `dst_mac`.
    #[must_use]
    pub fn new(ns: &str, iface: &str, dst_mac: [u8; 6]) -> Self {
        let src_mac = mac_of(ns, iface);
        let (ns, iface) = (ns.to_owned(), iface.to_owned());
        // A socket belongs to the namespace it was made in: make it on a thread that joins
        // the namespace, then use it from anywhere.
        let (fd, ifindex) = std::thread::spawn(move || {
            let netns = File::open(format!("/run/netns/{ns}")).expect("open netns");
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).expect("ifindex");
            // SAFETY: plain socket(2) call; the result is checked.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            (unsafe { OwnedFd::from_raw_fd(raw) }, i32::try_from(ifindex).expect("ifindex"))
        })
        .join()
        .expect("netns thread");
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&dst_mac);
        macs[6..].copy_from_slice(&src_mac);
        Self { fd, ifindex, macs }
    }

    /// Frames ready for `send_batch`: MAC addresses already replaced.
    #[must_use]
    pub fn prepare(&self, frame: &[u8]) -> Vec<u8> {
        let mut f = frame.to_vec();
        f[..12].copy_from_slice(&self.macs);
        f
    }

    /// Sends prepared frames with `sendmmsg`; returns how many went out.
    #[must_use]
    pub fn send_batch(&self, frames: &[Vec<u8>]) -> usize {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("family");
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&self.macs[..6]);
        let mut iovs: Vec<libc::iovec> =
            frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr().cast_mut().cast(), iov_len: f.len() }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain data; zeroed is a valid start.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = std::ptr::from_mut(&mut addr).cast();
                h.msg_hdr.msg_namelen = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("len");
                h.msg_hdr.msg_iov = std::ptr::from_mut(iov);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: every header points at live buffers of the stated lengths.
        let n = unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), u32::try_from(msgs.len()).expect("batch"), 0)
        };
        usize::try_from(n).unwrap_or(0)
    }

    /// Sends one frame (its MAC addresses replaced by the real ones).
    pub fn send(&self, frame: &[u8]) {
        let mut frame = frame.to_vec();
        frame[..12].copy_from_slice(&self.macs);
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("family");
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&self.macs[..6]);
        // A socket buffer full of earlier frames (ENOBUFS) is waited out, a bounded number of times.
        for _ in 0..1000 {
            // SAFETY: valid buffer and address of the stated lengths.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    std::ptr::from_ref(&addr).cast(),
                    u32::try_from(size_of::<libc::sockaddr_ll>()).expect("len"),
                )
            };
            if usize::try_from(n).is_ok_and(|n| n == frame.len()) {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert!(e.raw_os_error() == Some(libc::ENOBUFS), "sendto: {e}");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        panic!("sendto: the socket buffer stayed full");
    }
}
