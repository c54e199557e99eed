//! Helpers for the observability tests: a real Prometheus (Debian `prometheus`) scraping
//! Herald nodes and loading `deploy/prometheus/alerts.yml`, `promtool check metrics`, the
//! PromQL of the Grafana dashboards, and an OTLP trace receiver (a tonic server on the
//! opentelemetry-proto collector service) that keeps every span it is sent.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
    trace::v1::Span,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{TIMEOUT, within};

/// The Prometheus binary of the Debian package.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// How long Prometheus may take to start answering.
const PROMETHEUS_READY: Duration = Duration::from_secs(30);

/// The repository root (the e2e crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .expect("building the HTTP client")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// A Prometheus child process on a temporary directory, scraping `job="herald"` every second
/// and evaluating the given rule files every second. Killed when dropped.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (admin addresses) as job `herald`, with `rules`
    /// loaded, and waits until it is ready. Prometheus refuses to start when a rule does not
    /// parse, so a bad rule fails here with its log.
    pub async fn start(targets: &[SocketAddr], rules: &[PathBuf]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} missing: apt-get install -y prometheus (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        let port = free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [ {} ]\n\
             scrape_configs:\n  \
               - job_name: herald\n    \
                 static_configs: [ {{ targets: [ {} ] }} ]\n",
            rules.join(", "),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("prom log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {PROMETHEUS}: {e}"));
        let mut prom = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + PROMETHEUS_READY;
        loop {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}); its log:\n{}", prom.log());
            }
            if let Ok(r) = client().get(format!("{}/-/ready", prom.url)).send().await
                && r.status().is_success()
            {
                return prom;
            }
            if Instant::now() >= deadline {
                panic!(
                    "prometheus not ready within {PROMETHEUS_READY:?}; its log:\n{}",
                    prom.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::encode(v)))
            .collect();
        let url = format!("{}/api/v1/{path}?{}", self.url, query.join("&"));
        within(TIMEOUT, &format!("GET {url}"), async {
            let resp = client()
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let body = resp
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
            serde_json::from_slice::<Value>(&body).unwrap_or_else(|e| {
                panic!(
                    "GET {url}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            })
        })
        .await
    }

    /// Runs an instant query: the result vector, or the error Prometheus gave (a parse
    /// error, an unknown function...).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body = self.api("query", &[("query", expr)]).await;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match &body["data"]["result"] {
            Value::Array(v) => Ok(v.clone()),
            // A scalar or string result is one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// Every rule Prometheus loaded: `(name, query, health, last error)`.
    pub async fn rules(&self) -> Vec<(String, String, String, String)> {
        let body = self.api("rules", &[]).await;
        let mut out = Vec::new();
        for group in body["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let s = |k: &str| rule[k].as_str().unwrap_or_default().to_owned();
                out.push((s("name"), s("query"), s("health"), s("lastError")));
            }
        }
        out
    }

    /// Waits until `n` targets are scraped successfully (`up == 1`).
    pub async fn wait_targets_up(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = self.query("up == 1").await
                && v.len() >= n
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{n} targets not up within 30 s; prometheus log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` on a text exposition: `Ok` when it reports nothing,
/// else its complaints.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool (apt-get install -y prometheus): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition.as_bytes())
        .map_err(|e| format!("writing to promtool: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {text}", out.status))
    }
}

/// Every PromQL expression of a Grafana dashboard: each panel target's `expr` (rows'
/// nested panels too) and each `label_values(<expr>, label)` variable query, as
/// `(where, expr)`.
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let refid = t["refId"].as_str().unwrap_or("?");
                    let title = p["title"].as_str().unwrap_or("?");
                    out.push((format!("panel {title:?} {refid}"), e.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = match &v["query"] {
            Value::String(s) => s.clone(),
            q => q["query"].as_str().unwrap_or_default().to_owned(),
        };
        if let Some(inner) = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(e, _)| e.trim().to_owned())
        {
            out.push((
                format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                inner,
            ));
        }
    }
    out
}

/// Replaces Grafana's variables as a dashboard showing every job and node would:
/// `$__rate_interval` by `rate_interval`, `$job` and `$node` (in `=~` matchers) by `.+`.
pub fn grafana_subst(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("${job}", ".+")
        .replace("$job", ".+")
        .replace("${node}", ".+")
        .replace("$node", ".+")
}

/// Splits an alert expression `<signal> <comparison> <threshold>` at its last top-level
/// comparison (outside parentheses, braces, brackets and strings) and returns the signal, so
/// a test can require that it returns data even while the alert does not fire. Returns the
/// whole expression when there is no top-level comparison.
pub fn alert_signal(expr: &str) -> &str {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut cut) = (0i32, None::<u8>, None);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                b'>' | b'<' | b'=' | b'!' if depth == 0 => {
                    let two = bytes.get(i + 1) == Some(&b'=');
                    // `==`, `!=`, `>=`, `<=`, `>`, `<` (a lone `=` or `!` is not one).
                    if two || c == b'>' || c == b'<' {
                        cut = Some(i);
                        if two {
                            i += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    cut.map_or(expr, |at| expr[..at].trim())
}

/// One span an OTLP receiver got, with the `service.instance.id` of the process that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.instance.id` of the sender's resource (Herald's node id).
    pub instance: String,
    /// The span as sent.
    pub span: Span,
}

impl ReceivedSpan {
    /// The span's trace id, in hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span's id, in hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Its parent's span id, in hex (empty for a root span).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string attribute of the span.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                any_value::Value::IntValue(i) => Some(i.to_string()),
                _ => None,
            })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let instance = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push(ReceivedSpan {
                        instance: instance.clone(),
                        span,
                    });
                }
            }
        }
        self.spans.lock().expect("span list").extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC trace receiver on a free local port: a real tonic server implementing the
/// opentelemetry-proto collector `TraceService`, keeping every span. Stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens; give `http://{addr}` as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub addr: SocketAddr,
    collector: Collector,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Starts the receiver.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let collector = Collector::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("OTLP receiver failed: {e}");
            }
        });
        OtlpReceiver {
            addr,
            collector,
            stop,
        }
    }

    /// `http://ADDR`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().expect("span list").clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_signal_cuts_at_the_top_level_comparison() {
        assert_eq!(
            alert_signal("(sum(herald_ready) or on () vector(0)) < 1"),
            "(sum(herald_ready) or on () vector(0))"
        );
        assert_eq!(
            alert_signal("max by (job) (x{code!=\"OK\", a=~\"b>c\"}) >= 0.5"),
            "max by (job) (x{code!=\"OK\", a=~\"b>c\"})"
        );
        assert_eq!(alert_signal("x == 0"), "x");
        assert_eq!(alert_signal("rate(x[5m])"), "rate(x[5m])");
    }

    #[test]
    fn substitutes_grafana_variables() {
        assert_eq!(
            grafana_subst(
                "rate(x{job=~\"$job\", instance=~\"$node\"}[$__rate_interval])",
                "10s"
            ),
            "rate(x{job=~\".+\", instance=~\".+\"}[10s])"
        );
    }
}
