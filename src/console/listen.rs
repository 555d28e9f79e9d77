//! Where the console listens, and which `Host` headers it answers.
//!
//! The console has no login and no TLS of its own: whoever reaches it reads what the operator
//! credential may read. So it listens on loopback unless the operator says otherwise, and it
//! answers only requests whose `Host` names the address it listens on. The second rule is the
//! defence against DNS rebinding: a web page on `evil.example` whose name is made to resolve
//! to 127.0.0.1 reaches the port, but its requests carry `Host: evil.example:8080`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::ConsoleError;

/// `--listen`: `IP:PORT` (`[::1]:PORT` for IPv6), or `localhost:PORT` for 127.0.0.1.
pub(crate) fn parse_listen(given: &str) -> Result<SocketAddr, ConsoleError> {
    if let Ok(addr) = given.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = given.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    Err(ConsoleError::Usage(format!(
        "--listen `{}` is not IP:PORT (e.g. 127.0.0.1:8080, [::1]:8080) or localhost:PORT",
        given.chars().take(100).collect::<String>()
    )))
}

/// Refuses a non-loopback address unless the operator passed `--allow-remote`.
pub(crate) fn check_exposure(addr: SocketAddr, allow_remote: bool) -> Result<(), ConsoleError> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(ConsoleError::Usage(format!(
        "--listen {addr} is not a loopback address: the console has no login and no TLS, so \
         anyone who reaches it reads what the operator credential may read. Keep it on \
         127.0.0.1 and reach it through an SSH tunnel (ssh -L 8080:127.0.0.1:8080 HOST), or \
         pass --allow-remote to accept that"
    )))
}

/// Splits a `Host` header (or an `--accept-host` value) into its lowercase name and its port,
/// if it has one. IPv6 literals keep their brackets (`[::1]`). `None` when it is not a host.
fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &value[..end + 2];
        match &rest[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    let ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    if !ok {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
}

/// The `Host` values the console answers: the address it is bound to (and `localhost` when
/// that is loopback), plus every `--accept-host`.
#[derive(Debug, Clone)]
pub(crate) struct HostCheck {
    allowed: HashSet<(String, u16)>,
}

impl HostCheck {
    /// For the bound address (its real port, when `--listen` asked for port 0) and the
    /// operator's `--accept-host` values (`HOST[:PORT]`, the port defaulting to the bound one).
    pub(crate) fn new(bound: SocketAddr, extra: &[String]) -> Result<Self, ConsoleError> {
        let port = bound.port();
        let mut allowed = HashSet::new();
        let literal = match bound.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        allowed.insert((literal, port));
        if bound.ip().is_loopback() {
            allowed.insert(("localhost".to_string(), port));
        }
        for given in extra {
            let (host, p) = split_host(given).ok_or_else(|| {
                ConsoleError::Usage(format!(
                    "--accept-host `{}` is not HOST or HOST:PORT",
                    given.chars().take(100).collect::<String>()
                ))
            })?;
            allowed.insert((host, p.unwrap_or(port)));
        }
        Ok(HostCheck { allowed })
    }

    /// Whether a request with this `Host` header is answered. A header without a port means
    /// port 80, as the browser would have left it out only for that.
    pub(crate) fn accepts(&self, header: Option<&str>) -> bool {
        match header.and_then(split_host) {
            Some((host, port)) => self.allowed.contains(&(host, port.unwrap_or(80))),
            None => false,
        }
    }

    /// The accepted values, sorted, for the log.
    pub(crate) fn describe(&self) -> String {
        let mut v: Vec<String> = self
            .allowed
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        v.sort();
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_ip_and_port_or_localhost() {
        assert_eq!(
            parse_listen("127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9000").unwrap(),
            "[::1]:9000".parse().unwrap()
        );
        for bad in ["8080", "example.com:80", "127.0.0.1", "localhost:x", ""] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_non_loopback_address_needs_allow_remote() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = check_exposure(any, false).unwrap_err().to_string();
        assert!(
            err.contains("--allow-remote") && err.contains("no login"),
            "{err}"
        );
        assert!(check_exposure(any, true).is_ok());
        assert!(check_exposure("127.0.0.2:1".parse().unwrap(), false).is_ok());
        assert!(check_exposure("[::1]:1".parse().unwrap(), false).is_ok());
        assert!(check_exposure("10.0.0.1:1".parse().unwrap(), false).is_err());
    }

    #[test]
    fn only_the_listen_address_and_localhost_pass_the_host_check() {
        let c = HostCheck::new("127.0.0.1:8080".parse().unwrap(), &[]).unwrap();
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080"] {
            assert!(c.accepts(Some(ok)), "{ok}");
        }
        for refused in [
            None,
            Some(""),
            Some("evil.example:8080"),
            Some("localhost:8081"),
            Some("localhost"),
            Some("127.0.0.1"),
            Some("localhost.:8080"),
            Some("127.0.0.1:8080@evil"),
            Some("[::1]:8080"),
        ] {
            assert!(!c.accepts(refused), "{refused:?}");
        }
    }

    #[test]
    fn accept_host_adds_names_with_the_listen_port_by_default() {
        let c = HostCheck::new(
            "[::1]:8080".parse().unwrap(),
            &["ca.example".into(), "localhost:9000".into()],
        )
        .unwrap();
        for ok in [
            "[::1]:8080",
            "localhost:8080",
            "ca.example:8080",
            "localhost:9000",
        ] {
            assert!(c.accepts(Some(ok)), "{ok}");
        }
        assert!(!c.accepts(Some("ca.example:9000")));
        assert!(HostCheck::new("127.0.0.1:1".parse().unwrap(), &["a b".into()]).is_err());
        assert!(HostCheck::new("127.0.0.1:1".parse().unwrap(), &["a:x".into()]).is_err());
        let port80 = HostCheck::new("127.0.0.1:80".parse().unwrap(), &[]).unwrap();
        assert!(port80.accepts(Some("localhost")));
    }
}
