//! The etcd and file backends against the same expectations: a real etcd from
//! [`testing::TestEtcd`](super::testing::TestEtcd), a real temporary folder.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::testing::TestEtcd;
use super::*;

/// Long enough for any event that should come; the tests never wait this long when passing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn worker(id: &str, models: &[&str]) -> WorkerInstance {
    WorkerInstance {
        id: id.to_string(),
        address: WorkerAddress::Grpc(format!("http://{id}.local:8001")),
        models: models.iter().map(|m| m.to_string()).collect(),
        mode: Default::default(),
        events: None,
        device: Default::default(),
    }
}

fn down(id: &str) -> DiscoveryEvent {
    DiscoveryEvent::Down { id: id.to_string() }
}

async fn next_event(watch: &mut broadcast::Receiver<DiscoveryEvent>) -> DiscoveryEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("watch failed: {e}"),
        Err(_) => panic!("no discovery event within {EVENT_TIMEOUT:?}"),
    }
}

async fn etcd(server: &TestEtcd, namespace: &str, ttl: Duration) -> EtcdDiscovery {
    etcd_scoped(server, &NamespaceScope::own(namespace), ttl).await
}

async fn etcd_scoped(server: &TestEtcd, scope: &NamespaceScope, ttl: Duration) -> EtcdDiscovery {
    EtcdDiscovery::connect(&[server.endpoint().to_string()], scope, ttl).await.expect("connect to etcd")
}

/// A frontend's scope: registers in `prod`, watches every namespace starting with `prod-`.
fn prod_prefix() -> NamespaceScope {
    NamespaceScope { own: "prod".into(), watch_prefix: Some("prod-".into()) }
}

