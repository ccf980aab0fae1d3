//! The namespace table goes down the edge stream: right after Hello, then on every change.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use lazyxds::counters::Counters;
use lazyxds::edges::stream::GrpcConfig;
use lazyxds::learn::Learner;
use lazyxds::sink::MemoryEdgeSink;
use lazyxds_index::{Index, RenderConfig, Topology};
use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
use lazyxds_proto::v1::{
    controller_message, gateway_message, Ack, ControllerMessage, EdgeBatch, GatewayMessage, Hello,
    NamespaceTable, OutboundPolicy,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const TIMEOUT: Duration = Duration::from_secs(10);

const TOPOLOGY: &str = r#"
namespaces: [{name: ns-a}, {name: ns-b}]
workloads:
  - {kind: Deployment, namespace: ns-a, name: client, labels: {app: client}, pods: [{ip: 127.0.0.20}]}
  - {kind: Deployment, namespace: ns-b, name: client, labels: {app: client}, pods: [{ip: 127.0.0.30}, {ip: "fd00::30"}]}
sidecars:
  - {namespace: ns-b, name: default, spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}}
"#;

fn mk_learner(topology: &str) -> (Arc<Learner>, RenderConfig) {
    let topology = Topology::from_yaml(topology, "test.yaml").unwrap();
    let mut index = Index::default();
    topology.apply_to(&mut index);
    let learner = Learner::new(
        index,
        MemoryEdgeSink::new(100, Arc::new(Counters::default())),
    );
    (
        Arc::new(learner),
        topology.render_config(RenderConfig::default()),
    )
}

async fn mk_server(
    learner: Arc<Learner>,
    counters: Arc<Counters>,
) -> (SocketAddr, watch::Sender<bool>) {
    support::serve_in_process(learner, counters, GrpcConfig::default()).await
}

async fn mk_stream(
    addr: SocketAddr,
) -> (mpsc::Sender<GatewayMessage>, Streaming<ControllerMessage>) {
    let mut client = EdgeSinkClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let replies = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, replies)
}

async fn next(replies: &mut Streaming<ControllerMessage>) -> controller_message::Kind {
    tokio::time::timeout(TIMEOUT, replies.message())
        .await
        .expect("a reply in time")
        .expect("no error")
        .expect("stream open")
        .kind
        .expect("a kind")
}

fn hello() -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Hello(Hello {
            gateway_id: "gw".into(),
            worker: "w1".into(),
            resync: false,
        })),
    }
}

#[tokio::test]
async fn the_table_follows_hello_and_every_change() {
    let (learner, render) = mk_learner(TOPOLOGY);
    assert!(learner.publish_namespace_table(&render));
    assert!(
        !learner.publish_namespace_table(&render),
        "unchanged: not sent again"
    );
    let counters = Arc::new(Counters::default());
    let (addr, _stop) = mk_server(learner.clone(), counters.clone()).await;
    let (tx, mut replies) = mk_stream(addr).await;
    tx.send(hello()).await.unwrap();

    let allow = OutboundPolicy::AllowAny as i32;
    let registry = OutboundPolicy::RegistryOnly as i32;
    let want = NamespaceTable {
        namespaces: vec!["ns-a".into(), "ns-b".into()],
        policies: vec![allow, registry],
        mesh_policy: allow,
        ipv4: vec![0x7f00_0014_0000_0000, 0x7f00_001e_0000_0001],
        ipv6: vec![0xfd00_0000_0000_0000, 0x30, 1],
    };
    assert_eq!(
        next(&mut replies).await,
        controller_message::Kind::Namespaces(want.clone())
    );

    // Acks still flow on the same stream.
    tx.send(GatewayMessage {
        kind: Some(gateway_message::Kind::Batch(EdgeBatch {
            seq: 1,
            ..EdgeBatch::default()
        })),
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut replies).await,
        controller_message::Kind::Ack(Ack { seq: 1 })
    );

    // A pod moves: every open stream gets the new table.
    let moved = TOPOLOGY.replace("127.0.0.20", "127.0.0.40");
    Topology::from_yaml(&moved, "test.yaml")
        .unwrap()
        .apply_to(&mut learner.index());
    assert!(learner.publish_namespace_table(&render));
    assert_eq!(
        next(&mut replies).await,
        controller_message::Kind::Namespaces(NamespaceTable {
            ipv4: vec![0x7f00_001e_0000_0001, 0x7f00_0028_0000_0000],
            ..want
        })
    );
    assert_eq!(counters.namespace_tables_sent.load(Relaxed), 2);
}

#[tokio::test]
async fn a_stream_opened_before_the_first_table_gets_it_when_it_comes() {
    let (learner, render) = mk_learner(TOPOLOGY);
    let counters = Arc::new(Counters::default());
    let (addr, _stop) = mk_server(learner.clone(), counters.clone()).await;
    let (tx, mut replies) = mk_stream(addr).await;
    tx.send(hello()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counters.namespace_tables_sent.load(Relaxed), 0);
    learner.publish_namespace_table(&render);
    let kind = next(&mut replies).await;
    assert!(
        matches!(&kind, controller_message::Kind::Namespaces(t) if t.namespaces.len() == 2),
        "{kind:?}"
    );
}

#[test]
fn file_mode_writes_the_gateway_objects_whole_and_only_on_change() {
    let (learner, render) = mk_learner(TOPOLOGY);
    let out = tempfile::tempdir().unwrap();
    let objects = lazyxds_index::gateway_objects(&learner.index(), &render);
    assert!(lazyxds::filemode::write_gateway(out.path(), &objects).unwrap());
    assert!(!lazyxds::filemode::write_gateway(out.path(), &objects).unwrap());
    let path = lazyxds::filemode::gateway_file(out.path());
    assert_eq!(path, out.path().join("gateway/lazyxds-gateway.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, objects.to_yaml().unwrap());
    // Nothing else in the directory (no temp file left), and the Sidecar directory above
    // still has one Sidecar per file: the objects are in a subdirectory.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["lazyxds-gateway.yaml"]);
    assert!(lazyxds::filemode::read_our_sidecars(out.path())
        .unwrap()
        .is_empty());
}
