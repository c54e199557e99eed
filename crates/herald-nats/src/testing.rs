//! Throw-away `nats-server` processes for tests (feature `testing`): a JetStream server or a
//! 3-node cluster on free loopback ports, killed (and its store deleted) on drop.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where the Debian package installs the server; `HERALD_NATS_SERVER` is not consulted so tests
/// stay independent of the environment.
pub const NATS_SERVER_BIN: &str = "/usr/sbin/nats-server";

/// How long a server may take to report healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A port that was free a moment ago, and never handed out before by this process: a
/// server restarted on its port must not find it given to another test's server meanwhile.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One `nats-server` with JetStream. Can be killed and restarted on the same port and store.
pub struct NatsServer {
    port: u16,
    monitor: u16,
    store: tempfile::TempDir,
    /// Extra arguments (cluster settings) reused on restart.
    extra: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a single JetStream server on a free port and waits until it is healthy.
    pub fn start() -> Self {
        let mut server = Self::spawn_only(Vec::new());
        server.wait_ready();
        server
    }

    fn spawn_only(extra: Vec<String>) -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut server = Self {
            port: free_port(),
            monitor: free_port(),
            store,
            extra,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let store: PathBuf = self.store.path().join("js");
        let log = self.store.path().join("nats.log");
        let child = Command::new(NATS_SERVER_BIN)
            .args(["-js", "-a", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
            ])
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NATS_SERVER_BIN}: {e}"));
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/subsz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor
    }

    /// The server's process id while it runs (for RSS and CPU figures from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and waits for it to exit; the store is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a
    /// network partition or a stalled host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`NatsServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        assert!(self.try_signal(sig), "kill {sig} failed");
    }

    /// Sends a signal; false when it could not be sent (the process is gone).
    fn try_signal(&self, sig: &str) -> bool {
        match &self.child {
            Some(child) => Command::new("kill")
                .args([sig, &child.id().to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            None => true,
        }
    }

    /// Starts the server again on the same port with the same store and waits until healthy.
    /// A port still held for a moment (a connection of the old process in the kernel's
    /// hands) is retried for a few seconds.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..20 {
            self.spawn();
            match self.try_wait_ready() {
                Ok(()) => return,
                Err(log) if log.contains("address already in use") => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(log) => panic!("{log}"),
            }
        }
        self.wait_ready();
    }

    /// Blocks until `/healthz` on the monitor port answers 200 (JetStream included).
    pub fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready() {
            panic!("{e}");
        }
    }

    fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default();
                return Err(format!("nats-server exited ({status}); log:\n{log}"));
            }
            if healthz_ok(self.monitor) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "nats-server on port {} not healthy within {READY_TIMEOUT:?}",
            self.port
        ))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Never panics: a drop while a test unwinds must not abort the whole test binary.
        self.try_signal("-CONT");
        self.kill();
    }
}

fn healthz_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

/// Three routed servers with clustered JetStream (replicas 3 possible).
pub struct NatsCluster {
    /// The nodes; kill or restart them individually.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes and waits until each reports healthy (meta leader elected).
    pub fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<NatsServer> = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                NatsServer::spawn_only(vec![
                    "-n".into(),
                    format!("n{i}-{port}"),
                    "--cluster_name".into(),
                    format!("herald-test-{}", routes[0]),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".into(),
                    route_list.clone(),
                ])
            })
            .collect();
        for node in &mut nodes {
            node.wait_ready();
        }
        Self { nodes }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }
}
