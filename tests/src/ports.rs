//! Free TCP ports on 127.0.0.1 for processes we start (Envoy, the controller).
//!
//! Ports come from below the kernel's ephemeral range so that the many client connections of
//! a test (whose source ports are ephemeral) never take a port we are about to hand to a
//! server, and each port is handed out once per process so tests running in parallel never
//! share one. Another process may still grab a port between the probe and its use; that race
//! is accepted (it is what every "free port" helper has).

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use anyhow::{bail, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// A port nobody listens on now and that this process has not handed out before.
pub fn free_port() -> Result<u16> {
    let low: u16 = 20_000;
    let high = ephemeral_low().max(low + 1_000);
    let span = u64::from(high - low);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let start = random_u64() % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed.insert(port);
            return Ok(port);
        }
    }
    bail!("no free TCP port on 127.0.0.1 in {low}..{high}")
}
