//! Hostile clients and bad luck against the real `lazyxds` binary, on loopback (issue
//! 15 items 6–9): wire values that overflowed, floods of streams and connections, a
//! process out of file descriptors, topology files built to be slow, an output
//! directory that refuses writes. Each test is bounded in time and count; the figures
//! (RSS from `/proc`, times, connections held) are printed as `hostile:` lines.
//!
//! The pieces in process (caps, timeouts, the stream supervisor) have their own tests in
//! `controller/tests/limits.rs`; the flags, in `controller/tests/binary.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_e2e::process::{rss_and_cpu, set_open_files_limit, Proc};
use lazyxds_e2e::{client, paths, ports::free_port};
use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{
    controller_message, gateway_message, ControllerMessage, Edge, EdgeBatch, GatewayMessage, Hello,
    Name,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const TOPOLOGY: &str = r#"
namespaces: [{name: shop, annotations: {lazyxds.io/enabled: "true"}}]
workloads:
  - {kind: Deployment, namespace: shop, name: web, labels: {app: web}, pods: [{ip: 127.0.0.2}]}
services:
  - {namespace: shop, name: api, selector: {app: api}, ports: [{port: 80, name: http}]}
"#;
const API: &str = "api.shop.svc.cluster.local";

fn figure(what: std::fmt::Arguments<'_>) {
    eprintln!("hostile: {what}");
}

/// The controller binary with its own files; killed when dropped.
struct Lazyxds {
    proc: Proc,
    grpc: SocketAddr,
    http: u16,
    dir: tempfile::TempDir,
}

impl Lazyxds {
    /// `lazyxds run` with `args` (`{dir}` in them becomes the test's directory), ready
    /// once `/healthz` answers; `files_limit` lowers its open-files limit.
    async fn start(args: &[&str], files_limit: Option<u64>) -> Result<Lazyxds> {
        Lazyxds::start_in(tempfile::tempdir()?, args, files_limit).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        args: &[&str],
        files_limit: Option<u64>,
    ) -> Result<Lazyxds> {
        let (grpc, http) = (free_port()?, free_port()?);
        let mut cmd = Command::new(paths::lazyxds_bin()?);
        cmd.arg("run")
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http}"))
            .args(
                args.iter()
                    .map(|a| a.replace("{dir}", &dir.path().display().to_string())),
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        if let Some(n) = files_limit {
            set_open_files_limit(&mut cmd, n);
        }
        let proc = Proc::spawn("lazyxds", &mut cmd, &dir.path().join("lazyxds.log"))?;
        let mut me = Lazyxds {
            proc,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.proc.exited() {
                bail!("lazyxds exited {status}:\n{}", me.proc.log_tail(20));
            }
            if client::get(http, "/healthz")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("lazyxds not up:\n{}", me.proc.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Resident memory and its anonymous part (the heap: what a leak or a flood grows;
    /// the rest is the binary's pages, touched once), MiB.
    fn memory(&self) -> Memory {
        let (rss, anon, _) = rss_and_cpu(self.pid()).unwrap_or_default();
        Memory {
            rss: rss as f64 / 1024.0,
            anon: anon as f64 / 1024.0,
        }
    }

    /// The memory once the heap is back within 4 MiB of `baseline`, or after 10 s:
    /// idle workers hand their free pages back within a second or two.
    async fn memory_back_to(&self, baseline: Memory) -> Memory {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.memory();
            if now.anon < baseline.anon + 4.0 || Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let r = client::get(self.http, "/debug/edges").await?;
        let doc: serde_json::Value = serde_json::from_str(&r.body)?;
        Ok(serde_json::from_value(doc["counters"].clone())?)
    }

    async fn counter(&self, name: &str) -> u64 {
        self.counters()
            .await
            .ok()
            .and_then(|c| c.get(name).copied())
            .unwrap_or(0)
    }

    /// Waits until `check` holds for the named counter.
    async fn wait_counter(&self, name: &str, check: impl Fn(u64) -> bool) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = self.counter(name).await;
            if check(n) {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("{name} = {n} after 30 s:\n{}", self.proc.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A topology file with the shop, and a controller on it.
async fn file_mode(extra: &[&str]) -> Result<Lazyxds> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("topology.yaml"), TOPOLOGY)?;
    let mut args = vec![
        "--file",
        "{dir}/topology.yaml",
        "--out",
        "{dir}/out",
        "--write-debounce-ms",
        "10",
    ];
    args.extend(extra);
    Lazyxds::start_in(dir, &args, None).await
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: f64,
    anon: f64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.1} MiB (heap {:.1} MiB)", self.rss, self.anon)
    }
}

struct Stream {
    tx: mpsc::Sender<GatewayMessage>,
    rx: tonic::Streaming<ControllerMessage>,
}

async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

async fn open(channel: &Channel) -> Result<Stream, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let rx = EdgeSinkClient::new(channel.clone())
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Stream { tx, rx })
}

fn hello() -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Hello(Hello {
            gateway_id: "gw".into(),
            worker: "w".into(),
            resync: false,
        })),
    }
}

