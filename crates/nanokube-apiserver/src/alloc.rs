//! Service ClusterIP and NodePort allocation: unique, released on delete, rebuilt from
//! stored Services at start.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nanokube_api::ApiError;

/// An IPv4 range: its first address and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    base: u32,
    size: u32,
}

impl Range {
    fn parse(cidr: &str) -> Result<Range, String> {
        let (ip, bits) = cidr.split_once('/').ok_or_else(|| format!("invalid CIDR {cidr}"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("invalid CIDR {cidr}: {e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("invalid CIDR {cidr}: {e}"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("service CIDR {cidr}: prefix must be between /8 and /30"));
        }
        let size = 1u32 << (32 - bits);
        Ok(Range { base: u32::from(ip) & !(size - 1), size })
    }

    /// Whether `v` is a usable address of the range (not its network or broadcast one).
    fn holds(&self, v: u32) -> bool {
        v > self.base && v < self.base + self.size - 1
    }

    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), 32 - self.size.trailing_zeros())
    }
}

/// Allocates addresses from the Service range (`--service-cluster-ip-range`, the
/// default ServiceCIDR) and the ranges of the other ready ServiceCIDRs, and ports from
/// a port range.
#[derive(Debug)]
pub struct ServiceAllocator {
    primary: Range,
    /// Other ServiceCIDRs' ranges, used when the primary one is full (upstream's
    /// MetaAllocator takes the first with room).
    extra: Vec<Range>,
    used_ips: BTreeSet<u32>,
    ports: (u16, u16),
    used_ports: BTreeSet<u16>,
}

impl ServiceAllocator {
    /// A new allocator over `cidr` (e.g. `127.96.0.0/16`) and node ports `lo..=hi`.
    pub fn new(cidr: &str, ports: (u16, u16)) -> Result<Self, String> {
        Ok(ServiceAllocator { primary: Range::parse(cidr)?, extra: Vec::new(), used_ips: BTreeSet::new(), ports, used_ports: BTreeSet::new() })
    }

    /// The range as `address/prefix`.
    pub fn cidr(&self) -> String {
        self.primary.cidr()
    }

    /// Use these ranges (other ServiceCIDRs', as `address/prefix`) beside the primary one;
    /// ranges that do not parse, or repeat the primary, are left out.
    pub fn set_extra_ranges(&mut self, cidrs: &[String]) {
        self.extra = cidrs.iter().filter_map(|c| Range::parse(c).ok()).filter(|r| *r != self.primary).collect();
    }