/// The frontend (scope [`prod_prefix`]) sees the workers of `prod-blue` and `prod-green`, not
/// those of `production`; workers keep seeing only their own namespace.
async fn prefix_scope(frontend: &dyn Discovery, blue: &dyn Discovery, green: &dyn Discovery, production: &dyn Discovery) {
    let mut watch = frontend.watch();
    production.register(worker("p", &["identity"])).await.expect("register");
    blue.register(worker("b", &["identity"])).await.expect("register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("b", &["identity"])));
    green.register(worker("g", &["add_sub"])).await.expect("register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("g", &["add_sub"])));
    let mut listed = frontend.instances().await.expect("list");
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed, vec![worker("b", &["identity"]), worker("g", &["add_sub"])]);
    assert_eq!(blue.instances().await.expect("list"), vec![worker("b", &["identity"])]);

    blue.deregister("b").await.expect("deregister");
    assert_eq!(next_event(&mut watch).await, down("b"));
    assert_eq!(frontend.instances().await.expect("list"), vec![worker("g", &["add_sub"])]);
}

/// register, re-register with other models, deregister: each listed and watched.
async fn lifecycle(discovery: &dyn Discovery) {
    let mut watch = discovery.watch();
    discovery.register(worker("a", &["identity"])).await.expect("register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("a", &["identity"])));
    assert_eq!(discovery.instances().await.expect("list"), vec![worker("a", &["identity"])]);

    discovery.register(worker("a", &["identity", "repeat"])).await.expect("re-register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("a", &["identity", "repeat"])));
    assert_eq!(discovery.instances().await.expect("list"), vec![worker("a", &["identity", "repeat"])]);

    discovery.deregister("a").await.expect("deregister");
    assert_eq!(next_event(&mut watch).await, down("a"));
    assert_eq!(discovery.instances().await.expect("list"), vec![]);
    discovery.deregister("nobody").await.expect("unknown ids are fine");
}

/// A registration outlives several TTLs while its owner lives, and is gone within the TTL (plus
/// the backend's detection delay) once the owner drops without deregistering.
async fn dies_with_its_owner(owner: Box<dyn Discovery>, observer: &dyn Discovery, ttl: Duration) {
    let mut watch = observer.watch();
    owner.register(worker("doomed", &["identity"])).await.expect("register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("doomed", &["identity"])));

    let quiet = tokio::time::timeout(ttl * 2, watch.recv()).await;
    assert!(quiet.is_err(), "a kept-alive registration changed: {quiet:?}");
    assert_eq!(observer.instances().await.expect("list"), vec![worker("doomed", &["identity"])]);

    drop(owner);
    let dropped = Instant::now();
    let margin = Duration::from_secs(2);
    match tokio::time::timeout(ttl + margin, watch.recv()).await {
        Ok(Ok(event)) => assert_eq!(event, down("doomed")),
        other => panic!("no Down within the TTL {ttl:?} + {margin:?}: {other:?}"),
    }
    assert!(dropped.elapsed() <= ttl + margin);
    assert_eq!(observer.instances().await.expect("list"), vec![]);
}

/// Two handles on one namespace see each other's workers; a third on another namespace does not.
async fn namespaces(alpha: &dyn Discovery, also_alpha: &dyn Discovery, beta: &dyn Discovery) {
    let mut alpha_watch = also_alpha.watch();
    let mut beta_watch = beta.watch();
    alpha.register(worker("a", &["identity"])).await.expect("register");
    assert_eq!(next_event(&mut alpha_watch).await, DiscoveryEvent::Up(worker("a", &["identity"])));
    assert_eq!(also_alpha.instances().await.expect("list"), vec![worker("a", &["identity"])]);
    assert_eq!(beta.instances().await.expect("list"), vec![]);

    // Had either side seen the other's worker, that event would come first.
    beta.register(worker("b", &["add_sub"])).await.expect("register");
    assert_eq!(next_event(&mut beta_watch).await, DiscoveryEvent::Up(worker("b", &["add_sub"])));
    alpha.register(worker("c", &["repeat"])).await.expect("register");
    assert_eq!(next_event(&mut alpha_watch).await, DiscoveryEvent::Up(worker("c", &["repeat"])));
    assert_eq!(also_alpha.instances().await.expect("list"), vec![worker("a", &["identity"]), worker("c", &["repeat"])]);
    assert_eq!(beta.instances().await.expect("list"), vec![worker("b", &["add_sub"])]);
}

fn assert_invalid(result: Result<(), DiscoveryError>, value: &str) {
    match result {
        Err(DiscoveryError::Invalid { what: "worker id", value: v, .. }) => assert_eq!(v, value),
        other => panic!("id {value:?} was not refused: {other:?}"),
    }
}

async fn refuses_unsafe_ids(discovery: &dyn Discovery) {
    for id in ["", "a/b", "..", "../escape", ".hidden", "a\\b"] {
        assert_invalid(discovery.register(worker(id, &[])).await, id);
    }
}

#[tokio::test]
async fn etcd_register_update_and_deregister_are_listed_and_watched() {
    let server = TestEtcd::start().await;
    lifecycle(&etcd(&server, "lifecycle", Duration::from_secs(5)).await).await;
}

#[tokio::test]
async fn etcd_worker_that_stops_renewing_disappears_within_the_ttl() {
    let server = TestEtcd::start().await;
    let ttl = Duration::from_secs(2);
    let observer = etcd(&server, "dies", ttl).await;
    dies_with_its_owner(Box::new(etcd(&server, "dies", ttl).await), &observer, ttl).await;
}

#[tokio::test]
async fn etcd_namespaces_share_within_and_not_across() {
    let server = TestEtcd::start().await;
    let ttl = Duration::from_secs(5);
    namespaces(&etcd(&server, "alpha", ttl).await, &etcd(&server, "alpha", ttl).await, &etcd(&server, "beta", ttl).await).await;
}

#[tokio::test]
async fn etcd_namespace_prefix_watches_every_namespace_starting_with_it() {
    let server = TestEtcd::start().await;
    let ttl = Duration::from_secs(5);
    let frontend = etcd_scoped(&server, &prod_prefix(), ttl).await;
    let (blue, green) = (etcd(&server, "prod-blue", ttl).await, etcd(&server, "prod-green", ttl).await);
    prefix_scope(&frontend, &blue, &green, &etcd(&server, "production", ttl).await).await;
}

#[tokio::test]
async fn etcd_refuses_unsafe_ids() {
    let server = TestEtcd::start().await;
    refuses_unsafe_ids(&etcd(&server, "ids", Duration::from_secs(5)).await).await;
}

#[tokio::test]
async fn etcd_lost_lease_is_replaced_and_the_record_comes_back() {
    let server = TestEtcd::start().await;
    let discovery = etcd(&server, "lost", Duration::from_secs(2)).await;
    let mut watch = discovery.watch();
    discovery.register(worker("a", &["identity"])).await.expect("register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("a", &["identity"])));

    // Revoking behind the worker's back is what etcd does to a lease it could not renew.
    let mut admin = etcd_client::Client::connect([server.endpoint()], None).await.expect("admin client");
    let leases = admin.leases().await.expect("list leases");
    assert_eq!(leases.leases().len(), 1);
    admin.lease_revoke(leases.leases()[0].id()).await.expect("revoke");

    assert_eq!(next_event(&mut watch).await, down("a"));
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("a", &["identity"])));
    assert_eq!(discovery.instances().await.expect("list"), vec![worker("a", &["identity"])]);
}

#[tokio::test]
async fn etcd_watch_resyncs_after_etcd_restarts() {
    let mut server = TestEtcd::start().await;
    let discovery = etcd(&server, "restart", Duration::from_secs(5)).await;
    let mut watch = discovery.watch();
    discovery.register(worker("a", &["identity"])).await.expect("register");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("a", &["identity"])));

    server.restart().await;
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Resync);
    // The re-opened watch delivers new changes, and the first registration survived.
    discovery.register(worker("b", &["add_sub"])).await.expect("register after restart");
    assert_eq!(next_event(&mut watch).await, DiscoveryEvent::Up(worker("b", &["add_sub"])));
    let listed = discovery.instances().await.expect("list");
    assert_eq!(listed, vec![worker("a", &["identity"]), worker("b", &["add_sub"])]);
}

