//! Open-loop, fixed-rate HTTP/1.1 load from many source addresses.
//!
//! One keep-alive connection per source address (each a "pod", bound to its own
//! 127.x.y.z), requests scheduled at a fixed rate whatever the responses do (latency is
//! measured from the scheduled time, so a stall shows up instead of slowing the load).
//! Request `i` goes out on connection `i % sources` with host `(i / sources) % hosts`:
//! every (source, host) pair, i.e. every edge, is covered once per `sources × hosts`
//! requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A request that takes longer than this counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `n` distinct loopback source addresses: 127.0.1.1, 127.0.1.2, ... (skipping .0 and
/// .255 of each /24), never 127.0.0.1 which the servers use.
pub fn sources(n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8))
        .collect()
}

struct Job {
    host: usize,
    due: Instant,
    done: mpsc::UnboundedSender<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    latency_us: u32,
    error: Option<String>,
}

/// The connections to one gateway; keeps them across windows.
#[derive(Debug)]
pub struct LoadGen {
    conns: Vec<mpsc::UnboundedSender<Job>>,
    hosts: usize,
    next: u64,
}

/// What one window of load did.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of every answered request, µs, sorted.
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
}

impl Window {
    /// The `q` quantile (0..=1) of latency in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

impl LoadGen {
    /// Connections (opened lazily) from each of `sources` to 127.0.0.1:`port`, sending
    /// `GET /` with `Host: hosts[k]`.
    pub fn new(port: u16, sources: &[Ipv4Addr], hosts: &[String]) -> Result<LoadGen> {
        if sources.is_empty() || hosts.is_empty() {
            bail!("load needs at least one source and one host");
        }
        let dest = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let hosts: Arc<[HeaderValue]> = hosts
            .iter()
            .map(|h| HeaderValue::from_str(h))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let mut conns = Vec::new();
        for &src in sources {
            // Loopback only, by construction: never send anything off this machine.
            if !src.is_loopback() {
                bail!("refusing non-loopback source {src}");
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(connection(src, dest, hosts.clone(), rx));
            conns.push(tx);
        }
        Ok(LoadGen {
            conns,
            hosts: hosts.len(),
            next: 0,
        })
    }

    /// Sends `rate` requests per second for `duration`, then waits for the answers.
    pub async fn run(&mut self, rate: f64, duration: Duration) -> Window {
        let n = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now() + Duration::from_millis(2);
        let step = Duration::from_secs_f64(1.0 / rate);
        for k in 0..n {
            let due = start + step.mul_f64(k as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            let i = self.next;
            self.next += 1;
            let conn = (i % self.conns.len() as u64) as usize;
            let host = ((i / self.conns.len() as u64) % self.hosts as u64) as usize;
            let _ = self.conns[conn].send(Job {
                host,
                due,
                done: tx.clone(),
            });
        }
        drop(tx);
        let mut w = Window {
            sent: n,
            ..Window::default()
        };
        w.latencies_us.reserve(n as usize);
        while let Some(s) = rx.recv().await {
            match s.error {
                None => {
                    w.ok += 1;
                    w.latencies_us.push(s.latency_us);
                }
                Some(e) => {
                    w.errors += 1;
                    w.first_error.get_or_insert(e);
                }
            }
        }
        w.elapsed = start.elapsed();
        // Jobs a dead connection task never answered.
        w.errors += n.saturating_sub(w.ok + w.errors);
        w.latencies_us.sort_unstable();
        w
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(src: Ipv4Addr, dest: SocketAddr) -> Result<Sender> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = socket.connect(dest).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one(sender: &mut Sender, host: &HeaderValue) -> Result<()> {
    sender.ready().await?;
    let req = Request::builder()
        .uri("/")
        .header(HOST, host.clone())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if status != 200 {
        bail!("HTTP {status}");
    }
    Ok(())
}

async fn connection(
    src: Ipv4Addr,
    dest: SocketAddr,
    hosts: Arc<[HeaderValue]>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut sender: Option<Sender> = None;
    while let Some(job) = jobs.recv().await {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if sender.is_none() {
                sender = Some(connect(src, dest).await?);
            }
            match sender.as_mut() {
                Some(s) => one(s, &hosts[job.host]).await,
                None => bail!("no connection"),
            }
        })
        .await;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{src}: {e:#}")),
            Err(_) => Some(format!("{src}: timed out after {REQUEST_TIMEOUT:?}")),
        };
        if error.is_some() {
            // Start over on a fresh connection.
            sender = None;
        }
        let latency_us = u32::try_from(job.due.elapsed().as_micros()).unwrap_or(u32::MAX);
        let _ = job.done.send(Sample { latency_us, error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_and_not_the_servers() {
        let s = sources(600);
        let set: std::collections::BTreeSet<_> = s.iter().collect();
        assert_eq!(set.len(), 600);
        assert!(s.iter().all(|a| a.is_loopback()));
        assert!(!s.contains(&Ipv4Addr::LOCALHOST));
        assert_eq!(s[0], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(s[250], Ipv4Addr::new(127, 0, 2, 1));
    }

    #[test]
    fn latency_quantiles() {
        let w = Window {
            latencies_us: (1..=100).map(|x| x * 1000).collect(),
            ..Window::default()
        };
        assert_eq!(w.latency_ms(0.5), 51.0);
        assert_eq!(w.latency_ms(0.99), 99.0);
        assert!(Window::default().latency_ms(0.5).is_nan());
    }
}