fn batch(seq: u64, requests: u64) -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Batch(EdgeBatch {
            seq,
            sent_at_unix_s: 0,
            names: vec![Name {
                id: 1,
                value: format!("outbound|80||{API}"),
            }],
            edges: vec![Edge {
                source_ip: vec![127, 0, 0, 2],
                cluster: 1,
                requests,
                ..Edge::default()
            }],
        })),
    }
}

impl Stream {
    /// The next ack's seq (namespace tables are skipped).
    async fn ack(&mut self) -> Result<u64> {
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .context("no reply")??;
            match reply.and_then(|m| m.kind) {
                Some(controller_message::Kind::Ack(ack)) => return Ok(ack.seq),
                Some(_) => continue,
                None => bail!("the stream ended without an ack"),
            }
        }
    }
}

// ---- item 6 ------------------------------------------------------------------------------

/// `requests = u64::MAX` overflowed and panicked the stream task; the gateway saw a
/// clean end with no ack. Twice u64::MAX on one edge: both acked, the counts saturate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u64_max_requests_are_acked_and_saturate() -> Result<()> {
    let lazyxds = file_mode(&[]).await?;
    let channel = channel(lazyxds.grpc).await?;
    let mut stream = open(&channel).await?;
    stream.tx.send(hello()).await?;
    for seq in [1, 2] {
        stream.tx.send(batch(seq, u64::MAX)).await?;
        assert_eq!(stream.ack().await?, seq);
    }
    let r = client::get(lazyxds.http, "/debug/edges").await?;
    let doc: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(
        doc["edges"][0]["requests"],
        serde_json::json!(u64::MAX),
        "{doc}"
    );
    assert_eq!(lazyxds.counter("stream_panics").await, 0);
    let deps = client::get(lazyxds.http, "/debug/deps").await?.body;
    assert!(deps.contains(API), "{deps}");
    Ok(())
}

// ---- item 7 ------------------------------------------------------------------------------

/// One stream, closed: what serving any stream allocates once is not a flood's.
async fn warm_up(lazyxds: &Lazyxds) -> Result<()> {
    let mut warm = open(&channel(lazyxds.grpc).await?).await?;
    warm.tx.send(hello()).await?;
    warm.tx.send(batch(1, 1)).await?;
    warm.ack().await?;
    drop(warm);
    lazyxds.wait_counter("connections_open", |n| n == 0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// `make soak` (`LAZYXDS_SOAK=1`) runs the longer floods.
fn soak() -> bool {
    std::env::var_os("LAZYXDS_SOAK").is_some_and(|v| v == "1")
}

/// 10,000 streams cost 294 MB that stayed after they closed. A flood of 4,000 stream
/// attempts over 40 connections: `--max-streams` (512) are held, the rest refused and
/// counted; once the flood is gone the heap returns to where it started. `make soak`:
/// the cap raised to 10,000, 10,000 streams held, three times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_capped_and_its_memory_given_back() -> Result<()> {
    let (cap, connections, attempts, rounds) = match soak() {
        false => (512, 40, 4_000, 1),
        true => (10_000, 100, 10_000, 3),
    };
    let cap_flag = cap.to_string();
    let lazyxds = Lazyxds::start(
        &[
            "--max-streams-per-connection",
            "100",
            "--max-streams",
            &cap_flag,
            "--max-connections",
            "1000",
        ],
        None,
    )
    .await?;
    warm_up(&lazyxds).await?;
    let baseline = lazyxds.memory();
    let mut refused_total = 0;
    for round in 1..=rounds {
        let mut channels = Vec::new();
        for _ in 0..connections {
            channels.push(channel(lazyxds.grpc).await?);
        }
        let mut held = Vec::new();
        for i in 0..attempts {
            match open(&channels[i % channels.len()]).await {
                Ok(stream) => {
                    stream.tx.send(hello()).await?;
                    held.push(stream);
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    refused_total += 1;
                }
            }
        }
        let open_now = lazyxds
            .wait_counter("streams_open", |n| n == held.len() as u64)
            .await?;
        let peak = lazyxds.memory();
        figure(format_args!(
            "stream flood {round}/{rounds}: {attempts} attempts over {connections} connections, \
             {open_now} held (--max-streams {cap}), {} refused; {baseline} before, {peak} during",
            attempts - held.len()
        ));
        assert_eq!(open_now, cap.min(attempts) as u64);
        assert_eq!(
            lazyxds.counter("streams_refused_at_cap").await,
            refused_total
        );
        drop(held);
        drop(channels);
        lazyxds.wait_counter("streams_open", |n| n == 0).await?;
        lazyxds.wait_counter("connections_open", |n| n == 0).await?;
        // Idle workers hand free pages back within a second or two.
        let after = lazyxds.memory_back_to(baseline).await;
        figure(format_args!("stream flood {round}/{rounds}: {after} after"));
        assert!(
            peak.anon < baseline.anon + 0.1 * cap as f64,
            "{peak} under the flood"
        );
        assert!(
            after.anon < baseline.anon + 4.0,
            "{after} after the flood, {baseline} before"
        );
    }
    if refused_total > 0 {
        let log = lazyxds.proc.log();
        assert!(
            log.contains("gateway stream refused: --max-streams are open"),
            "{log}"
        );
    }
    Ok(())
}

/// Idle TCP connections were never closed and there was no cap on them. 1,000 silent
/// connections against `--max-connections 100`: 100 held, the rest closed at once and
/// counted, `/healthz` answers throughout, and the held ones are closed after the
/// handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_held_at_the_cap_then_timed_out() -> Result<()> {
    let lazyxds = Lazyxds::start(
        &[
            "--max-connections",
            "100",
            "--grpc-handshake-timeout-secs",
            "3",
        ],
        None,
    )
    .await?;
    warm_up(&lazyxds).await?;
    let baseline = lazyxds.memory();
    let mut conns = Vec::new();
    for _ in 0..1_000 {
        conns.push(TcpStream::connect(lazyxds.grpc).await?);
    }
    let started = Instant::now();
    lazyxds
        .wait_counter("connections_refused_at_cap", |n| n == 900)
        .await?;
    let held = lazyxds.counter("connections_open").await;
    let health = client::get(lazyxds.http, "/healthz").await?;
    let peak = lazyxds.memory();
    figure(format_args!(
        "connection flood: 1000 silent connections, {held} held (--max-connections 100), \
         900 closed at once; /healthz {}; {baseline} before, {peak} during",
        health.status
    ));
    assert_eq!(held, 100);
    assert_eq!(health.status, 200);
    lazyxds
        .wait_counter("connections_closed_handshake_timeout", |n| n == 100)
        .await?;
    let closed_after = started.elapsed();
    assert_eq!(lazyxds.counter("connections_open").await, 0);
    drop(conns);
    let after = lazyxds.memory_back_to(baseline).await;
    figure(format_args!(
        "connection flood: held ones closed after {closed_after:.1?} (handshake timeout 3 s); \
         {after} after"
    ));
    assert!(
        after.anon < baseline.anon + 4.0,
        "{after} after, {baseline} before"
    );
    assert!(closed_after < Duration::from_secs(10), "{closed_after:?}");
    let log = lazyxds.proc.log();
    assert!(log.contains("--max-connections are open"), "{log}");
    assert!(log.contains("no stream said Hello"), "{log}");
    // And a gateway gets in again.
    let mut stream = open(&channel(lazyxds.grpc).await?).await?;
    stream.tx.send(hello()).await?;
    stream.tx.send(batch(1, 1)).await?;
    assert_eq!(stream.ack().await?, 1);
    Ok(())
}