#[tokio::test]
async fn etcd_that_does_not_answer_is_unavailable() {
    // A port nobody listens on: bound by us, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    match EtcdDiscovery::connect(std::slice::from_ref(&endpoint), &NamespaceScope::own("nothing"), Duration::from_secs(2)).await {
        Err(DiscoveryError::Unavailable(message)) => assert!(message.contains(&endpoint), "{message}"),
        other => panic!("connecting to nothing gave {other:?}"),
    }
}

fn file(dir: &tempfile::TempDir, namespace: &str, ttl: Duration) -> FileDiscovery {
    file_scoped(dir, &NamespaceScope::own(namespace), ttl)
}

fn file_scoped(dir: &tempfile::TempDir, scope: &NamespaceScope, ttl: Duration) -> FileDiscovery {
    FileDiscovery::new(dir.path().to_path_buf(), scope, ttl).expect("file discovery")
}

#[tokio::test]
async fn file_register_update_and_deregister_are_listed_and_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    lifecycle(&file(&dir, "lifecycle", Duration::from_secs(5))).await;
}

#[tokio::test]
async fn file_worker_that_stops_refreshing_disappears_within_the_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_millis(600);
    dies_with_its_owner(Box::new(file(&dir, "dies", ttl)), &file(&dir, "dies", ttl), ttl).await;
}

#[tokio::test]
async fn file_namespaces_share_within_and_not_across() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(5);
    namespaces(&file(&dir, "alpha", ttl), &file(&dir, "alpha", ttl), &file(&dir, "beta", ttl)).await;
}

#[tokio::test]
async fn file_namespace_prefix_watches_every_namespace_starting_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(5);
    let frontend = file_scoped(&dir, &prod_prefix(), ttl);
    let (blue, green) = (file(&dir, "prod-blue", ttl), file(&dir, "prod-green", ttl));
    prefix_scope(&frontend, &blue, &green, &file(&dir, "production", ttl)).await;
}

