//! Service ClusterIP and NodePort allocation: unique, released on delete, rebuilt from
//! stored Services at start.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nanokube_api::ApiError;

/// Allocates addresses from an IPv4 range and ports from a port range.
#[derive(Debug)]
pub struct ServiceAllocator {
    base: u32,
    size: u32,
    used_ips: BTreeSet<u32>,
    ports: (u16, u16),
    used_ports: BTreeSet<u16>,
}

impl ServiceAllocator {
    /// A new allocator over `cidr` (e.g. `127.96.0.0/16`) and node ports `lo..=hi`.
    pub fn new(cidr: &str, ports: (u16, u16)) -> Result<Self, String> {
        let (ip, bits) = cidr.split_once('/').ok_or_else(|| format!("invalid CIDR {cidr}"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("invalid CIDR {cidr}: {e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("invalid CIDR {cidr}: {e}"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("service CIDR {cidr}: prefix must be between /8 and /30"));
        }
        let size = 1u32 << (32 - bits);
        let base = u32::from(ip) & !(size - 1);
        Ok(ServiceAllocator { base, size, used_ips: BTreeSet::new(), ports, used_ports: BTreeSet::new() })
    }

    /// The range as `address/prefix`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), 32 - self.size.trailing_zeros())
    }

    /// The first usable address (`.1`), given to the `kubernetes` Service.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The tenth address, reserved for cluster DNS as upstream conventionally does.
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 10)
    }

    fn offset(&self, ip: &str) -> Option<u32> {
        let ip: Ipv4Addr = ip.parse().ok()?;
        let v = u32::from(ip);
        (v > self.base && v < self.base + self.size - 1).then(|| v - self.base)
    }

    /// Mark an address used (at start, from stored Services).
    pub fn mark_ip(&mut self, ip: &str) {
        if let Some(o) = self.offset(ip) {
            self.used_ips.insert(o);
        }
    }

    /// Mark a port used.
    pub fn mark_port(&mut self, port: u16) {
        self.used_ports.insert(port);
    }

    /// Allocate a specific address or any free one.
    pub fn allocate_ip(&mut self, requested: Option<&str>) -> Result<Ipv4Addr, ApiError> {
        match requested {
            Some(r) => {
                let o = self.offset(r).ok_or_else(|| {
                    ApiError::new(422, "Invalid", format!("Service is invalid: spec.clusterIPs: Invalid value: [\"{r}\"]: failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {}/{}", Ipv4Addr::from(self.base), 32 - self.size.trailing_zeros()))
                })?;
                if !self.used_ips.insert(o) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("Service is invalid: spec.clusterIPs: Invalid value: [\"{r}\"]: failed to allocate IP {r}: provided IP is already allocated"),
                    ));
                }
                Ok(Ipv4Addr::from(self.base + o))
            }
            None => {
                // Random probing, then a scan: upstream allocates randomly too.
                // The first 10 addresses are reserved for well-known Services.
                let usable = self.size.saturating_sub(2);
                for _ in 0..64 {
                    let o = 11 + fastrand::u32(..usable.saturating_sub(10).max(1));
                    if o < self.size - 1 && self.used_ips.insert(o) {
                        return Ok(Ipv4Addr::from(self.base + o));
                    }
                }
                for o in 11..self.size - 1 {
                    if self.used_ips.insert(o) {
                        return Ok(Ipv4Addr::from(self.base + o));
                    }
                }
                Err(ApiError::internal("failed to allocate a serviceIP: range is full"))
            }
        }
    }

    /// Release an address.
    pub fn release_ip(&mut self, ip: &str) {
        if let Some(o) = self.offset(ip) {
            self.used_ips.remove(&o);
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
