//! The `lazyxds run` binary: listens, serves a stream, stops cleanly on SIGTERM even
//! with a gateway stream open.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{
    controller_message, gateway_message, Ack, ControllerMessage, Edge, EdgeBatch, GatewayMessage,
    Hello, Name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// `grpc=ADDR http=ADDR` from the `lazyxds listening` log line.
fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = &line[line.find("lazyxds listening ")? + "lazyxds listening ".len()..];
    let mut grpc = None;
    let mut http = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("grpc", addr)) => grpc = addr.parse().ok(),
            Some(("http", addr)) => http = addr.parse().ok(),
            _ => {}
        }
    }
    Some((grpc?, http?))
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: lazyxds\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Kills the controller if the test fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn run_serves_and_stops_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_lazyxds"))
        .args([
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .env_remove("LAZYXDS_LOG_LEVEL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let (grpc, http) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        loop {
            line.clear();
            assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "exited early");
            if let Some(addrs) = parse_listening(&line) {
                // Keep draining so the child never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return addrs;
            }
        }
    })
    .await
    .unwrap();

    assert_eq!(http_get(http, "/readyz").await, "ok");

    let mut client = EdgeSinkClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let hello = Hello {
        gateway_id: "gw".to_string(),
        worker: "w1".to_string(),
        resync: false,
    };
    let batch = EdgeBatch {
        seq: 1,
        sent_at_unix_s: 1_764_150_000,
        names: vec![Name {
            id: 1,
            value: "outbound|9080||reviews.default.svc.cluster.local".to_string(),
        }],
        edges: vec![Edge {
            source_ip: vec![127, 0, 0, 10],
            host: 0,
            cluster: 1,
            requests: 12,
            idle_s: 0,
            principal: 0,
        }],
    };
    for kind in [
        gateway_message::Kind::Hello(hello),
        gateway_message::Kind::Batch(batch),
    ] {
        tx.send(GatewayMessage { kind: Some(kind) }).await.unwrap();
    }
    assert_eq!(
        replies.message().await.unwrap(),
        Some(ControllerMessage {
            kind: Some(controller_message::Kind::Ack(Ack { seq: 1 }))
        })
    );
    let edges: serde_json::Value =
        serde_json::from_str(&http_get(http, "/debug/edges").await).unwrap();
    assert_eq!(edges["edges"][0]["source_ip"], "127.0.0.10");
    assert_eq!(edges["counters"]["streams_open"], 1);

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "lazyxds is shutting down")
    );
    // The open stream must not hold the shutdown up to the grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

/// Issue 15 item 10: flags that make no sense are refused at start, naming the flag
/// (clap's error names it; the process exits 2 before binding anything).
#[test]
fn senseless_flags_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topo.yaml");
    std::fs::write(&topo, "namespaces: []\n").unwrap();
    let out = dir.path().join("out");
    let file_mode = [
        "--file",
        topo.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let year_ms = (365u64 * 86_400 * 1000).to_string();
    // (args after `run`, env, the flag the error must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            [&file_mode[..], &["--dry-run"]].concat(),
            vec![],
            "--dry-run",
        ),
        (
            file_mode.to_vec(),
            vec![("LAZYXDS_DRY_RUN", "true")],
            "--dry-run",
        ),
        (
            vec!["--egress-proxy-port", "0"],
            vec![],
            "--egress-proxy-port",
        ),
        (vec!["--gateway-host", ""], vec![], "--gateway-host"),
        (vec!["--gateway-host", "*"], vec![], "--gateway-host"),
        (
            vec!["--gateway-host", "*.example.com"],
            vec![],
            "--gateway-host",
        ),
        (vec!["--gateway-host", "gateway"], vec![], "--gateway-host"),
        (
            vec![],
            vec![("LAZYXDS_GATEWAY_HOST", "*")],
            "--gateway-host",
        ),
        (
            vec!["--gateway-namespace", ""],
            vec![],
            "--gateway-namespace",
        ),
        (
            vec!["--gateway-namespace", "*"],
            vec![],
            "--gateway-namespace",
        ),
        (
            vec!["--write-debounce-ms", &year_ms],
            vec![],
            "--write-debounce-ms",
        ),
        (vec!["--leader-election"], vec![], "--leader-election"),
        (
            vec!["--lease-duration-secs", "86400"],
            vec![],
            "--lease-duration-secs",
        ),
        (
            vec!["--max-stream-names", "1000"],
            vec![],
            "--max-stream-names",
        ),
        (vec!["--max-batch-edges", "10"], vec![], "--max-batch-edges"),
        (
            vec!["--max-message-bytes", "65536"],
            vec![],
            "--max-message-bytes",
        ),
        (vec!["--max-streams", "0"], vec![], "--max-streams"),
        (vec!["--max-connections", "0"], vec![], "--max-connections"),
        (
            vec!["--grpc-idle-timeout-secs", "0"],
            vec![],
            "--grpc-idle-timeout-secs",
        ),
        (
            vec!["--max-topology-bytes", "10"],
            vec![],
            "--max-topology-bytes",
        ),
    ];
    for (args, env, flag) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazyxds"));
        cmd.args([
            "run",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(&args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{args:?} {env:?}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{args:?} {env:?}: accepted");
        assert!(
            stderr.contains(flag),
            "{args:?} {env:?}: the error does not name {flag}:\n{stderr}"
        );
    }
}
