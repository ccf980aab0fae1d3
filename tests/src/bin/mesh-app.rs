//! The mini-mesh's application: what a pod's app container runs (the node maps the image
//! `lazyxds-test/mesh-app` to this binary, `args` from the pod spec).
//!
//! - `mesh-app echo --name NAME --port PORT [--port PORT]…`: HTTP/1.1 on 0.0.0.0:PORT (each
//!   port); every request gets 200, `x-backend: NAME`, and the Host and
//!   `x-forwarded-client-cert` it arrived with (the test backend of `lazyxds_e2e::Backend`).
//! - `mesh-app grpc-echo --name NAME --port PORT`: gRPC over h2c on 0.0.0.0:PORT, the standard
//!   health service answering SERVING for the service NAME only (`lazyxds_e2e::grpc`).
//! - `mesh-app tcp-echo --name NAME --port PORT`: TCP on 0.0.0.0:PORT; answers each line
//!   with `NAME LINE` (a database stand-in: no HTTP).
//! - `mesh-app client --out FILE --interval-ms N [--ca FILE] [--urls-file FILE] --url URL
//!   [--url URL]…`: sends requests to the URLs in turn, then to those listed in the urls file
//!   (one a line, read again before every request: the test adds dependencies mid-run), one
//!   fresh connection each (`http://…`: a GET; `grpc://host:port/NAME`: a gRPC health
//!   check of service NAME over h2c, its backend NAME if SERVING;
//!   `https://…`: a GET over TLS, the server verified against `--ca` only;
//!   `tcp://host:port`: one line, its echo read back), resolving names the way any program in the pod does
//!   (getaddrinfo: the pod's resolv.conf, whose nameserver the sidecar's agent answers), and
//!   appends one JSON line per request to FILE.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use lazyxds_e2e::client::{request_to, BACKEND_HEADER, REQUEST_XFCC_HEADER};

fn usage() -> anyhow::Error {
    anyhow!(
        "usage: mesh-app echo --name NAME --port PORT [--port PORT]... | \
         mesh-app grpc-echo --name NAME --port PORT | mesh-app tcp-echo --name NAME --port PORT | \
         mesh-app client --out FILE --interval-ms N [--ca FILE] [--urls-file FILE] [--url URL]..."
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = args.split_first().ok_or_else(usage)?;
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag}: no value"))?;
        flags.push((flag.trim_start_matches('-').to_string(), value.clone()));
    }
    let one = |name: &str| -> Result<&str> {
        flags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| anyhow!("--{name} is required"))
    };
    match mode.as_str() {
        "echo" => {
            let mut backends = Vec::new();
            for (_, port) in flags.iter().filter(|(k, _)| k == "port") {
                let port: u16 = port.parse().context("--port")?;
                backends.push(
                    lazyxds_e2e::Backend::start_on(
                        one("name")?,
                        SocketAddr::from(([0, 0, 0, 0], port)),
                    )
                    .await?,
                );
            }
            if backends.is_empty() {
                bail!("echo: no --port");
            }
            std::future::pending::<()>().await;
            Ok(())
        }
        "grpc-echo" => {
            let port: u16 = one("port")?.parse().context("--port")?;
            let _backend = lazyxds_e2e::grpc::GrpcBackend::start_on(
                one("name")?,
                SocketAddr::from(([0, 0, 0, 0], port)),
            )
            .await?;
            std::future::pending::<()>().await;
            Ok(())
        }
        "tcp-echo" => {
            let port: u16 = one("port")?.parse().context("--port")?;
            tcp_echo(one("name")?, port).await
        }
        "client" => {
            let urls: Vec<&str> = flags
                .iter()
                .filter(|(k, _)| k == "url")
                .map(|(_, v)| v.as_str())
                .collect();
            let urls_file = one("urls-file").ok().map(std::path::PathBuf::from);
            if urls.is_empty() && urls_file.is_none() {
                bail!("client: no --url and no --urls-file");
            }
            let interval = Duration::from_millis(one("interval-ms")?.parse()?);
            let ca = one("ca").ok().map(std::path::PathBuf::from);
            client(
                one("out")?,
                &urls,
                urls_file.as_deref(),
                interval,
                ca.as_deref(),
            )
            .await
        }
        _ => Err(usage()),
    }
}

