//! A tiny DNS server on 127.0.0.1 (UDP) standing in for the Internet's: it answers A
//! queries for the names it is given, every other name is NXDOMAIN. The gateway's dynamic
//! forward proxy resolves through it only, so no query ever leaves the machine.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running server; stops when dropped.
#[derive(Debug)]
pub struct FakeDns {
    addr: SocketAddr,
    names: Arc<Mutex<BTreeMap<String, Ipv4Addr>>>,
    queries: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeDns {
    /// Serves `names` (lower-case, no trailing dot) → IPv4 address (loopback only).
    pub async fn start(names: BTreeMap<String, Ipv4Addr>) -> Result<FakeDns> {
        anyhow::ensure!(
            names.values().all(|ip| ip.is_loopback()),
            "the fake DNS only answers loopback addresses"
        );
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), names).await
    }

    /// Serves on `addr` (the mini-mesh's nameserver on its bridge, port 53), answering
    /// only addresses of the tests' own ranges (loopback, 198.18.0.0/15).
    pub async fn start_on(addr: SocketAddr, names: BTreeMap<String, Ipv4Addr>) -> Result<FakeDns> {
        anyhow::ensure!(
            names
                .values()
                .all(|ip| ip.is_loopback() || crate::client::is_test_range(*ip)),
            "the fake DNS only answers loopback and 198.18.0.0/15 addresses"
        );
        let socket = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding the fake DNS server on {addr}"))?;
        let addr = socket.local_addr()?;
        let queries = Arc::new(Mutex::new(Vec::new()));
        let names = Arc::new(Mutex::new(names));
        let task = tokio::spawn(serve(socket, names.clone(), queries.clone()));
        Ok(FakeDns {
            addr,
            names,
            queries,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the names it answers (the same rule as at start: test ranges only).
    pub fn set_names(&self, names: BTreeMap<String, Ipv4Addr>) {
        let names = names
            .into_iter()
            .filter(|(_, ip)| ip.is_loopback() || crate::client::is_test_range(*ip))
            .collect();
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// Every name asked so far (`name/type`).
    pub fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    socket: UdpSocket,
    names: Arc<Mutex<BTreeMap<String, Ipv4Addr>>>,
    queries: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some((name, qtype, question_end)) = parse_query(&buf[..n]) else {
            continue;
        };
        queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{name}/{qtype}"));
        let ip = names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .copied();
        let reply = answer(&buf[..question_end], ip.as_ref(), qtype);
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// The first question: (name, type, end of the question section).
fn parse_query(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

/// The reply to a query whose header and question are `query`.
fn answer(query: &[u8], ip: Option<&Ipv4Addr>, qtype: u16) -> Vec<u8> {
    const A: u16 = 1;
    let mut out = query.to_vec();
    // QR, opcode and RD as asked, AA, RA; NXDOMAIN for unknown names.
    out[2] = 0x80 | (query[2] & 0x79) | 0x04;
    out[3] = 0x80 | if ip.is_some() { 0 } else { 3 };
    let answers: u16 = u16::from(ip.is_some() && qtype == A);
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..8].copy_from_slice(&answers.to_be_bytes());
    out[8..12].copy_from_slice(&[0, 0, 0, 0]);
    if let (Some(ip), A) = (ip, qtype) {
        // Name: pointer to the question's; type A, class IN, TTL 60 s, 4 bytes.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, qtype as u8, 0, 1]);
        q
    }

    #[tokio::test]
    async fn answers_known_names_and_nxdomains_the_rest() {
        let dns = FakeDns::start(BTreeMap::from([(
            "api.external.test".to_string(),
            Ipv4Addr::LOCALHOST,
        )]))
        .await
        .unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut buf = [0u8; 512];
        for (name, qtype, rcode, answers) in [
            ("API.external.test", 1, 0, 1),
            ("api.external.test", 28, 0, 0),
            ("other.test", 1, 3, 0),
        ] {
            client
                .send_to(&mk_query(7, name, qtype), dns.addr())
                .await
                .unwrap();
            let (n, _) = client.recv_from(&mut buf).await.unwrap();
            let r = &buf[..n];
            assert_eq!(&r[..2], &7u16.to_be_bytes(), "id");
            assert_eq!(r[2] & 0x80, 0x80, "a response");
            assert_eq!(r[3] & 0x0f, rcode, "{name}");
            assert_eq!(u16::from_be_bytes([r[6], r[7]]), answers, "{name}");
            if answers == 1 {
                assert_eq!(&r[n - 4..], &[127, 0, 0, 1]);
            }
        }
        assert_eq!(
            dns.queries(),
            [
                "api.external.test/1",
                "api.external.test/28",
                "other.test/1"
            ]
        );
    }
}
