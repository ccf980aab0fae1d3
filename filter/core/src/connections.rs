//! What the shell knows of each downstream connection: its source address and peer
//! identity, read once per connection instead of once per request. Sidecars keep long-lived
//! (HTTP/2, multiplexed) connections to the gateway, so most requests find their
//! connection here and the log callback reads one property (`connection.id`) instead of
//! two (`source.address`, `connection.uri_san_peer_certificate`).
//!
//! Envoy numbers connections from one counter per process, so an id is never reused and an
//! entry can never describe another connection. A reloaded VM starts empty. The premise is
//! that `source.address` is the connection's: true for the installed gateway (its HTTP
//! connection manager trusts no `X-Forwarded-For` hop); an Envoy whose connection manager
//! takes the client address from `X-Forwarded-For` (`use_remote_address: false`) sets it
//! per request, and this cache would keep the first request's. The filter sees no connection close:
//! entries age out instead, in two generations. New entries go into the young one; when it
//! holds [`MAX_CONNECTIONS`] / 2, the old generation is dropped and the young one becomes
//! old. A lookup that finds its entry in the old generation moves it back, so a connection
//! in use stays, and one closed long ago is dropped after two turns. Forgetting is
//! harmless: the shell then reads the two properties again.

use hashbrown::HashMap;

use crate::edge::{parse_source_ip, MAX_PRINCIPAL_LEN};
use core::net::IpAddr;

/// Connections remembered at most (both generations).
pub const MAX_CONNECTIONS: usize = 8_192;
/// Longest source address kept: `[` IPv6 with an embedded IPv4 `]:65535` is 53 bytes.
/// Longer ones are no address `parse_source_ip` accepts (and are not parsed).
pub const MAX_SOURCE_LEN: usize = 64;

/// One connection's facts: its source address as parsed once for the connection, and its
/// peer identity as Envoy's property value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// `source.address` (`ip:port`) as [`parse_source_ip`] reads it; `None` when Envoy has
    /// none or it is no address.
    pub source_ip: Option<IpAddr>,
    /// `connection.uri_san_peer_certificate`; `None` without a verified peer.
    pub principal: Option<Vec<u8>>,
}

impl Peer {
    /// A connection's facts as read, without values no edge would use (an overlong source
    /// or principal counts as none there too), so an entry holds at most an address and
    /// [`MAX_PRINCIPAL_LEN`] bytes whatever a peer certificate says.
    pub fn new(source: Option<Vec<u8>>, principal: Option<Vec<u8>>) -> Peer {
        Peer {
            source_ip: source
                .filter(|s| s.len() <= MAX_SOURCE_LEN)
                .and_then(|s| parse_source_ip(&s)),
            principal: principal.filter(|p| p.len() <= MAX_PRINCIPAL_LEN),
        }
    }
}

#[derive(Debug, Default)]
pub struct Connections {
    young: HashMap<u64, Peer>,
    old: HashMap<u64, Peer>,
    /// Lookups answered here / not.
    pub hits: u64,
    pub misses: u64,
}

impl Connections {
    /// The connection id as Envoy serializes `connection.id` (a little-endian u64).
    pub fn id_of(value: &[u8]) -> Option<u64> {
        <[u8; 8]>::try_from(value).ok().map(u64::from_le_bytes)
    }

    /// The facts of connection `id`: remembered, or got from `read` (the property reads)
    /// and remembered. Allocates nothing when the connection is known.
    pub fn get_or_read(&mut self, id: u64, read: impl FnOnce() -> Peer) -> &Peer {
        if let Some(peer) = self.old.remove(&id) {
            self.hits += 1;
            self.insert(id, peer);
        } else if self.young.contains_key(&id) {
            self.hits += 1;
        } else {
            self.misses += 1;
            self.insert(id, read());
        }
        // Present by now: `or_default` never inserts.
        self.young.entry(id).or_default()
    }

