//! `/proc/PID/net/{raw,raw6,icmp,icmp6}`: one line per raw or ping socket of the process's
//! network namespace. ferry reads a socket's peer there, because getpeername(2) says ENOTCONN
//! for a raw or ping socket connected with port 0 (the usual way), although it is connected.
//!
//! A line: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
//! inode ...`, addresses as `ADDR:PORT` in hex, ADDR being the `__be32` words of the address
//! printed as host-order integers (8 hex digits for IPv4, four times that for IPv6), PORT in
//! host order.

use crate::ParseError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const FILE: &str = "net/raw";

/// One socket line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's `sk_state` (1 TCP_ESTABLISHED: connected, 7 TCP_CLOSE).
    pub state: u8,
    pub inode: u64,
}

fn addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(a.get(8 * i..8 * i + 8)?, 16).ok()?;
        // The kernel printed the big-endian word as a host-order (little-endian) integer.
        Some(w.to_le_bytes())
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parse the whole file (its header line first).
pub fn parse_net_sockets(text: &str) -> Result<Vec<NetSocket>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            return Err(ParseError::TooFewFields { file: FILE, got: f.len(), want: 10 });
        }
        let bad = |field: &'static str, value: &str| ParseError::BadField { file: FILE, field, value: value.into() };
        out.push(NetSocket {
            local: addr(f[1]).ok_or_else(|| bad("local_address", f[1]))?,
            remote: addr(f[2]).ok_or_else(|| bad("rem_address", f[2]))?,
            state: u8::from_str_radix(f[3], 16).map_err(|_| bad("st", f[3]))?,
            inode: f[9].parse().map_err(|_| bad("inode", f[9]))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_lines() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  253: 0300347F:00FD 0200007F:0000 01 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0\n";
        let s = parse_net_sockets(v4).expect("parses");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].local, "127.52.0.3:253".parse().expect("addr"));
        assert_eq!(s[0].remote, "127.0.0.2:0".parse().expect("addr"));
        assert_eq!((s[0].state, s[0].inode), (1, 123456));
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  58: 00000000000000000000000001000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n";
        let s = parse_net_sockets(v6).expect("parses");
        assert_eq!(s[0].local, "[::1]:58".parse().expect("addr"));
        assert_eq!((s[0].state, s[0].inode), (7, 99));
    }

    #[test]
    fn refuses_a_short_line() {
        assert!(parse_net_sockets("header\n1: 0100007F:0000\n").is_err());
    }
}
