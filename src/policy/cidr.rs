//! Address ranges for `source_ip`: IPv4 and IPv6 CIDRs. An IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`), in the config or on a connection, is IPv4.

use std::net::IpAddr;

#[derive(Debug, Default)]
pub(crate) struct Cidrs {
    /// (network, mask)
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl Cidrs {
    pub(super) fn parse(items: &[String]) -> Result<Cidrs, String> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for item in items {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item.as_str(), None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("bad address in {item:?}"))?;
            let len: Option<u32> = match len {
                None => None,
                Some(l)
                    if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && l.len() <= 3 =>
                {
                    Some(
                        l.parse()
                            .map_err(|_| format!("bad prefix length in {item:?}"))?,
                    )
                }
                Some(_) => return Err(format!("bad prefix length in {item:?}")),
            };
            match unmap(addr) {
                (IpAddr::V4(a), mapped) => {
                    let len = match (len, mapped) {
                        (None, _) => 32,
                        (Some(l), false) if l <= 32 => l,
                        (Some(l), true) if (96..=128).contains(&l) => l - 96,
                        _ => return Err(format!("prefix length out of range in {item:?}")),
                    };
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    let net = u32::from(a);
                    if net & !mask != 0 {
                        return Err(format!("host bits set in {item:?}"));
                    }
                    v4.push((net, mask));
                }
                (IpAddr::V6(a), _) => {
                    let len = len.unwrap_or(128);
                    if len > 128 {
                        return Err(format!("prefix length out of range in {item:?}"));
                    }
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                    let net = u128::from(a);
                    if net & !mask != 0 {
                        return Err(format!("host bits set in {item:?}"));
                    }
                    v6.push((net, mask));
                }
            }
        }
        Ok(Cidrs {
            v4: v4.into_boxed_slice(),
            v6: v6.into_boxed_slice(),
        })
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        match unmap(ip).0 {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|(net, mask)| a & mask == *net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|(net, mask)| a & mask == *net)
            }
        }
    }
}

/// IPv4-mapped IPv6 as IPv4; the flag says it was mapped.
fn unmap(ip: IpAddr) -> (IpAddr, bool) {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), true),
            None => (IpAddr::V6(v6), false),
        },
        v4 => (v4, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_v6_and_mapped() {
        let c = Cidrs::parse(&[
            "10.0.0.0/8".into(),
            "2001:db8::/32".into(),
            "127.0.0.1".into(),
            "::ffff:192.168.0.0/112".into(),
        ])
        .unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("2001:db8:1::1")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(c.contains(ip("127.0.0.1")));
        assert!(!c.contains(ip("127.0.0.2")));
        assert!(c.contains(ip("192.168.3.4")));
        assert!(!c.contains(ip("::1")));
    }

    #[test]
    fn zero_length_matches_all_of_a_family() {
        let c = Cidrs::parse(&["0.0.0.0/0".into()]).unwrap();
        assert!(c.contains(ip("8.8.8.8")));
        assert!(!c.contains(ip("::2")));
        let c = Cidrs::parse(&["::/0".into()]).unwrap();
        assert!(c.contains(ip("::2")));
    }

    #[test]
    fn bad_cidrs() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
            "::ffff:10.0.0.0/95",
            "host",
            "",
        ] {
            assert!(Cidrs::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