#[tokio::test]
async fn file_refuses_unsafe_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    refuses_unsafe_ids(&file(&dir, "ids", Duration::from_secs(5))).await;
    assert!(matches!(
        FileDiscovery::new(dir.path().to_path_buf(), &NamespaceScope::own("../up"), Duration::from_secs(5)),
        Err(DiscoveryError::Invalid { what: "namespace", .. })
    ));
    let escaping = NamespaceScope { own: "ok".into(), watch_prefix: Some("../".into()) };
    assert!(matches!(
        FileDiscovery::new(dir.path().to_path_buf(), &escaping, Duration::from_secs(5)),
        Err(DiscoveryError::Invalid { what: "namespace prefix", .. })
    ));
}

#[tokio::test]
async fn file_skips_records_that_do_not_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let discovery = file(&dir, "junk", Duration::from_secs(5));
    discovery.register(worker("good", &["identity"])).await.expect("register");
    std::fs::write(dir.path().join("junk").join("bad.json"), b"{not json").expect("write junk");
    std::fs::write(dir.path().join("junk").join("liar.json"), serde_json::to_vec(&worker("other", &[])).expect("json"))
        .expect("write mismatched record");
    assert_eq!(discovery.instances().await.expect("list"), vec![worker("good", &["identity"])]);
}

#[tokio::test]
async fn connect_builds_each_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(5);
    let ns = NamespaceScope::own("ns");
    let memory = connect(&DiscoveryConfig::Memory, &ns, ttl, &Default::default()).await.expect("memory");
    lifecycle(memory.as_ref()).await;
    let files =
        connect(&DiscoveryConfig::File { dir: dir.path().to_path_buf() }, &ns, ttl, &Default::default()).await.expect("file");
    files.register(worker("a", &[])).await.expect("register");
    assert!(dir.path().join("ns").join("a.json").is_file());
    let server = TestEtcd::start().await;
    let etcd = connect(&DiscoveryConfig::Etcd { endpoints: vec![server.endpoint().to_string()] }, &ns, ttl, &Default::default())
        .await
        .expect("etcd");
    etcd.register(worker("a", &[])).await.expect("register");
    assert_eq!(etcd.instances().await.expect("list"), vec![worker("a", &[])]);
}

/// Documents: stored per namespace, replaced whole, deleted, bounded, and never listed as workers.
async fn documents(alpha: &dyn Discovery, also_alpha: &dyn Discovery, beta: &dyn Discovery) {
    assert_eq!(alpha.get_document("snapshot").await.expect("get"), None);
    alpha.put_document("snapshot", b"one".to_vec()).await.expect("put");
    alpha.put_document("snapshot", b"two".to_vec()).await.expect("replace");
    assert_eq!(also_alpha.get_document("snapshot").await.expect("get"), Some(b"two".to_vec()));
    assert_eq!(beta.get_document("snapshot").await.expect("other namespace"), None);
    assert!(alpha.instances().await.expect("list").is_empty(), "a document is no worker");
    let too_big = vec![b'x'; MAX_DOCUMENT_BYTES + 1];
    assert!(alpha.put_document("snapshot", too_big).await.is_err());
    assert!(alpha.put_document("../escape", b"x".to_vec()).await.is_err());
    also_alpha.delete_document("snapshot").await.expect("delete");
    also_alpha.delete_document("snapshot").await.expect("deleting nothing is fine");
    assert_eq!(alpha.get_document("snapshot").await.expect("get"), None);
}

#[tokio::test]
async fn etcd_documents_are_shared_within_a_namespace() {
    let server = TestEtcd::start().await;
    let ttl = Duration::from_secs(5);
    documents(&etcd(&server, "alpha", ttl).await, &etcd(&server, "alpha", ttl).await, &etcd(&server, "beta", ttl).await).await;
}

#[tokio::test]
async fn file_and_memory_documents_are_shared_within_a_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(5);
    documents(&file(&dir, "alpha", ttl), &file(&dir, "alpha", ttl), &file(&dir, "beta", ttl)).await;
    let memory = memory::MemoryDiscovery::new();
    memory.put_document("snapshot", b"kept".to_vec()).await.expect("put");
    assert_eq!(memory.get_document("snapshot").await.expect("get"), Some(b"kept".to_vec()));
    memory.delete_document("snapshot").await.expect("delete");
    assert_eq!(memory.get_document("snapshot").await.expect("get"), None);
}