/// Out of file descriptors the controller spun at 100 % CPU and logged nothing. With
/// 200 of them, `--max-connections` is lowered to what the limit leaves; HTTP
/// connections (not capped) then take the rest, `accept` fails with EMFILE, and the
/// listener backs off (CPU stays low) and says so; once they are gone, gateways get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_instead_of_spinning() -> Result<()> {
    // The HTTP server's own cap (64) would keep its connections from taking every
    // descriptor: raised here, so the HTTP connections exhaust them.
    let lazyxds = Lazyxds::start(&["--max-http-connections", "1000"], Some(200)).await?;
    let log = lazyxds.proc.log();
    assert!(
        log.contains("--max-connections 512 lowered to what the open-files limit leaves"),
        "{log}"
    );
    let http = SocketAddr::from(([127, 0, 0, 1], lazyxds.http));
    let mut hogs = Vec::new();
    for _ in 0..250 {
        hogs.push(TcpStream::connect(http).await?);
    }
    // Every descriptor taken (the HTTP server accepts until it has none)...
    let fds = format!("/proc/{}/fd", lazyxds.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&fds)?.count() < 200 {
        assert!(
            Instant::now() < deadline,
            "the HTTP connections took no descriptors"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... gateways knock.
    let mut knocking = Vec::new();
    for _ in 0..20 {
        knocking.push(TcpStream::connect(lazyxds.grpc).await?);
    }
    wait_log(
        &lazyxds,
        "cannot accept gRPC connections",
        Duration::from_secs(10),
    )
    .await?;
    let (_, _, cpu_before) = rss_and_cpu(lazyxds.pid())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, cpu_after) = rss_and_cpu(lazyxds.pid())?;
    // Clock ticks are 1/100 s: percent of one core over 3 s.
    let cpu = (cpu_after - cpu_before) as f64 / 3.0;
    let log = lazyxds.proc.log();
    figure(format_args!(
        "out of file descriptors (limit 200): {cpu:.0}% of a core over 3 s"
    ));
    assert!(cpu < 20.0, "{cpu:.0}% CPU out of file descriptors:\n{log}");
    drop(hogs);
    drop(knocking);
    let mut stream = loop {
        if let Ok(channel) = channel(lazyxds.grpc).await {
            if let Ok(stream) = open(&channel).await {
                break stream;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stream.tx.send(hello()).await?;
    stream.tx.send(batch(1, 1)).await?;
    assert_eq!(stream.ack().await?, 1);
    assert!(lazyxds.counter("accept_errors").await > 0);
    Ok(())
}

// ---- item 8 ------------------------------------------------------------------------------

/// `namespaces: [[[[…` of `bytes` bytes.
fn nested(bytes: usize) -> String {
    let mut text = String::from("namespaces: ");
    text.push_str(&"[".repeat(bytes - text.len()));
    text
}

/// A deeply nested 10 MB file took 51 s to refuse at start. A 7 MiB one (under the size
/// limit) is refused at once, naming the file, where, and the limit; a 10 MB one is
/// refused for its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_or_huge_topology_is_refused_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, bytes, want) in [
        ("nested.yaml", 7 << 20, "nests deeper than 64 levels"),
        (
            "huge.yaml",
            10_000_000,
            "more than --max-topology-bytes 8388608",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, nested(bytes))?;
        let started = Instant::now();
        let output = Command::new(paths::lazyxds_bin()?)
            .args([
                "run",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--file")
            .arg(&file)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()?;
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        figure(format_args!(
            "{name} ({bytes} bytes) refused at start in {took:.2?}"
        ));
        assert!(!output.status.success());
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    Ok(())
}

/// On reload a nested file froze `/healthz` and gRPC for minutes and SIGTERM went
/// unheard. A file that takes seconds to parse is parsed off the runtime: `/healthz`
/// and a gateway stream answer meanwhile, and SIGTERM ends the process at once. A nested
/// one is refused at once and the last good state kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_neither_freezes_nor_holds_sigterm() -> Result<()> {
    let mut lazyxds = file_mode(&[]).await?;
    let topo = lazyxds.path("topology.yaml");

    write_replacing(&topo, &nested(7 << 20))?;
    let started = Instant::now();
    wait_log(
        &lazyxds,
        "nests deeper than 64 levels",
        Duration::from_secs(10),
    )
    .await?;
    figure(format_args!(
        "nested 7 MiB topology refused on reload in {:.2?} (polled every 1 s)",
        started.elapsed()
    ));

    // Slow to parse: 6 MiB of tiny namespaces (a second or two in a release build, more
    // in the debug one), the last of them invalid so nothing is applied.
    let mut slow = String::from("namespaces:\n");
    let mut i = 0;
    while slow.len() < 6 << 20 {
        slow.push_str(&format!("- {{name: n{i}}}\n"));
        i += 1;
    }
    slow.push_str("- {name: bad, color: blue}\n");
    let reloads = lazyxds.proc.log().matches("topology not reloaded").count();
    write_replacing(&topo, &slow)?;
    // Once the poll has seen it (1 s), the parse runs; probe meanwhile.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut slowest = Duration::ZERO;
    let mut stream = open(&channel(lazyxds.grpc).await?).await?;
    stream.tx.send(hello()).await?;
    for seq in 1..=10 {
        let t = Instant::now();
        let health = client::get(lazyxds.http, "/healthz").await?;
        assert_eq!(health.status, 200);
        stream.tx.send(batch(seq, 1)).await?;
        assert_eq!(stream.ack().await?, seq);
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_parsing = lazyxds.proc.log().matches("topology not reloaded").count() == reloads;
    figure(format_args!(
        "during a slow reload: /healthz + one acked batch took at most {slowest:.2?} \
         (parse still running: {still_parsing})"
    ));
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    assert!(still_parsing, "the parse was too quick to show anything");
    let t = Instant::now();
    let status = lazyxds.proc.terminate(Duration::from_secs(10));
    let took = t.elapsed();
    figure(format_args!(
        "SIGTERM during the parse: exited in {took:.2?}"
    ));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    Ok(())
}

/// Writes `text` to `path` via a rename (the poll then sees one change, whole).
fn write_replacing(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn wait_log(lazyxds: &Lazyxds, text: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !lazyxds.proc.log().contains(text) {
        if Instant::now() > deadline {
            bail!("no {text:?} in the log:\n{}", lazyxds.proc.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// ---- item 9 ------------------------------------------------------------------------------

/// `/readyz` said ready while every write failed. File mode: once `--out` refuses a
/// write (its gateway directory is a file), not ready, saying why; ready again once it
/// takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_output_directory_refuses_writes() -> Result<()> {
    let lazyxds = file_mode(&[]).await?;
    let readyz = || async { client::get(lazyxds.http, "/readyz").await };
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz().await?.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gateway = lazyxds.path("out/gateway");
    // The first pass has written the gateway's routing objects.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.join("lazyxds-gateway.yaml").exists() {
        assert!(Instant::now() < deadline, "no gateway objects written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_dir_all(&gateway)?;
    std::fs::write(&gateway, "not a directory")?;
    // A learned edge makes a pass write.
    let mut stream = open(&channel(lazyxds.grpc).await?).await?;
    stream.tx.send(hello()).await?;
    stream.tx.send(batch(1, 1)).await?;
    assert_eq!(stream.ack().await?, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = readyz().await?;
        if r.status == 503 {
            break r.body;
        }
        assert!(Instant::now() < deadline, "still ready: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    figure(format_args!(
        "/readyz with --out refusing writes: 503 {}",
        refused.trim()
    ));
    assert!(
        refused.contains("writing the gateway objects failed"),
        "{refused}"
    );
    std::fs::remove_file(&gateway)?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while readyz().await?.status != 200 {
        assert!(Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

// ---- item 1 ------------------------------------------------------------------------------

const OWN_ID: &str = "spiffe://cluster.local/ns/lazyxds-system/sa/lazyxds";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/lazyxds-system/sa/lazyxds-gateway";
const CART_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

/// A stream carrying this metadata, Hello and a batch sent: `Err` with the status when
/// refused, else the first ack's seq.
async fn try_report(
    channel: &Channel,
    metadata: &[(&'static str, String)],
) -> Result<u64, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for (key, value) in metadata {
        request.metadata_mut().insert(
            *key,
            value
                .parse()
                .map_err(|_| tonic::Status::internal("bad test metadata"))?,
        );
    }
    let _ = tx.send(hello()).await;
    let _ = tx.send(batch(1, 1)).await;
    let rx = EdgeSinkClient::new(channel.clone())
        .stream(request)
        .await?
        .into_inner();
    let mut stream = Stream { tx, rx };
    stream
        .ack()
        .await
        .map_err(|e| tonic::Status::unknown(format!("{e:#}")))
}

/// `lazyxds_grpc_streams_refused_by_auth_total` by reason, from `/metrics`.
async fn refused_by_reason(lazyxds: &Lazyxds) -> Result<BTreeMap<String, u64>> {
    let metrics = client::get(lazyxds.http, "/metrics").await?.body;
    let prefix = "lazyxds_grpc_streams_refused_by_auth_total{reason=\"";
    Ok(metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| {
            let (reason, n) = l.split_once("\"} ")?;
            Some((reason.to_string(), n.trim().parse().ok()?))
        })
        .filter(|(_, n)| *n > 0)
        .collect())
}

/// Issue 15 item 1: with `--edge-auth xfcc` (the install's mode) a client that is not the
/// gateway — no header (it bypassed the controller's sidecar), an element some other proxy
/// wrote, the gateway's identity forged in an earlier element, an open quote meant to hide
/// the element the sidecar appended — is refused before it gets a stream: the status says
/// what was wrong, `/metrics` counts it by reason, the log says it (rate-limited), and no
/// dependency is learned. Then the gateway's stream is acked and its edge learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_not_the_gateway_is_refused_and_nothing_is_learned() -> Result<()> {
    let lazyxds = file_mode(&[
        "--edge-auth",
        "xfcc",
        "--own-identity",
        OWN_ID,
        "--gateway-identity",
        GATEWAY_ID,
    ])
    .await?;
    let channel = channel(lazyxds.grpc).await?;
    let ours = |uri: &str| format!("By={OWN_ID};Hash=0;Subject=\"\";URI={uri};DNS=x");
    let xfcc = |v: String| vec![("x-forwarded-client-cert", v)];
    type Metadata = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Metadata, tonic::Code, &str)> = vec![
        ("no header", vec![], tonic::Code::Unauthenticated, "missing"),
        (
            "another proxy's element",
            xfcc(format!(
                "By=spiffe://cluster.local/ns/shop/sa/proxy;URI={GATEWAY_ID}"
            )),
            tonic::Code::Unauthenticated,
            "not_our_sidecar",
        ),
        (
            "the gateway forged in an earlier element",
            xfcc(format!("By={OWN_ID};URI={GATEWAY_ID},{}", ours(CART_ID))),
            tonic::Code::PermissionDenied,
            "wrong_identity",
        ),
        (
            "an open quote before the sidecar's element",
            xfcc(format!(
                "By={OWN_ID};URI={GATEWAY_ID};Subject=\",{}",
                ours(CART_ID)
            )),
            tonic::Code::Unauthenticated,
            "malformed",
        ),
        (
            "a bearer token instead",
            vec![("authorization", "Bearer 0123456789abcdef".into())],
            tonic::Code::Unauthenticated,
            "missing",
        ),
    ];
    let t = Instant::now();
    for (what, metadata, code, reason) in &cases {
        let status = try_report(&channel, metadata).await.expect_err(what);
        figure(format_args!(
            "{what}: {:?} {:?}",
            status.code(),
            status.message()
        ));
        assert_eq!(status.code(), *code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
        let _ = reason;
    }
    let per_refusal = t.elapsed() / cases.len() as u32;
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, _, reason) in &cases {
        *want.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(refused_by_reason(&lazyxds).await?, want);
    figure(format_args!(
        "xfcc refusals by reason {want:?}, {per_refusal:?} each"
    ));
    assert_eq!(lazyxds.counter("streams_opened").await, 0);
    assert_eq!(lazyxds.counter("namespace_tables_sent").await, 0);
    let deps = client::get(lazyxds.http, "/debug/deps").await?.body;
    assert!(!deps.contains(API), "learned from a stranger: {deps}");
    assert!(
        lazyxds.proc.log().contains("edge stream refused"),
        "{}",
        lazyxds.proc.log_tail(20)
    );

    // The gateway, through the controller's sidecar: taken.
    assert_eq!(try_report(&channel, &xfcc(ours(GATEWAY_ID))).await?, 1);
    let deps = client::get(lazyxds.http, "/debug/deps").await?.body;
    assert!(deps.contains(API), "{deps}");
    Ok(())
}

/// `--edge-auth token`: a missing or wrong token is refused (the status never shows it),
/// the right one taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_without_showing_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("topology.yaml"), TOPOLOGY)?;
    let token = "tok-9f8e7d6c5b4a39281706";
    std::fs::write(dir.path().join("token"), format!("{token}\n"))?;
    let lazyxds = Lazyxds::start_in(
        dir,
        &[
            "--file",
            "{dir}/topology.yaml",
            "--out",
            "{dir}/out",
            "--edge-auth",
            "token",
            "--edge-token-file",
            "{dir}/token",
        ],
        None,
    )
    .await?;
    let channel = channel(lazyxds.grpc).await?;
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    for (what, metadata) in [
        ("no token", vec![]),
        ("a prefix of it", bearer(&token[..12])),
        ("it and more", bearer(&format!("{token}0"))),
    ] {
        let status = try_report(&channel, &metadata).await.expect_err(what);
        figure(format_args!(
            "token, {what}: {:?} {:?}",
            status.code(),
            status.message()
        ));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}");
        assert!(!status.message().contains(&token[..8]), "{status:?}");
    }
    assert_eq!(
        refused_by_reason(&lazyxds).await?,
        BTreeMap::from([("missing".into(), 1), ("wrong_token".into(), 2)])
    );
    assert!(
        !lazyxds.proc.log().contains(&token[..8]),
        "the token is in the log"
    );
    assert_eq!(try_report(&channel, &bearer(token)).await?, 1);
    Ok(())
}

/// `--edge-auth none` (the default) is refused on an address others reach, naming the
/// flag; a mode without its files is refused naming the missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_edges_are_refused_off_loopback() -> Result<()> {
    for (args, want) in [
        (vec!["--grpc-addr", "0.0.0.0:0"], "--edge-auth none"),
        (
            vec![
                "--grpc-addr",
                "127.0.0.1:0",
                "--edge-auth",
                "xfcc",
                "--gateway-identity",
                GATEWAY_ID,
            ],
            "--own-identity",
        ),
        (
            vec![
                "--grpc-addr",
                "127.0.0.1:0",
                "--edge-auth",
                "mtls",
                "--gateway-identity",
                GATEWAY_ID,
            ],
            "--edge-tls-cert",
        ),
        (
            vec!["--grpc-addr", "127.0.0.1:0", "--edge-token-file", "/x"],
            "--edge-token-file",
        ),
    ] {
        let out = Command::new(paths::lazyxds_bin()?)
            .arg("run")
            .args(&args)
            .args(["--http-addr", "127.0.0.1:0"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        figure(format_args!(
            "{args:?}: {}",
            stderr.lines().last().unwrap_or_default()
        ));
    }
    Ok(())
}

/// `/debug/*` answers only 127.0.0.1 by default; 127.0.0.6 (where an Istio sidecar
/// forwards inbound traffic from) gets 403, while `/metrics` and `/healthz` answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_endpoints_answer_only_localhost() -> Result<()> {
    let lazyxds = file_mode(&[]).await?;
    let sidecar = std::net::Ipv4Addr::new(127, 0, 0, 6);
    for (path, want) in [
        ("/debug/deps", 403),
        ("/debug/edges", 403),
        ("/metrics", 200),
        ("/healthz", 200),
        ("/readyz", 200),
    ] {
        let r = client::request(sidecar, lazyxds.http, "lazyxds", path).await?;
        assert_eq!(r.status, want, "{path} from {sidecar}: {}", r.body);
    }
    assert_eq!(client::get(lazyxds.http, "/debug/deps").await?.status, 200);
    Ok(())
}

/// The gateway's template with TLS on its controller cluster: this client certificate,
/// and the CA to check the controller's.
fn gateway_over_mtls(
    config: &lazyxds_e2e::GatewayConfig,
    client: &lazyxds_e2e::pki::CertFiles,
    ca: &Path,
) -> Result<String> {
    let text = config.render()?;
    let anchor = "        explicit_http_config: { http2_protocol_options: {} }\n";
    let first = text
        .find(anchor)
        .context("no controller cluster in the template")?;
    let tls = format!(
        "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
         sni: lazyxds\n        common_tls_context:\n          alpn_protocols: [h2]\n          \
         tls_certificates: [{{certificate_chain: {{filename: '{}'}}, private_key: {{filename: '{}'}}}}]\n          \
         validation_context: {{trusted_ca: {{filename: '{}'}}}}\n",
        client.cert.display(),
        client.key.display(),
        ca.display()
    );
    let at = first + anchor.len();
    Ok(format!("{}{tls}{}", &text[..at], &text[at..]))
}

/// `--edge-auth mtls` end to end: the real gateway Envoy and filter, its controller cluster
/// over TLS with a client certificate. The gateway's certificate: edges arrive. Another
/// workload's certificate from the same CA: every stream refused (`wrong_identity`), no
/// edge; a certificate from another CA fails the handshake (`tls_handshake`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reports_over_mtls_and_no_one_else_does() -> Result<()> {
    use lazyxds_e2e::gateway::{self, hosts, GatewayConfig, TEST_CONCURRENCY};
    use lazyxds_e2e::pki::Ca;
    let ca = Ca::new()?;
    let server = ca.issue("lazyxds-system", "lazyxds", &["lazyxds"])?;
    let gateway_cert = ca.issue("lazyxds-system", "lazyxds-gateway", &[])?;
    let cart = ca.issue("shop", "cart", &[])?;
    let other_ca = Ca::new()?;
    let stranger = other_ca.issue("lazyxds-system", "lazyxds-gateway", &[])?;
    let (cert, key, ca_file) = (
        server.cert.display().to_string(),
        server.key.display().to_string(),
        ca.ca_file().display().to_string(),
    );
    let controller = lazyxds_e2e::Controller::start_with_args(&[
        "--edge-auth",
        "mtls",
        "--edge-tls-cert",
        &cert,
        "--edge-tls-key",
        &key,
        "--edge-client-ca",
        &ca_file,
        "--gateway-identity",
        &gateway_cert.spiffe,
    ])
    .await?;
    let backends = gateway::start_backends().await?;
    let gateway_as = |client: &lazyxds_e2e::pki::CertFiles| -> Result<(String, u16)> {
        let config = GatewayConfig {
            listen_port: free_port()?,
            admin_port: free_port()?,
            controller_port: controller.grpc_port(),
            wasm_path: Some(paths::wasm_path()?),
            plugin_config: gateway::plugin_config(serde_json::json!({})),
            backend_ports: backends
                .iter()
                .map(|b| (b.name().to_string(), b.port()))
                .collect(),
        };
        Ok((
            gateway_over_mtls(&config, client, ca.ca_file())?,
            config.listen_port,
        ))
    };
    let metrics_reason = |metrics: &str, reason: &str| -> u64 {
        let prefix = format!("lazyxds_grpc_streams_refused_by_auth_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
            .unwrap_or(0)
    };
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2);
    // Strangers first: nothing may arrive from them.
    for (who, client, reason) in [
        ("shop/cart", &cart, "wrong_identity"),
        ("another CA", &stranger, "tls_handshake"),
    ] {
        let (config, port) = gateway_as(client)?;
        let envoy = lazyxds_e2e::Envoy::start(&config, TEST_CONCURRENCY).await?;
        let t = Instant::now();
        loop {
            let _ = client::request(source, port, hosts::DETAILS, "/").await;
            let metrics = client::get(controller.http_port(), "/metrics").await?.body;
            if metrics_reason(&metrics, reason) > 0 {
                figure(format_args!(
                    "mtls, {who}: refused ({reason}) after {:?}",
                    t.elapsed()
                ));
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("{who}: no {reason} refusal:\n{}", controller.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(controller.counters().await?.get("edges_received"), Some(&0));
        drop(envoy);
    }
    // The gateway.
    let (config, port) = gateway_as(&gateway_cert)?;
    let envoy = lazyxds_e2e::Envoy::start(&config, TEST_CONCURRENCY).await?;
    let t = Instant::now();
    loop {
        let r = client::request(source, port, hosts::DETAILS, "/").await?;
        assert_eq!(r.status, 200, "{}", r.body);
        let edges = controller.edges().await?;
        if edges.iter().any(|e| e.cluster.contains(hosts::DETAILS)) {
            figure(format_args!(
                "mtls, the gateway: edge learned after {:?}",
                t.elapsed()
            ));
            break;
        }
        if t.elapsed() > Duration::from_secs(20) {
            bail!(
                "no edge over mTLS:\n{}\n{}",
                controller.log(),
                envoy.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `--edge-auth token` end to end: the real gateway Envoy and filter, its streams carrying
/// the plugin's `controller_token` as `authorization: Bearer`. A gateway configured with
/// another token is refused (`wrong_token`) and reports nothing; the right one's edges
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reports_with_its_token_and_a_wrong_one_is_refused() -> Result<()> {
    use lazyxds_e2e::gateway::{self, hosts, GatewayConfig, TEST_CONCURRENCY};
    let dir = tempfile::tempdir()?;
    let token = "gw-token-5d41402abc4b2a76b9719d91";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;
    let token_path = token_file.display().to_string();
    let controller = lazyxds_e2e::Controller::start_with_args(&[
        "--edge-auth",
        "token",
        "--edge-token-file",
        &token_path,
    ])
    .await?;
    let backends = gateway::start_backends().await?;
    let gateway_with = |token: &str| -> Result<(String, u16)> {
        let config = GatewayConfig {
            listen_port: free_port()?,
            admin_port: free_port()?,
            controller_port: controller.grpc_port(),
            wasm_path: Some(paths::wasm_path()?),
            plugin_config: gateway::plugin_config(serde_json::json!({"controller_token": token})),
            backend_ports: backends
                .iter()
                .map(|b| (b.name().to_string(), b.port()))
                .collect(),
        };
        Ok((config.render()?, config.listen_port))
    };
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2);
    {
        let (config, port) = gateway_with("not-the-token-0123456789")?;
        let envoy = lazyxds_e2e::Envoy::start(&config, TEST_CONCURRENCY).await?;
        let t = Instant::now();
        loop {
            let _ = client::request(source, port, hosts::DETAILS, "/").await;
            let metrics = client::get(controller.http_port(), "/metrics").await?.body;
            if metrics
                .contains("lazyxds_grpc_streams_refused_by_auth_total{reason=\"wrong_token\"} ")
                && !metrics.contains(
                    "lazyxds_grpc_streams_refused_by_auth_total{reason=\"wrong_token\"} 0",
                )
            {
                figure(format_args!(
                    "token, a wrong one: refused after {:?}",
                    t.elapsed()
                ));
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!(
                    "no wrong_token refusal:\n{}\n{}",
                    controller.log(),
                    envoy.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(controller.counters().await?.get("edges_received"), Some(&0));
        assert!(
            !envoy.log().contains(token),
            "the right token in the wrong gateway's log?"
        );
    }
    let (config, port) = gateway_with(token)?;
    let envoy = lazyxds_e2e::Envoy::start(&config, TEST_CONCURRENCY).await?;
    let t = Instant::now();
    loop {
        let r = client::request(source, port, hosts::DETAILS, "/").await?;
        assert_eq!(r.status, 200, "{}", r.body);
        if controller
            .edges()
            .await?
            .iter()
            .any(|e| e.cluster.contains(hosts::DETAILS))
        {
            figure(format_args!(
                "token, the gateway's: edge learned after {:?}",
                t.elapsed()
            ));
            break;
        }
        if t.elapsed() > Duration::from_secs(20) {
            bail!(
                "no edge with the token:\n{}\n{}",
                controller.log(),
                envoy.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !controller.log().contains(token),
        "the token is in the controller's log"
    );
    Ok(())
}

/// The HTTP port is bounded like the gRPC one: past `--max-http-connections` a connection
/// is closed at once (counted), `/healthz` answers once they go; a connection that sends
/// no request head is closed by the header read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_holds_at_most_its_cap() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let lazyxds = Lazyxds::start(&["--max-http-connections", "8"], None).await?;
    let http = SocketAddr::from(([127, 0, 0, 1], lazyxds.http));
    // 12 silent connections: 8 held (7 if the readiness probe's is still open), the rest
    // closed at once (EOF or reset, without a byte).
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(TcpStream::connect(http).await?);
    }
    let mut open = 0;
    let mut buf = [0u8; 16];
    for conn in &mut conns {
        match tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await {
            Err(_) => open += 1,
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => bail!("a silent connection got {n} bytes"),
        }
    }
    assert!((7..=8).contains(&open), "{open} of 12 held with a cap of 8");
    figure(format_args!(
        "HTTP: {open} of 12 silent connections held at --max-http-connections 8"
    ));
    let held = conns;
    let metrics_after = |lazyxds: &Lazyxds| {
        let port = lazyxds.http;
        async move { client::get(port, "/metrics").await.map(|r| r.body) }
    };
    drop(held);
    let t = Instant::now();
    let metrics = loop {
        if let Ok(m) = metrics_after(&lazyxds).await {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "/metrics never answered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Also /metrics requests made while the held ones were still closing.
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lazyxds_http_connections_refused_at_cap_total "))
        .and_then(|n| n.trim().parse().ok())
        .context("no lazyxds_http_connections_refused_at_cap_total")?;
    assert!(
        refused >= 12 - open,
        "{refused} refused, want at least {}",
        12 - open
    );
    // A silent connection is closed after the header read timeout (10 s).
    let mut silent = TcpStream::connect(http).await?;
    let t = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)).await??;
    assert_eq!(read, 0);
    figure(format_args!(
        "HTTP: a silent connection closed after {:?}",
        t.elapsed()
    ));
    assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    Ok(())
}
