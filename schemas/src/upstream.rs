//! Where a flavour's upstream may be: the allow-list the processor checks configs against
//! (`--allowed-upstreams`) and the router checks every upstream against before it
//! connects (`--allow-upstream`), so a config written to the topic directly cannot send
//! traffic anywhere either. Link-local and cloud metadata addresses are refused whatever
//! the list says: they are where credentials live, never where a flavour does.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Names of metadata services, refused as hosts.
const METADATA_HOSTS: [&str; 4] = [
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// One allowed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamRule {
    /// Exactly this host name (lower case).
    Host(String),
    /// Any host ending in this suffix, given as `*.example.com` or `.example.com`.
    Suffix(String),
    /// Any IP address in this network, e.g. `10.0.0.0/8`, or one address.
    Net(IpNet),
}

/// Why a pattern is not a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream pattern {0:?} is not a host, a suffix (*.example.com) or a network (10.0.0.0/8)")]
pub struct UpstreamRuleError(pub String);

impl FromStr for UpstreamRule {
    type Err = UpstreamRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p = s.trim().to_ascii_lowercase();
        if let Ok(net) = p.parse::<IpNet>() {
            return Ok(Self::Net(net));
        }
        if let Ok(ip) = p.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        let valid = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        match p.strip_prefix("*.").or_else(|| p.strip_prefix('.')) {
            Some(suffix) if valid(suffix) => Ok(Self::Suffix(format!(".{suffix}"))),
            None if valid(&p) => Ok(Self::Host(p)),
            _ => Err(UpstreamRuleError(s.to_string())),
        }
    }
}

impl fmt::Display for UpstreamRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Net(n) => write!(f, "{n}"),
        }
    }
}

/// Why an upstream is refused: the rule it breaks, for the error a user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {upstream:?} is not allowed: {rule}")]
pub struct UpstreamRefusal {
    /// The URL or address refused.
    pub upstream: String,
    /// The rule it breaks.
    pub rule: String,
}

/// The allowed upstreams: empty allows every host but the refused ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<UpstreamRule>,
}

impl AllowList {
    /// The list of `patterns` (hosts, `*.suffix`, networks).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, UpstreamRuleError> {
        let rules = patterns
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    fn described(&self) -> String {
        if self.rules.is_empty() {
            "any host".into()
        } else {
            self.rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// Whether `url` (an `http://` or `https://` URL) names an allowed upstream.
    pub fn check_url(&self, url: &str) -> Result<(), UpstreamRefusal> {
        let refuse = |rule: String| UpstreamRefusal {
            upstream: url.to_string(),
            rule,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| refuse(format!("it is not a URL ({e})")))?;
        let host = uri
            .host()
            .ok_or_else(|| refuse("it names no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_ip(ip).map_err(|r| refuse(r.rule));
        }
        // Numbers that resolvers read as IPv4 addresses (`2852039166`, `0xa9fea9fe`,
        // `169.254.43518`) are not host names: refused rather than resolved blind.
        let numeric = host.split('.').all(|label| {
            label.bytes().all(|b| b.is_ascii_digit())
                || label
                    .strip_prefix("0x")
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if numeric {
            return Err(refuse(format!(
                "{host} is an IPv4 address in a non-standard form (write it as a.b.c.d)"
            )));
        }
        if METADATA_HOSTS.contains(&host.as_str()) {
            return Err(refuse(format!(
                "{host} is a cloud metadata service (always refused)"
            )));
        }
        let allowed = self.rules.is_empty()
            || self.rules.iter().any(|r| match r {
                UpstreamRule::Host(h) => *h == host,
                UpstreamRule::Suffix(s) => host.ends_with(s.as_str()),
                UpstreamRule::Net(_) => false,
            });
        if allowed {
            Ok(())
        } else {
            Err(refuse(format!(
                "host {host} is outside the allowed upstreams ({})",
                self.described()
            )))
        }
    }

    /// Whether address `ip` may be connected to: never link-local or metadata; within a
    /// network rule when the list has any rules.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), UpstreamRefusal> {
        let refuse = |rule: String| UpstreamRefusal {
            upstream: ip.to_string(),
            rule,
        };
        if always_refused(ip) {
            return Err(refuse(format!(
                "{ip} is link-local or a cloud metadata address (always refused)"
            )));
        }
        let allowed = self.rules.is_empty()
            || self.rules.iter().any(|r| match r {
                UpstreamRule::Net(n) => n.contains(&ip),
                _ => false,
            });
        if allowed {
            Ok(())
        } else {
            Err(refuse(format!(
                "address {ip} is outside the allowed upstreams ({})",
                self.described()
            )))
        }
    }
}

impl AllowList {
    /// Whether an address an allowed host name resolved to may be connected to: never a
    /// link-local or metadata address (a name pointing there is refused as the address
    /// itself would be).
    pub fn check_resolved(&self, ip: IpAddr) -> Result<(), UpstreamRefusal> {
        if always_refused(ip) {
            Err(UpstreamRefusal {
                upstream: ip.to_string(),
                rule: format!("{ip} is link-local or a cloud metadata address (always refused)"),
            })
        } else {
            Ok(())
        }
    }
}

/// Link-local addresses (169.254.0.0/16, fe80::/10, which hold the cloud metadata
/// services) and the metadata addresses outside them.
fn always_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            // fd00:ec2::254 is EC2's metadata service over IPv6.
            const EC2_METADATA: [u16; 8] = [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254];
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.segments() == EC2_METADATA
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| always_refused(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_upstreams_are_always_refused() {
        let any = AllowList::default();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:8080/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://100.100.100.200/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let e = any.check_url(url).expect_err(url);
            assert!(e.rule.contains("always refused"), "{url}: {e}");
        }
        for url in [
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://169.254.43518/",
        ] {
            let e = any.check_url(url).expect_err(url);
            assert!(e.rule.contains("non-standard"), "{url}: {e}");
        }
        for ip in ["169.254.169.254", "fe80::1"] {
            assert!(any.check_ip(ip.parse().expect("ip")).is_err(), "{ip}");
        }
        assert_eq!(any.check_url("http://127.0.0.1:8100/precision-30"), Ok(()));
    }

    #[test]
    fn a_list_allows_its_hosts_suffixes_and_networks_only() {
        let list = AllowList::new(&["flavours.internal", "*.svc.cluster.local", "10.0.0.0/8"])
            .expect("valid patterns");
        for ok in [
            "http://flavours.internal/x",
            "http://full.shop.svc.cluster.local:8080/",
            "http://10.1.2.3:9000/",
        ] {
            assert_eq!(list.check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://example.com/",
            "http://evil.internal/",
            "http://192.168.1.1/",
            "http://svc.cluster.local.evil.com/",
        ] {
            assert!(list.check_url(bad).is_err(), "{bad}");
        }
        assert!(AllowList::new(&["bad pattern!"]).is_err());
    }
}
