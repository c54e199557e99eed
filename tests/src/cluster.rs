//! Helpers for control-plane and multi-node tests: a real `nats-server` (from
//! `herald_nats::testing`), Herald nodes on it, a gRPC client that sends an API key, and the
//! `herald` CLI run as a process.

use std::{process::Stdio, time::Duration};

use herald_proto::v1::herald_client::HeraldClient;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tonic::{
    Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{Node, TIMEOUT, herald_binary, within};

pub use herald_nats::testing::NatsServer;

/// Heartbeat interval of cluster test nodes: short, so views converge quickly.
pub const HEARTBEAT: Duration = Duration::from_millis(300);

/// Starts a JetStream `nats-server` on a free port (blocking until healthy).
pub fn start_nats() -> NatsServer {
    NatsServer::start()
}

/// Starts a node with `HERALD_BROKER=nats` on `nats`, node id `id`, the short
/// [`HEARTBEAT`], in-memory JetStream storage, plus `extra` settings.
pub async fn nats_node(nats: &NatsServer, id: &str, extra: &[(&str, &str)]) -> Node {
    let url = nats.url();
    let heartbeat = format!("{}ms", HEARTBEAT.as_millis());
    let mut env: Vec<(&str, &str)> = vec![
        ("HERALD_BROKER", "nats"),
        ("HERALD_NATS_URL", &url),
        ("HERALD_NODE_ID", id),
        ("HERALD_NATS_STORAGE", "memory"),
        ("HERALD_HEARTBEAT_INTERVAL", &heartbeat),
    ];
    env.extend_from_slice(extra);
    Node::start(&env).await
}

/// Adds `authorization: Bearer <key>` to every call when a key is set.
#[derive(Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A `herald.v1.Herald` client that sends an API key.
pub type Control = HeraldClient<InterceptedService<Channel, ApiKey>>;

/// A gRPC channel to the node's control plane.
pub async fn grpc_channel(node: &Node) -> Channel {
    let url = format!("http://{}", node.grpc);
    within(
        TIMEOUT,
        "gRPC connect",
        Channel::from_shared(url).expect("gRPC URL").connect(),
    )
    .await
    .expect("connecting to the gRPC port")
}

/// A control client of `node`, sending `key` (raw: `Bearer ` is added) when given.
pub async fn control(node: &Node, key: Option<&str>) -> Control {
    let value = key.map(|k| format!("Bearer {k}").parse().expect("key as metadata"));
    HeraldClient::with_interceptor(grpc_channel(node).await, ApiKey(value))
}

/// Output of a finished CLI run.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit success.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `herald <args>` with `env` (and `stdin` fed in), waiting up to [`TIMEOUT`].
pub async fn cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(herald_binary());
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawning the herald CLI");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_owned();
        tokio::spawn(async move {
            let _ = pipe.write_all(input.as_bytes()).await;
        });
    }
    let out = within(
        TIMEOUT,
        &format!("herald {}", args.join(" ")),
        child.wait_with_output(),
    )
    .await
    .expect("waiting for the herald CLI");
    CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A long-running CLI process (e.g. `herald subscribe`) whose stdout is read line by line.
pub struct CliProcess {
    child: tokio::process::Child,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
}

impl CliProcess {
    /// Spawns `herald <args>` with `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> CliProcess {
        let mut child = tokio::process::Command::new(herald_binary())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning the herald CLI");
        let stdout = child.stdout.take().expect("stdout pipe");
        CliProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next stdout line parsed as JSON; panics on timeout or end of output.
    pub async fn next_json(&mut self) -> serde_json::Value {
        let line = within(
            TIMEOUT,
            "a line from the herald CLI",
            self.lines.next_line(),
        )
        .await
        .expect("reading the CLI output")
        .expect("the CLI ended its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("CLI line is not JSON ({e}): {line}"))
    }

    /// Waits for the process to exit; its success.
    pub async fn wait(&mut self) -> bool {
        within(TIMEOUT, "the herald CLI to exit", self.child.wait())
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    }
}
