//! OpenTelemetry traces: OTLP/gRPC export when the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and W3C `traceparent` helpers that let a
//! publish's trace continue through the broker onto every node.
//!
//! When no endpoint is configured nothing is exported and [`enabled`] is false: call sites
//! check it (one relaxed atomic load) before creating any span, so the hot path pays nothing.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    },
};
use opentelemetry_sdk::{
    Resource,
    trace::{
        BatchConfig, SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor,
    },
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once the OTLP pipeline is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Environment variables that name an OTLP endpoint (the OpenTelemetry standard ones).
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The service name when `OTEL_SERVICE_NAME` does not say otherwise.
const SERVICE_NAME: &str = "herald";

/// How long [`TracingGuard::shutdown`] waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether spans are exported: call sites create spans only when this is true.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the environment asks for OTLP trace export: an endpoint variable is set and
/// neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns it off.
pub fn otlp_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let is = |k: &str, v: &str| std::env::var(k).is_ok_and(|x| x.trim().eq_ignore_ascii_case(v));
    ENDPOINT_VARS.iter().any(|k| set(k))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// Keeps the OTLP pipeline alive; [`TracingGuard::shutdown`] flushes the last spans.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct TracingGuard {
    /// The exporting provider, when OTLP is on.
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Stops span creation and exports what is buffered (bounded by a timeout).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            let flush = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, flush).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing traces failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces failed"),
                Err(_) => tracing::warn!("flushing traces timed out"),
            }
        }
    }
}

/// Builds the OTLP/gRPC pipeline. Needs a Tokio runtime (the batch processor runs on it).
fn provider(node_id: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(BatchConfig::default())
        .build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node_id.to_owned(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Installs the global `tracing` subscriber: `RUST_LOG`-style `filter` (default `info`), text
/// or JSON lines on stderr, and, when [`otlp_requested`], an OpenTelemetry layer exporting
/// Herald's spans over OTLP/gRPC (resource `service.instance.id` = `node_id`). Must run
/// inside a Tokio runtime when OTLP is requested.
pub fn init(filter: &str, json: bool, node_id: &str) -> TracingGuard {
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};
    let provider = if otlp_requested() {
        match provider(node_id) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("OTLP trace export disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herald"))
            .with_filter(filter_fn(|m| m.target().starts_with("herald")))
    });
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let lines = if json {
        lines.json().boxed()
    } else {
        lines.boxed()
    };
    let result = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(otel)
        .try_init();
    if let Err(e) = result {
        eprintln!("tracing was already initialised: {e}");
        return TracingGuard { provider: None };
    }
    if provider.is_some() {
        ENABLED.store(true, Ordering::Relaxed);
    }
    TracingGuard { provider }
}

/// Makes `span` (not yet entered) a child of the W3C `traceparent` when it parses, and
/// records its trace id in the span's `trace_id` field so log lines inside carry it.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = parse_traceparent(traceparent) {
        // Fails only when the span is disabled, which leaves nothing to trace.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    record_trace_id(span);
}

/// Records the trace id of `span` in its `trace_id` field (declared `Empty` at creation).
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

/// The W3C `traceparent` naming `span` as the parent, or `None` when it is not traced.
pub fn traceparent(span: &tracing::Span) -> Option<Arc<str>> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        Arc::from(format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8() & 1
        ))
    })
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` for anything else.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2)
        || version == "ff"
        || !lower_hex(trace, 32)
        || !lower_hex(span, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_valid_traceparents() {
        let sc = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(!enabled());
        assert!(traceparent(&tracing::Span::none()).is_none());
    }
}
