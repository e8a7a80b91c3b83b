//! `[server] max_connections_per_address`: how many connections one client address may
//! hold at once, so that one host cannot take every place among `max_connections` while
//! everyone else waits in the listen backlog.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::auth::address_block;

/// Open connections by client address block, shared by every request thread.
#[derive(Default)]
pub struct OpenByAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Read from the snapshot as each connection is accepted, so that a reload applies to
/// the connections accepted after it.
pub struct AddressLimit<'a> {
    pub max: Option<usize>,
    /// Load balancers and other proxies speak for many clients: never limited.
    pub exempt: &'a [IpNet],
}

/// Whether an accepted connection may be served, and whether it is to be counted.
pub enum Admission {
    /// Counted against its address until dropped.
    Counted(AddressPlace),
    /// No limit applies (none set, or a trusted proxy).
    Unlimited,
    /// Its address already holds as many connections as allowed.
    Refused,
}

impl OpenByAddress {
    /// Counts a connection from `peer` against its address (an IPv6 address by its /64,
    /// whose addresses one subscriber picks at will), or refuses it.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, limit: &AddressLimit) -> Admission {
        let Some(max) = limit.max else {
            return Admission::Unlimited;
        };
        let peer = peer.to_canonical();
        if limit.exempt.iter().any(|net| net.contains(&peer)) {
            return Admission::Unlimited;
        }
        let block = address_block(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(block).or_default();
        if *count >= max {
            return Admission::Refused;
        }
        *count += 1;
        Admission::Counted(AddressPlace {
            open: self.clone(),
            block,
        })
    }
}

/// One connection's place among its address's; freed when dropped.
pub struct AddressPlace {
    open: Arc<OpenByAddress>,
    block: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.open.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.block) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(admission: Admission) -> AddressPlace {
        match admission {
            Admission::Counted(place) => place,
            _ => panic!("not counted"),
        }
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_places_back() {
        let open = Arc::new(OpenByAddress::default());
        let limit = AddressLimit {
            max: Some(2),
            exempt: &[],
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counted(open.admit(ip, &limit));
        let _second = counted(open.admit(ip, &limit));
        assert!(matches!(open.admit(ip, &limit), Admission::Refused));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(matches!(open.admit(mapped, &limit), Admission::Refused));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let _third = counted(open.admit(other, &limit));
        drop(first);
        let _again = counted(open.admit(ip, &limit));
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let open = Arc::new(OpenByAddress::default());
        let limit = AddressLimit {
            max: Some(1),
            exempt: &[],
        };
        let _held = counted(open.admit("2001:db8::1".parse().unwrap(), &limit));
        let same_block: IpAddr = "2001:db8::ffff:1:2:3".parse().unwrap();
        assert!(matches!(open.admit(same_block, &limit), Admission::Refused));
        let _next_block = counted(open.admit("2001:db8:0:1::1".parse().unwrap(), &limit));
    }

    #[test]
    fn trusted_proxies_and_no_limit_are_never_counted() {
        let open = Arc::new(OpenByAddress::default());
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let limit = AddressLimit {
            max: Some(1),
            exempt: &proxies,
        };
        for _ in 0..3 {
            assert!(matches!(
                open.admit("10.1.2.3".parse().unwrap(), &limit),
                Admission::Unlimited
            ));
        }
        let none = AddressLimit {
            max: None,
            exempt: &[],
        };
        assert!(matches!(
            open.admit("192.0.2.1".parse().unwrap(), &none),
            Admission::Unlimited
        ));
        assert!(open.open.lock().unwrap().is_empty());
    }
}