async fn tcp_echo(name: &str, port: u16) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.to_string();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{name} {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// One line over a fresh TCP connection; the server's name (the first word of its answer)
/// if it echoed the line.
/// Loopback and 198.18.0.0/15 only: nothing leaves the test's namespace.
fn check_allowed(addr: SocketAddr) -> Result<()> {
    let allowed = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || lazyxds_e2e::client::is_test_range(v4),
        std::net::IpAddr::V6(_) => false,
    };
    if !allowed {
        bail!("refusing traffic to {addr}: outside the tests' ranges");
    }
    Ok(())
}

async fn tcp_request(addr: SocketAddr, line: &str) -> Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    check_allowed(addr)?;
    tokio::time::timeout(lazyxds_e2e::client::REQUEST_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await?;
        match answer.trim_end().split_once(' ') {
            Some((name, echoed)) if echoed == line => Ok(name.to_string()),
            _ => bail!("{addr}: answer {answer:?} to {line:?}"),
        }
    })
    .await
    .map_err(|_| anyhow!("{addr}: timed out"))?
}

/// `http://host:port/path` or `tcp://host:port` → (scheme, host, port, path).
fn split_url(url: &str) -> Result<(String, String, u16, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "http" | "https" | "tcp" | "grpc"))
        .ok_or_else(|| anyhow!("{url}: only http://, https://, grpc:// and tcp:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().with_context(|| format!("{url}: port"))?),
        None if scheme == "https" => (authority, 443),
        None => (authority, 80),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme.to_string(), host.to_string(), port, path.to_string()))
}

async fn client(
    out: &str,
    urls: &[&str],
    urls_file: Option<&std::path::Path>,
    interval: Duration,
    ca: Option<&std::path::Path>,
) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {out}"))?;
    let mut urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    let fixed = urls.len();
    let mut targets: Vec<(String, String, u16, String)> =
        urls.iter().map(|u| split_url(u)).collect::<Result<_>>()?;
    let mut next = tokio::time::Instant::now();
    let mut seq = 0u64;
    loop {
        if let Some(path) = urls_file {
            // Added URLs (the file only grows); a bad one is an error of the client.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let added: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            for u in added.iter().skip(urls.len() - fixed) {
                targets.push(split_url(u)?);
                urls.push(u.to_string());
            }
        }
        if targets.is_empty() {
            next += interval;
            tokio::time::sleep_until(next).await;
            continue;
        }
        let i = (seq % targets.len() as u64) as usize;
        let (scheme, host, port, path) = &targets[i];
        let started = Instant::now();
        let result = async {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .with_context(|| format!("resolving {host}"))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| anyhow!("{host}: no IPv4 address"))?;
            if scheme == "tcp" {
                let backend = tcp_request(addr, &format!("ping {seq}")).await?;
                return Ok((200, Some(backend), None));
            }
            if scheme == "grpc" {
                check_allowed(addr)?;
                let service = path.trim_start_matches('/');
                let authority = format!("{host}:{port}");
                return match lazyxds_e2e::grpc::check_at(None, addr, &authority, service).await {
                    Ok(true) => Ok((200, Some(service.to_string()), None)),
                    Ok(false) => bail!("gRPC {authority}: {service} not SERVING"),
                    Err(status) => bail!(
                        "gRPC Check({service}) at {authority} via {addr}: {:?} {}",
                        status.code(),
                        status.message()
                    ),
                };
            }
            let r = if scheme == "https" {
                check_allowed(addr)?;
                let ca = ca.ok_or_else(|| anyhow!("https:// needs --ca"))?;
                lazyxds_e2e::tls::https_get(addr, host, path, ca).await?
            } else {
                request_to(addr, &format!("{host}:{port}"), path).await?
            };
            Ok::<_, anyhow::Error>((
                r.status,
                r.header(BACKEND_HEADER).map(str::to_string),
                r.header(REQUEST_XFCC_HEADER).map(str::to_string),
            ))
        }
        .await;
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let line = match result {
            Ok((status, backend, xfcc)) => serde_json::json!({
                "seq": seq, "url": urls[i], "at_ms": at_ms,
                "latency_ms": started.elapsed().as_millis() as u64,
                "status": status, "backend": backend, "xfcc": xfcc,
            }),
            Err(e) => serde_json::json!({
                "seq": seq, "url": urls[i], "at_ms": at_ms,
                "latency_ms": started.elapsed().as_millis() as u64,
                "error": format!("{e:#}"),
            }),
        };
        // One small append per request: whole lines for the test reading along.
        file.write_all(format!("{line}\n").as_bytes())?;
        seq += 1;
        next += interval;
        tokio::time::sleep_until(next).await;
    }
}
