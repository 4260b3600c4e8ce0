//! The peer address a single-shot io_uring accept writes: a `sockaddr_storage` and its
//! length, kept at a stable address (boxed by the owner) until the accept completes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where an accept puts its peer's address.
pub struct PeerAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Default for PeerAddr {
    fn default() -> Self {
        // SAFETY: `sockaddr_storage` is plain integers and byte arrays; all zeroes is a valid
        // value (family AF_UNSPEC).
        let storage = unsafe { std::mem::zeroed::<libc::sockaddr_storage>() };
        PeerAddr { storage, len: 0 }
    }
}

impl PeerAddr {
    /// Resets the length to the whole storage and gives the pointers for `opcode::Accept`.
    /// They stay valid while `self` neither moves nor drops.
    pub fn prepare(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        self.storage.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
        self.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        ((&raw mut self.storage).cast(), &raw mut self.len)
    }

    /// The peer's IP address, once the accept has completed successfully.
    pub fn ip(&self) -> Option<IpAddr> {
        let len = self.len as usize;
        match i32::from(self.storage.ss_family) {
            libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a `sockaddr_in` (family AF_INET, `len` bytes) at the
                // start of the storage, which is large and aligned enough for any sockaddr.
                let sin = unsafe { &*(&raw const self.storage).cast::<libc::sockaddr_in>() };
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
            }
            libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for a `sockaddr_in6` (family AF_INET6, `len` bytes).
                let sin6 = unsafe { &*(&raw const self.storage).cast::<libc::sockaddr_in6>() };
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// The same layout `accept(2)` fills, read back as an address.
    fn accept_into(listener: &TcpListener, addr: &mut PeerAddr) {
        let (sa, len) = addr.prepare();
        // SAFETY: `sa`/`len` point into `addr`, alive and unmoved for the call; the
        // accepted descriptor is closed at once.
        let fd = unsafe { libc::accept(listener.as_raw_fd(), sa, len) };
        assert!(fd >= 0, "accept: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is ours and used nowhere else.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn reads_ipv4_and_ipv6_peers() {
        let mut addr = PeerAddr::default();
        assert_eq!(addr.ip(), None);
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.bind(&"127.0.0.9:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        client.connect(&v4.local_addr().unwrap().into()).unwrap();
        accept_into(&v4, &mut addr);
        assert_eq!(addr.ip(), Some("127.0.0.9".parse().unwrap()));
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let _c = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
            accept_into(&v6, &mut addr);
            assert_eq!(addr.ip(), Some("::1".parse().unwrap()));
        }
    }
}
