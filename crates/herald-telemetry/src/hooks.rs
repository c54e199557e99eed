//! Metric families of the backend hooks (herald-hooks): calls by hook and outcome, their
//! duration, and calls in flight.
//!
//! Both label sets are closed ([`HOOKS`], [`HOOK_OUTCOMES`]) and every series is exported at
//! zero from start-up, whether hooks are configured or not.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The hooks (the `hook` label).
pub const HOOKS: [&str; 4] = ["connect", "subscribe", "publish", "rpc"];

/// What a hook call ended with (the `outcome` label): the backend's answer (`allow`,
/// `refuse`, `modify`: allowed with a changed user, info or data, `published`: the backend
/// published the message itself; an RPC result counts as `allow`, an RPC error as `refuse`),
/// or why there was no usable answer (`error_*`, one per `HookError` kind).
pub const HOOK_OUTCOMES: [&str; 8] = [
    "allow",
    "refuse",
    "modify",
    "published",
    "error_timeout",
    "error_unavailable",
    "error_overloaded",
    "error_bad_answer",
];

/// Buckets (seconds) of hook call durations: 1 ms to 10 s (the default hook timeout is 1 s).
const HOOK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The hook families. Shared as `Arc<HookMetrics>` ([`crate::Metrics::hooks`]).
pub struct HookMetrics {
    /// `herald_hook_calls_total{hook,outcome}`: finished calls (a call abandoned because the
    /// client went away is not counted).
    pub calls: IntCounterVec,
    /// `herald_hook_duration_seconds{hook,outcome}`: call duration, including the wait for
    /// the answer's body.
    pub duration: HistogramVec,
    /// `herald_hook_in_flight`: calls waiting for the backend on this node (bounded by the
    /// hooks' `max_concurrent`; at the bound, calls fail at once as `error_overloaded`).
    pub in_flight: IntGauge,
}

impl HookMetrics {
    /// Registers the families in `registry`, every (hook, outcome) series at zero.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let calls = IntCounterVec::new(
            Opts::new(
                "herald_hook_calls_total",
                "Backend hook calls by hook (connect, subscribe, publish, rpc) and outcome.",
            ),
            &["hook", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "herald_hook_duration_seconds",
                "Backend hook call duration by hook and outcome.",
            )
            .buckets(HOOK_BUCKETS.to_vec()),
            &["hook", "outcome"],
        )?;
        let in_flight = IntGauge::with_opts(Opts::new(
            "herald_hook_in_flight",
            "Backend hook calls waiting for the backend on this node.",
        ))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        for hook in HOOKS {
            for outcome in HOOK_OUTCOMES {
                calls.with_label_values(&[hook, outcome]);
                duration.with_label_values(&[hook, outcome]);
            }
        }
        Ok(Self {
            calls,
            duration,
            in_flight,
        })
    }

    /// Records one finished call (`hook` from [`HOOKS`], `outcome` from [`HOOK_OUTCOMES`]).
    pub fn record(&self, hook: &str, outcome: &str, seconds: f64) {
        self.calls.with_label_values(&[hook, outcome]).inc();
        self.duration
            .with_label_values(&[hook, outcome])
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_series_is_exported_at_zero() {
        let registry = Registry::new();
        let m = HookMetrics::register(&registry).unwrap();
        m.record("rpc", "refuse", 0.01);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("herald_hook_calls_total{hook=\"connect\",outcome=\"error_timeout\"} 0")
        );
        assert!(text.contains("herald_hook_calls_total{hook=\"rpc\",outcome=\"refuse\"} 1"));
        assert!(text.contains(
            "herald_hook_duration_seconds_count{hook=\"publish\",outcome=\"published\"} 0"
        ));
        assert!(text.contains("herald_hook_in_flight 0"));
    }
}
