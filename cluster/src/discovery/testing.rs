//! A real etcd for tests: `etcd` from PATH, on ephemeral ports, with its data in a temporary
//! folder, killed when the guard drops.
//!
//! etcd 3.4 accepts port 0 in its listen URLs and logs (with `--logger zap`, one JSON object a
//! line on stderr) `"msg":"serving client traffic …","address":"127.0.0.1:PORT"` once it serves,
//! so the port is read from there. Readiness is then confirmed with a client `status()` call.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long etcd may take to elect itself and serve.
const STARTUP: Duration = Duration::from_secs(30);
/// Log lines kept to explain a failed start.
const LOG_TAIL: usize = 40;

pub(crate) struct TestEtcd {
    child: Child,
    endpoint: String,
    log: Arc<Mutex<VecDeque<String>>>,
    dir: TempDir,
}

impl TestEtcd {
    /// Starts etcd and waits until it answers. Panics, saying why, if it cannot.
    pub(crate) async fn start() -> TestEtcd {
        let dir = tempfile::tempdir().expect("temporary folder for etcd");
        let (child, endpoint, log) = launch(&dir, "http://127.0.0.1:0").await;
        TestEtcd { child, endpoint, log, dir }
    }

    /// `http://127.0.0.1:PORT`
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Kills etcd and starts it again on the same client port with the same data, as after a
    /// crash: clients see their streams break, then the same endpoint answer again.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let (child, endpoint, log) = launch(&self.dir, &self.endpoint).await;
        assert_eq!(endpoint, self.endpoint, "etcd came back on another address");
        self.child = child;
        self.log = log;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts etcd listening for clients on `client_url` and waits for it to serve.
async fn launch(dir: &TempDir, client_url: &str) -> (Child, String, Arc<Mutex<VecDeque<String>>>) {
    let data = dir.path().join("data");
    let mut child = Command::new("etcd")
        .arg("--name=test")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg("--listen-peer-urls=http://127.0.0.1:0")
        .arg("--initial-advertise-peer-urls=http://127.0.0.1:0")
        .arg("--initial-cluster=test=http://127.0.0.1:0")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `etcd` ({e}): these tests need etcd 3.4+ on PATH (Debian: apt-get install etcd-server)")
        });
    let log = Arc::new(Mutex::new(VecDeque::new()));
    let (address_tx, address_rx) = oneshot::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    let tail = Arc::clone(&log);
    // Reads to the end: etcd would block on a full pipe if nobody drained it.
    std::thread::spawn(move || {
        let mut address_tx = Some(address_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(address) = client_address(&line)
                && let Some(tx) = address_tx.take()
            {
                let _ = tx.send(address);
            }
            let mut tail = tail.lock();
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
    let deadline = Instant::now() + STARTUP;
    let address = match tokio::time::timeout_at(deadline, address_rx).await {
        Ok(Ok(address)) => address,
        Ok(Err(_)) => fail(&mut child, &log, "exited before serving clients"),
        Err(_) => fail(&mut child, &log, "did not serve clients in time"),
    };
    let endpoint = format!("http://{address}");
    wait_ready(&endpoint, deadline).await.unwrap_or_else(|e| fail(&mut child, &log, &e));
    (child, endpoint, log)
}

/// The address in etcd's "serving client traffic" line, if this is that line.
fn client_address(line: &str) -> Option<String> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    if !entry.get("msg")?.as_str()?.starts_with("serving client traffic") {
        return None;
    }
    Some(entry.get("address")?.as_str()?.to_string())
}

/// Polls `status()` until etcd answers or the deadline passes.
async fn wait_ready(endpoint: &str, deadline: Instant) -> Result<(), String> {
    loop {
        let attempt = async {
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            client.status().await
        };
        let error = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("not ready at {endpoint}: {error}"));
        }
        // Pace the retries; readiness itself is decided by the call above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fail(child: &mut Child, log: &Mutex<VecDeque<String>>, why: &str) -> ! {
    let _ = child.kill();
    let status = child.wait().map(|status| status.to_string()).unwrap_or_else(|e| e.to_string());
    let tail = log.lock();
    let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
    panic!("etcd {why} ({status}); last log lines:\n{}", tail.join("\n"));
}
