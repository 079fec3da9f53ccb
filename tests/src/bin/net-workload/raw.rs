//! The raw-socket commands of `net-workload`: ICMP through raw and ping sockets, packet
//! sockets, an IPv6 SYN with a destination options header, and a hand-made IPv6 SYN behind
//! any number of extension headers.
use std::{
    io::{Error, ErrorKind, Result},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// A socket(2) result as an owned descriptor.
fn socket(family: i32, kind: i32, protocol: i32) -> Result<OwnedFd> {
    // SAFETY: socket(2) with integer arguments; the descriptor is owned from here on.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(r: libc::c_int) -> Result<()> {
    if r < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The one's-complement sum of `data` (internet checksum), folded.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo request to an IPv4 address through a socket of `kind` (`SOCK_RAW`: a raw
/// ICMP socket; `SOCK_DGRAM`: a ping socket).
pub fn icmp_echo(addr: &str, kind: i32) -> Result<()> {
    let ip: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let fd = socket(libc::AF_INET, kind, libc::IPPROTO_ICMP)?;
    let mut msg = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let sum = checksum(&msg, 0).to_be_bytes();
    msg[2..4].copy_from_slice(&sum);
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid socket, a buffer of msg.len() bytes and a sockaddr_in of its size.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(r as libc::c_int)
}

/// A packet socket for every protocol.
pub fn packet_socket() -> Result<()> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)).map(drop)
}

fn sockaddr6(a: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: a.octets(),
        },
        sin6_scope_id: 0,
    }
}

/// A TCP connect over IPv6 whose packets carry a destination options header (one PadN option),
/// given up after `timeout`.
pub fn connect_with_dstopts(to: SocketAddr, timeout: Duration) -> Result<()> {
    let IpAddr::V6(ip) = to.ip() else {
        return Err(Error::new(ErrorKind::InvalidInput, "an IPv6 address"));
    };
    let fd = socket(
        libc::AF_INET6,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
        libc::IPPROTO_TCP,
    )?;
    // next header (filled by the kernel), length 0 (8 bytes), PadN of 4 bytes
    let opts = [0u8, 0, 1, 4, 0, 0, 0, 0];
    // SAFETY: a valid socket and an option buffer of its length.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_DSTOPTS,
            opts.as_ptr().cast(),
            opts.len() as libc::socklen_t,
        )
    })?;
    let sa = sockaddr6(ip, to.port());
    // SAFETY: a valid socket and a sockaddr_in6 of its size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r < 0 && Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(Error::last_os_error());
    }
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd.
    let n = unsafe { libc::poll(&raw mut p, 1, ms) };
    if n == 0 {
        return Err(Error::from(ErrorKind::TimedOut));
    }
    check(n)?;
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket and an int-sized option buffer.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    })?;
    if err != 0 {
        return Err(Error::from_raw_os_error(err));
    }
    Ok(())
}

/// One TCP SYN from `addr` to `addr`:`port` behind `n` destination options headers, written
/// whole (IPv6 header included) to a raw socket.
pub fn syn6(addr: &str, port: u16, n: usize) -> Result<()> {
    let ip: Ipv6Addr = addr
        .parse()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    const NEXT_DSTOPTS: u8 = 60;
    const NEXT_TCP: u8 = 6;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&ip.octets());
    pseudo.extend_from_slice(&ip.octets());
    pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, NEXT_TCP]);
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo, 0).to_be_bytes();
    tcp[16..18].copy_from_slice(&sum);
    let payload = 8 * n + tcp.len();
    let mut pkt = Vec::with_capacity(40 + payload);
    pkt.extend_from_slice(&[0x60, 0, 0, 0]);
    pkt.extend_from_slice(
        &u16::try_from(payload)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "too many headers"))?
            .to_be_bytes(),
    );
    pkt.push(if n == 0 { NEXT_TCP } else { NEXT_DSTOPTS });
    pkt.push(64);
    pkt.extend_from_slice(&ip.octets());
    pkt.extend_from_slice(&ip.octets());
    for i in 0..n {
        let next = if i + 1 == n { NEXT_TCP } else { NEXT_DSTOPTS };
        pkt.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    pkt.extend_from_slice(&tcp);
    // IPPROTO_RAW on IPv6 implies IPV6_HDRINCL: the packet is sent as written
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    let sa = sockaddr6(ip, 0);
    // SAFETY: a valid socket, the packet buffer and a sockaddr_in6 of its size.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    check(r as libc::c_int)
}