    /// Remembers connection `id`'s facts.
    pub fn insert(&mut self, id: u64, peer: Peer) {
        if self.young.len() >= MAX_CONNECTIONS / 2 && !self.young.contains_key(&id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(id, peer);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn peer(source: &str) -> Peer {
        Peer::new(Some(source.as_bytes().to_vec()), None)
    }

    #[test]
    fn ids_are_little_endian_u64_values_and_nothing_else() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (&[1, 0, 0, 0, 0, 0, 0, 0], Some(1)),
            (&[0, 1, 0, 0, 0, 0, 0, 0], Some(256)),
            (&[1, 0, 0, 0], None),
            (b"", None),
            (b"123456789", None),
        ];
        for (value, want) in cases {
            assert_eq!(Connections::id_of(value), *want, "{value:?}");
        }
    }

    #[test]
    fn overlong_facts_are_not_kept_and_count_as_none_for_the_edge() {
        use crate::edge::{CheckedProperties, EdgeCluster, RequestProperties};
        let longest_source = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535";
        assert!(crate::edge::parse_source_ip(longest_source.as_bytes()).is_some());
        let cases: &[(&[u8], &[u8], bool, bool)] = &[
            // (source, principal, source kept, principal kept)
            (
                b"10.0.0.1:5000",
                b"spiffe://cluster.local/ns/a/sa/b",
                true,
                true,
            ),
            (longest_source.as_bytes(), b"", true, true),
            (&[b'1'; MAX_SOURCE_LEN + 1], b"p", false, true),
            (b"10.0.0.1:1", &[b'p'; MAX_PRINCIPAL_LEN], true, true),
            (b"10.0.0.1:1", &[b'p'; MAX_PRINCIPAL_LEN + 1], true, false),
        ];
        for (source, principal, source_kept, principal_kept) in cases {
            let peer = Peer::new(Some(source.to_vec()), Some(principal.to_vec()));
            assert_eq!(peer.source_ip.is_some(), *source_kept, "{source:?}");
            assert_eq!(peer.principal.is_some(), *principal_kept, "{principal:?}");
            // The edge is the same as from the values read.
            const CLUSTER: &[u8] = b"outbound|80||a.b.svc.cluster.local";
            let mut buf = String::new();
            let from_peer = CheckedProperties {
                cluster: EdgeCluster::new(CLUSTER).unwrap(),
                source_ip: peer.source_ip,
                host: Some(b"a.b"),
                principal: peer.principal.as_deref(),
            };
            let from_peer = format!("{:?}", from_peer.edge(&mut buf));
            let mut buf = String::new();
            let raw = RequestProperties {
                cluster: Some(CLUSTER),
                source: Some(source),
                host: Some(b"a.b"),
                principal: Some(principal),
            };
            assert_eq!(
                from_peer,
                format!("{:?}", raw.edge(&mut buf)),
                "{source:?} {principal:?}"
            );
        }
    }

    #[test]
    fn a_connection_is_read_once_and_found_after() {
        let mut c = Connections::default();
        let mut reads = 0;
        for _ in 0..3 {
            let got = c.get_or_read(7, || {
                reads += 1;
                peer("10.0.0.1:5000")
            });
            assert_eq!(got, &peer("10.0.0.1:5000"));
        }
        assert_eq!(reads, 1);
        assert_eq!((c.hits, c.misses), (2, 1));
        // Another connection from the same pod is another entry.
        assert_eq!(
            c.get_or_read(8, || peer("10.0.0.1:5001")),
            &peer("10.0.0.1:5001")
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn connections_in_use_stay_and_old_ones_age_out_bounded() {
        let mut c = Connections::default();
        let forgotten = |c: &mut Connections, id| {
            let mut read = false;
            c.get_or_read(id, || {
                read = true;
                peer("10.0.0.3:1")
            });
            read
        };
        c.insert(0, peer("10.0.0.1:1"));
        // Many short connections come and go; connection 0 keeps sending requests.
        for id in 1..(4 * MAX_CONNECTIONS as u64) {
            c.insert(id, peer("10.0.0.2:1"));
            if id % 1_000 == 0 {
                assert!(!forgotten(&mut c, 0), "in use, forgotten at {id}");
            }
            assert!(c.len() <= MAX_CONNECTIONS, "{} entries at {id}", c.len());
        }
        assert!(!forgotten(&mut c, 0));
        // A connection not used for two turns is gone.
        assert!(forgotten(&mut c, 1));
    }
}
