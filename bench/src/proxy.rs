//! A byte-counting TCP proxy on loopback, put in front of a gRPC sink (our controller or
//! the ALS sink) so both are counted by the same code: raw bytes each way, and the gRPC
//! messages and their bytes (protobuf + 5) from Envoy to the sink ([`crate::h2count`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::h2count::{Counts, H2Counter};

/// Totals over every connection so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounts {
    /// Envoy → sink.
    pub up: Counts,
    /// Sink → Envoy, raw bytes.
    pub down_raw_bytes: u64,
    pub connections: u64,
    /// Connections whose bytes stopped parsing as HTTP/2 (their gRPC counts are partial).
    pub parse_errors: u64,
}

#[derive(Debug, Default)]
struct Shared {
    /// Closed connections' totals.
    done: ProxyCounts,
    /// Live connections' counters.
    live: Vec<Arc<Mutex<H2Counter>>>,
    live_down: Vec<Arc<Mutex<u64>>>,
}

/// A running proxy 127.0.0.1:port → 127.0.0.1:upstream; stops when dropped.
#[derive(Debug)]
pub struct CountingProxy {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CountingProxy {
    pub async fn start(upstream_port: u16) -> Result<CountingProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the counting proxy")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        let task = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(CountingProxy { port, shared, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn counts(&self) -> ProxyCounts {
        let s = lock(&self.shared);
        let mut c = s.done;
        for h in &s.live {
            let h = lock(h);
            add(&mut c.up, h.counts());
            if h.error.is_some() {
                c.parse_errors += 1;
            }
        }
        for d in &s.live_down {
            c.down_raw_bytes += *lock(d);
        }
        c
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn add(total: &mut Counts, c: Counts) {
    total.raw_bytes += c.raw_bytes;
    total.grpc_bytes += c.grpc_bytes;
    total.grpc_messages += c.grpc_messages;
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let up = Arc::new(Mutex::new(H2Counter::new()));
            let down = Arc::new(Mutex::new(0u64));
            {
                let mut s = lock(&shared);
                s.done.connections += 1;
                s.live.push(up.clone());
                s.live_down.push(down.clone());
            }
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up2 = up.clone();
            let upward = async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    lock(&up2).feed(&buf[..n]);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            };
            let down2 = down.clone();
            let downward = async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    *lock(&down2) += n as u64;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = cw.shutdown().await;
            };
            tokio::join!(upward, downward);
            let mut s = lock(&shared);
            let h = lock(&up);
            let counts = h.counts();
            let failed = h.error.is_some();
            drop(h);
            add(&mut s.done.up, counts);
            if failed {
                s.done.parse_errors += 1;
            }
            s.done.down_raw_bytes += *lock(&down);
            s.live.retain(|x| !Arc::ptr_eq(x, &up));
            s.live_down.retain(|x| !Arc::ptr_eq(x, &down));
        });
    }
}
