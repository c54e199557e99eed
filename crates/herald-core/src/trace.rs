//! W3C trace context handed from whoever calls [`Broker::publish`](crate::Broker::publish) to
//! the broker, so a broker that carries headers can put a `traceparent` on the message.
//!
//! It travels in a task-local rather than a [`PublishRequest`](crate::PublishRequest) field,
//! so publish requests stay plain data and nothing changes for callers that do not trace.
//! Outside [`with_traceparent`] (OpenTelemetry off) it costs one failed task-local lookup.

use std::{future::Future, sync::Arc};

tokio::task_local! {
    static TRACEPARENT: Arc<str>;
}

/// Runs `fut` with `traceparent` (a W3C `traceparent` header value) visible to
/// [`current_traceparent`]; with `None`, just runs it.
pub async fn with_traceparent<F: Future>(traceparent: Option<Arc<str>>, fut: F) -> F::Output {
    match traceparent {
        Some(tp) => TRACEPARENT.scope(tp, fut).await,
        None => fut.await,
    }
}

/// The `traceparent` of the publish being served by this task, if it is traced.
pub fn current_traceparent() -> Option<Arc<str>> {
    TRACEPARENT.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn visible_only_inside_the_scope() {
        assert!(current_traceparent().is_none());
        let tp: Arc<str> = Arc::from("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let seen = with_traceparent(Some(tp.clone()), async { current_traceparent() }).await;
        assert_eq!(seen.as_deref(), Some(&*tp));
        assert!(
            with_traceparent(None, async { current_traceparent() })
                .await
                .is_none()
        );
    }
}