    /// The first usable address (`.1`), given to the `kubernetes` Service.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.primary.base + 1)
    }

    /// The tenth address, reserved for cluster DNS as upstream conventionally does.
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.primary.base + 10)
    }

    /// The address as a number, if it is a usable one of any range.
    fn address(&self, ip: &str) -> Option<u32> {
        let v = u32::from(ip.parse::<Ipv4Addr>().ok()?);
        (self.primary.holds(v) || self.extra.iter().any(|r| r.holds(v))).then_some(v)
    }

    /// Mark an address used (at start, from stored Services).
    pub fn mark_ip(&mut self, ip: &str) {
        if let Ok(v) = ip.parse::<Ipv4Addr>() {
            self.used_ips.insert(u32::from(v));
        }
    }

    /// Mark a port used.
    pub fn mark_port(&mut self, port: u16) {
        self.used_ports.insert(port);
    }

    /// A free address of `range`: random probing, then a scan (upstream allocates
    /// randomly too). In the primary range the first 10 addresses are kept for
    /// well-known Services.
    fn free_in(&mut self, range: Range, reserved: u32) -> Option<u32> {
        let usable = range.size.saturating_sub(2);
        let first = (reserved + 1).min(usable.max(1));
        for _ in 0..64 {
            let o = first + fastrand::u32(..usable.saturating_sub(first - 1).max(1));
            if o < range.size - 1 && self.used_ips.insert(range.base + o) {
                return Some(range.base + o);
            }
        }
        (first..range.size.saturating_sub(1)).map(|o| range.base + o).find(|v| self.used_ips.insert(*v))
    }

    /// Allocate a specific address or any free one.
    pub fn allocate_ip(&mut self, requested: Option<&str>) -> Result<Ipv4Addr, ApiError> {
        match requested {
            Some(r) => {
                let v = self.address(r).ok_or_else(|| {
                    ApiError::new(422, "Invalid", format!("Service is invalid: spec.clusterIPs: Invalid value: [\"{r}\"]: failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {}", self.primary.cidr()))
                })?;
                if !self.used_ips.insert(v) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("Service is invalid: spec.clusterIPs: Invalid value: [\"{r}\"]: failed to allocate IP {r}: provided IP is already allocated"),
                    ));
                }
                Ok(Ipv4Addr::from(v))
            }
            None => {
                let primary = self.primary;
                if let Some(v) = self.free_in(primary, 10) {
                    return Ok(Ipv4Addr::from(v));
                }
                for range in self.extra.clone() {
                    if let Some(v) = self.free_in(range, 0) {
                        return Ok(Ipv4Addr::from(v));
                    }
                }
                Err(ApiError::internal("failed to allocate a serviceIP: range is full"))
            }
        }
    }

    /// Release an address.
    pub fn release_ip(&mut self, ip: &str) {
        if let Ok(v) = ip.parse::<Ipv4Addr>() {
            self.used_ips.remove(&u32::from(v));
        }
    }

    /// Allocate a specific node port or any free one.
    pub fn allocate_port(&mut self, requested: Option<u16>) -> Result<u16, ApiError> {
        let (lo, hi) = self.ports;
        match requested {
            Some(p) if p < lo || p > hi => Err(ApiError::new(422, "Invalid", format!("Service is invalid: spec.ports[0].nodePort: Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"))),
            Some(p) => {
                if self.used_ports.insert(p) {
                    Ok(p)
                } else {
                    Err(ApiError::new(422, "Invalid", format!("Service is invalid: spec.ports[0].nodePort: Invalid value: {p}: provided port is already allocated")))
                }
            }
            None => {
                let n = (hi - lo) as u32 + 1;
                for _ in 0..64 {
                    let p = lo + fastrand::u32(..n) as u16;
                    if self.used_ports.insert(p) {
                        return Ok(p);
                    }
                }
                (lo..=hi).find(|p| self.used_ports.insert(*p)).ok_or_else(|| ApiError::internal("failed to allocate a nodePort: range is full"))
            }
        }
    }

    /// Release a node port.
    pub fn release_port(&mut self, port: u16) {
        self.used_ports.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_addresses_in_range() {
        let mut a = ServiceAllocator::new("127.96.0.0/16", (30000, 32767)).unwrap();
        assert_eq!(a.first_ip().to_string(), "127.96.0.1");
        assert_eq!(a.allocate_ip(Some("127.96.0.1")).unwrap().to_string(), "127.96.0.1");
        assert!(a.allocate_ip(Some("127.96.0.1")).is_err());
        assert!(a.allocate_ip(Some("10.0.0.1")).is_err());
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let ip = a.allocate_ip(None).unwrap();
            assert!(ip.to_string().starts_with("127.96."));
            assert!(seen.insert(ip));
        }
        a.release_ip("127.96.0.1");
        assert!(a.allocate_ip(Some("127.96.0.1")).is_ok());
    }

    #[test]
    fn other_ranges_take_over_when_the_primary_is_full() {
        // A /28: .11–.14 are the dynamic addresses (.1–.10 are kept for well-known ones).
        let mut a = ServiceAllocator::new("127.96.0.0/28", (30000, 32767)).unwrap();
        let dynamic: Vec<Ipv4Addr> = (0..4).map(|_| a.allocate_ip(None).unwrap()).collect();
        assert!(dynamic.iter().all(|ip| ip.octets()[3] >= 11 && ip.octets()[3] <= 14), "{dynamic:?}");
        assert!(a.allocate_ip(None).is_err());
        assert!(a.allocate_ip(Some("127.98.0.5")).is_err());
        a.set_extra_ranges(&["127.98.0.0/24".to_string()]);
        let next = a.allocate_ip(None).unwrap();
        assert_eq!(&next.octets()[..3], &[127, 98, 0]);
        assert_eq!(a.allocate_ip(Some("127.98.0.5")).unwrap().to_string(), "127.98.0.5");
        assert!(a.allocate_ip(Some("127.98.0.255")).is_err(), "the broadcast address");
    }

    #[test]
    fn node_ports() {
        let mut a = ServiceAllocator::new("127.96.0.0/16", (30000, 30002)).unwrap();
        let ps: BTreeSet<u16> = (0..3).map(|_| a.allocate_port(None).unwrap()).collect();
        assert_eq!(ps.len(), 3);
        assert!(a.allocate_port(None).is_err());
        assert!(a.allocate_port(Some(29999)).is_err());
        a.release_port(30001);
        assert_eq!(a.allocate_port(Some(30001)).unwrap(), 30001);
    }
}
