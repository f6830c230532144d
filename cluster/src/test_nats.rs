//! A real `nats-server` for tests, on a port it picks itself; killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CANDIDATES: [&str; 3] = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "nats-server"];
const READY_WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub(crate) struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p -1` and returns once its log says it is ready,
    /// with the port it chose taken from "Listening for client connections on 127.0.0.1:PORT".
    pub(crate) fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// [`NatsServer::start`] with more arguments (`-c FILE` for a configuration).
    pub(crate) fn start_with(extra: &[&str]) -> NatsServer {
        let mut child = spawn_server(extra);
        let stderr = child.stderr.take().expect("nats-server's stderr is piped");
        let (lines_tx, lines) = mpsc::channel();
        // Keeps reading to the end so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_WITHIN;
        let (mut port, mut log) = (None, Vec::new());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server was not ready ({e:?}); its log:\n{}", log.join("\n"));
                }
            };
            if let Some((_, address)) = line.split_once("Listening for client connections on ") {
                port = address.trim().rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok());
            }
            let ready = line.contains("Server is ready");
            log.push(line);
            if let (true, Some(port)) = (ready, port) {
                return NatsServer { child, url: format!("nats://127.0.0.1:{port}") };
            }
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(extra: &[&str]) -> Child {
    for program in CANDIDATES {
        let spawned = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => return child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("starting {program} failed: {e}"),
        }
    }
    panic!(
        "nats-server is not installed (looked for {CANDIDATES:?}); these tests need a real one: \
         `apt-get install nats-server` or put it on PATH"
    )
}
