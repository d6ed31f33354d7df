//! Where a webhook may send: not to this host, its local networks or the cloud's metadata
//! address, unless `realtime.webhook_allowed_hosts` names the range. The worker is a
//! superuser process inside the database server: a URL that reached `localhost:5432`, an
//! internal admin page or `169.254.169.254` would lend a webhook's owner that position.
//!
//! Checked on the addresses a name resolves to, by the resolver the HTTP client connects
//! with: what is checked is what is connected to, so a name cannot be rebound in between.
//! URLs that name an address are checked before the request. Redirects are never followed.

use ipnet::IpNet;
use reqwest::dns::{Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The address ranges a receiver may be at.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Allowed even though not public.
    allowed: Vec<IpNet>,
}

impl Guard {
    pub fn new(allowed: Vec<IpNet>) -> Guard {
        Guard { allowed }
    }

    /// Whether a request may be sent to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Why `url` may not be requested as it stands, before any name is resolved: a scheme
    /// other than http(s), credentials in it, or an address that is refused.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme \"{}\" is not http or https", url.scheme()));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the URL names no host".into()),
        };
        match self.permits(ip) {
            true => Ok(()),
            false => Err(refused(ip)),
        }
    }
}

fn refused(ip: IpAddr) -> String {
    format!("refused: {ip} is not a public address (allow it with realtime.webhook_allowed_hosts)")
}

/// Whether `ip` is an address on the internet at large: not loopback, private, link-local,
/// shared (carrier-grade NAT), unspecified, broadcast, multicast, documentation or reserved.
pub fn public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b
                || first == 0x2002)
        }
    }
}

/// The HTTP client's resolver: the system's answer, less the addresses `Guard` refuses.
pub struct Resolver(pub Arc<Guard>);

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (kept, refused_ips): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| guard.permits(a.ip()));
            if kept.is_empty() {
                let why = match refused_ips.first() {
                    Some(a) => format!("{host} resolves to {}: {}", a.ip(), refused(a.ip())),
                    None => format!("{host} resolves to no address"),
                };
                return Err(why.into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_unless_allowed() {
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                !Guard::default().permits(ip(refused)),
                "{refused} permitted"
            );
        }
        for public in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "2606:4700::1111"] {
            assert!(Guard::default().permits(ip(public)), "{public} refused");
        }
        let guard = Guard::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]);
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("::ffff:127.0.0.1")));
        assert!(guard.permits(ip("10.200.0.1")));
        assert!(!guard.permits(ip("127.0.0.2")));
        assert!(!guard.permits(ip("169.254.169.254")));
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let guard = Guard::default();
        let check = |u: &str| guard.check_url(&reqwest::Url::parse(u).unwrap());
        assert!(check("https://example.com/hook").is_ok());
        assert!(check("http://1.1.1.1:8080/hook").is_ok());
        assert!(check("http://127.0.0.1:5432/")
            .unwrap_err()
            .contains("not a public address"));
        assert!(check("http://[::1]/").is_err());
        assert!(check("http://169.254.169.254/latest/meta-data").is_err());
        assert!(check("ftp://example.com/").unwrap_err().contains("scheme"));
        assert!(check("file:///etc/passwd").is_err());
    }

    #[test]
    fn names_are_checked_on_what_they_resolve_to() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let refusing = Resolver(Arc::new(Guard::default()));
            let err = refusing
                .resolve("localhost".parse().unwrap())
                .await
                .err()
                .expect("localhost refused");
            assert!(err.to_string().contains("not a public address"), "{err}");
            let allowing = Resolver(Arc::new(Guard::new(vec![
                "127.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ])));
            let addrs: Vec<_> = allowing
                .resolve("localhost".parse().unwrap())
                .await
                .expect("allowed")
                .collect();
            assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
        });
    }
}
