//! Helpers for the production-hardening tests (`tests/tests/hardening.rs`): nodes started
//! under a lowered descriptor limit (`prlimit`), in their own network namespace (`unshare`,
//! so default ports never collide), or without waiting for readiness (a node up before its
//! broker); raw HTTP exchanges from a chosen loopback source address; listening sockets read
//! from `/proc`.

use std::{
    fs::File,
    net::SocketAddr,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{Node, StatusCode, TIMEOUT, free_port, herald_binary, http_client, within};

/// How a node is launched.
#[derive(Default)]
pub struct Launch<'a> {
    /// Settings (`HERALD_*`) for the child.
    pub env: Vec<(&'a str, String)>,
    /// Soft and hard `RLIMIT_NOFILE` of the child (through `prlimit`).
    pub nofile: Option<u64>,
    /// A lower soft limit than `nofile` (the hard one), when set.
    pub nofile_soft: Option<u64>,
    /// Run in a fresh network namespace with `lo` up and these extra addresses on it (the
    /// node keeps its default addresses: nothing else can hold its ports there). Its sockets
    /// are then reachable only through [`in_netns`].
    pub netns: Option<Vec<&'a str>>,
}

impl Launch<'_> {
    /// Starts the child; returns once `/healthz` answers (or, in a namespace, once it
    /// listens), or with the child's exit status and log if it exits first.
    pub async fn start(self) -> Result<Node, (ExitStatus, String)> {
        let bin = herald_binary();
        let log_dir = tempfile::tempdir().expect("temp dir for the node log");
        let log_path = log_dir.path().join("herald.log");
        let log = File::create(&log_path).expect("creating the node log");
        let (http, grpc, api, admin) = (free_port(), free_port(), free_port(), free_port());
        let mut cmd = match (&self.netns, self.nofile) {
            (Some(addrs), _) => {
                let mut script = "ip link set lo up".to_owned();
                for a in addrs {
                    script.push_str(&format!(" && ip addr add {a}/32 dev lo"));
                }
                script.push_str(" && exec \"$0\" serve");
                let mut c = Command::new("unshare");
                c.args(["--net", "sh", "-c", &script]).arg(&bin);
                c
            }
            (None, Some(n)) => {
                let mut c = Command::new("prlimit");
                let soft = self.nofile_soft.unwrap_or(n);
                c.arg(format!("--nofile={soft}:{n}"))
                    .arg("--")
                    .arg(&bin)
                    .arg("serve");
                c
            }
            (None, None) => {
                let mut c = Command::new(&bin);
                c.arg("serve");
                c
            }
        };
        if self.netns.is_none() {
            cmd.env("HERALD_HTTP_ADDR", http.to_string())
                .env("HERALD_GRPC_ADDR", grpc.to_string())
                .env("HERALD_API_ADDR", api.to_string())
                .env("HERALD_ADMIN_ADDR", admin.to_string());
        }
        cmd.env("HERALD_NODE_ID", "e2e-hard")
            .env("HERALD_LOG", "info,herald_edge=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning the node");
        let mut node = Node {
            child,
            exited: None,
            http,
            grpc,
            api,
            admin,
            log_path,
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = node.try_exit_status() {
                return Err((status, node.log()));
            }
            let up = if self.netns.is_some() {
                !listening(node.pid()).is_empty()
            } else {
                health(&node).await == Some(StatusCode::OK)
            };
            if up {
                return Ok(node);
            }
            assert!(
                Instant::now() < deadline,
                "node not up within 20 s; log:\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Status of `GET /healthz` on the admin port (`None`: no answer within 2 s).
pub async fn health(node: &Node) -> Option<StatusCode> {
    admin_get(node, "/healthz").await.map(|(s, _)| s)
}

/// `GET <path>` on the admin port: status and body (`None`: no answer within 2 s).
pub async fn admin_get(node: &Node, path: &str) -> Option<(StatusCode, String)> {
    let r = http_client()
        .get(format!("{}{path}", node.admin_url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status();
    Some((status, r.text().await.ok()?))
}

/// TCP sockets in LISTEN state in the process's network namespace (`/proc/<pid>/net/tcp*`).
pub fn listening(pid: u32) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue;
            }
            let Some((ip, port)) = f[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).expect("port");
            let ip: std::net::IpAddr = if v6 {
                let mut b = [0u8; 16];
                for (i, chunk) in b.chunks_mut(4).enumerate() {
                    let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).expect("v6 word");
                    chunk.copy_from_slice(&word.to_le_bytes());
                }
                std::net::Ipv6Addr::from(b).into()
            } else {
                let word = u32::from_str_radix(ip, 16).expect("v4");
                std::net::Ipv4Addr::from(word.to_le_bytes()).into()
            };
            out.push(SocketAddr::new(ip, port));
        }
    }
    out
}

/// Runs the `herald` binary with `args` inside the network namespace of process `pid`
/// (`nsenter`); returns whether it succeeded, and its stdout and stderr.
pub fn in_netns(pid: u32, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg(herald_binary())
        .args(args)
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_GRPC_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running nsenter");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Opens a TCP connection to `to` from the loopback address `source`.
pub async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("binding the source address");
    within(TIMEOUT, "connect", socket.connect(to))
        .await
        .expect("connecting")
}

/// Sends `request` on `stream` and reads one HTTP response head plus its body (up to
/// `Content-Length`, or until the peer closes or `limit` passes). Returns the status and
/// the text read.
pub async fn exchange(stream: &mut TcpStream, request: &str, limit: Duration) -> (u16, String) {
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = len
                    && out.len() >= end + 4 + len
                {
                    break;
                }
                // A streamed response (SSE) or an upgrade: the head is enough.
                if len.is_none()
                    && (head.contains("text/event-stream") || head.starts_with("http/1.1 101"))
                {
                    break;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
