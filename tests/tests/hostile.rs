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
    let lazyxds = Lazyxds::start(&[], Some(200)).await?;
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
