//! The broker conformance suite: one set of behavioural tests that every [`Broker`]
//! implementation must pass, so the edge can rely on the same semantics from each.
//!
//! Implementations run it with [`broker_conformance_tests!`](crate::broker_conformance_tests),
//! giving a factory that builds a fresh, isolated broker for the given history limits:
//!
//! ```text
//! herald_core::broker_conformance_tests!(|limits| async move { MyBroker::new(limits).await });
//! ```

use std::{future::Future, sync::Arc, time::Duration};

use crate::{
    Broker, ChannelName, Cursor, HistoryLimits, HistoryQuery, LiveEvent, Message, Payload,
    PublishRequest, Subscription,
};

/// How long any single expected event may take before the test fails (instead of hanging).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Expands to one `#[tokio::test]` per conformance check, each calling `$factory`.
#[macro_export]
macro_rules! broker_conformance_tests {
    ($factory:expr) => {
        $crate::broker_conformance_tests!(@each $factory;
            cursors_increase_across_channels,
            live_delivery_is_ordered_per_channel,
            channels_are_isolated,
            history_after_cursor,
            history_count_limit_reports_gap,
            history_age_limit_reports_gap,
            idempotent_publish,
            head_tracks_publishes,
            cursor_ahead_of_head_is_a_gap,
            concurrent_publishers_lose_nothing,
            dropped_subscription_ends_interest,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name($factory).await;
            }
        )*
    };
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).expect("test channel names are valid")
}

fn req(channel: &ChannelName, json: &str) -> PublishRequest {
    PublishRequest {
        channel: channel.clone(),
        data: Payload::from_json(json.to_owned(), 1 << 20).expect("test payloads are JSON"),
        idempotency_key: None,
    }
}

async fn publish<B: Broker>(b: &B, channel: &ChannelName, json: &str) -> Cursor {
    b.publish(req(channel, json)).await.expect("publish").cursor
}

async fn next_message(sub: &mut Subscription) -> Arc<Message> {
    match tokio::time::timeout(EVENT_TIMEOUT, sub.next()).await {
        Ok(Some(LiveEvent::Message(m))) => m,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(_) => panic!("no message within {EVENT_TIMEOUT:?}"),
    }
}

async fn expect_silence(sub: &mut Subscription) {
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("expected nothing, got {ev:?}");
    }
}

fn limits(max_messages: usize, max_age: Duration) -> HistoryLimits {
    HistoryLimits {
        max_messages,
        max_age,
    }
}

/// Cursors strictly increase with every publish, whatever the channel.
pub async fn cursors_increase_across_channels<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let mut last = Cursor::ZERO;
    for i in 0..30 {
        let c = publish(&b, &ch(&format!("inc{}", i % 3)), &i.to_string()).await;
        assert!(c > last, "cursor {c:?} after {last:?}");
        last = c;
    }
}

/// A subscriber receives every message of its channel, in publish order, with the data and
/// cursor the publisher was given.
pub async fn live_delivery_is_ordered_per_channel<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let (a, z) = (ch("ord.a"), ch("ord.z"));
    let mut sa = b.subscribe(&a).await.expect("subscribe");
    let mut sz = b.subscribe(&z).await.expect("subscribe");
    let mut sent_a = Vec::new();
    let mut sent_z = Vec::new();
    for i in 0..20 {
        let (channel, sent) = if i % 2 == 0 {
            (&a, &mut sent_a)
        } else {
            (&z, &mut sent_z)
        };
        let json = format!("{{\"n\":{i}}}");
        sent.push((publish(&b, channel, &json).await, json));
    }
    for (sub, sent, channel) in [(&mut sa, &sent_a, &a), (&mut sz, &sent_z, &z)] {
        for (cursor, json) in sent {
            let m = next_message(sub).await;
            assert_eq!((&m.channel, m.cursor), (channel, *cursor));
            assert_eq!(m.data.as_bytes(), json.as_bytes());
        }
        expect_silence(sub).await;
    }
}

/// Names that look related (prefixes, dots, separators) never see each other's messages.
pub async fn channels_are_isolated<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let names = [
        "a", "a.b", "a.c", "a.b.c", "a:b", "a=b", "a@b", "a-b", "a_b", "A.B", "a..b",
    ];
    let mut subs = Vec::new();
    for n in names {
        subs.push(b.subscribe(&ch(n)).await.expect("subscribe"));
    }
    for n in names {
        publish(&b, &ch(n), &format!("\"{n}\"")).await;
    }
    for (n, sub) in names.iter().zip(subs.iter_mut()) {
        let m = next_message(sub).await;
        assert_eq!(m.channel.as_str(), *n);
        assert_eq!(m.data.as_bytes(), format!("\"{n}\"").as_bytes());
        expect_silence(sub).await;
        let page = b
            .history(
                &ch(n),
                HistoryQuery {
                    after: Cursor::ZERO,
                    limit: 100,
                },
            )
            .await
            .expect("history");
        assert_eq!(page.messages.len(), 1, "history of {n}");
    }
}

/// History returns exactly the retained messages after a cursor, in order, up to a limit.
pub async fn history_after_cursor<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let (c, other) = (ch("hist"), ch("hist.other"));
    let mut cursors = Vec::new();
    for i in 0..5 {
        cursors.push(publish(&b, &c, &i.to_string()).await);
        publish(&b, &other, "null").await;
    }
    let q = |after, limit| HistoryQuery { after, limit };
    let page = b.history(&c, q(cursors[1], 100)).await.expect("history");
    assert!(!page.gap);
    let got: Vec<_> = page.messages.iter().map(|m| m.cursor).collect();
    assert_eq!(got, cursors[2..]);
    assert_eq!(page.messages[0].data.as_bytes(), b"2");

    let page = b.history(&c, q(cursors[1], 2)).await.expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        cursors[2..4]
    );

    let page = b.history(&c, q(Cursor::ZERO, 100)).await.expect("history");
    assert!(!page.gap, "nothing was evicted");
    assert_eq!(page.messages.len(), 5);

    let page = b.history(&c, q(cursors[4], 100)).await.expect("history");
    assert!(!page.gap && page.messages.is_empty());

    let unknown = b
        .history(&ch("hist.never"), q(cursors[4], 100))
        .await
        .expect("history");
    assert!(!unknown.gap && unknown.messages.is_empty());
}

/// Past the count limit the oldest messages go, and a resume from before them is a gap.
pub async fn history_count_limit_reports_gap<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(limits(3, Duration::from_secs(300))).await;
    let c = ch("count");
    let mut cursors = Vec::new();
    for i in 0..5 {
        cursors.push(publish(&b, &c, &i.to_string()).await);
    }
    let q = |after| HistoryQuery { after, limit: 100 };
    let page = b.history(&c, q(Cursor::ZERO)).await.expect("history");
    assert!(page.gap, "two messages were evicted");
    assert_eq!(
        page.messages.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        cursors[2..]
    );

    let page = b.history(&c, q(cursors[0])).await.expect("history");
    assert!(page.gap, "message 1 was evicted");
    assert_eq!(page.messages.len(), 3);

    let page = b.history(&c, q(cursors[1])).await.expect("history");
    assert!(!page.gap, "everything after message 1 is retained");
    assert_eq!(page.messages.len(), 3);
}

/// Past the age limit messages go, and a resume from before them is a gap.
pub async fn history_age_limit_reports_gap<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(limits(100, Duration::from_secs(1))).await;
    let c = ch("age");
    let first = publish(&b, &c, "1").await;
    let q = |after| HistoryQuery { after, limit: 100 };
    let page = b.history(&c, q(Cursor::ZERO)).await.expect("history");
    assert_eq!(page.messages.len(), 1);
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let page = b.history(&c, q(Cursor::ZERO)).await.expect("history");
        if page.messages.is_empty() {
            assert!(
                page.gap,
                "an expired message is a gap for a resume from before it"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = b.history(&c, q(first)).await.expect("history");
    assert!(
        !page.gap && page.messages.is_empty(),
        "nothing after {first:?} was lost"
    );
    let second = publish(&b, &c, "2").await;
    let page = b.history(&c, q(first)).await.expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        [second]
    );
}

/// A repeated idempotency key stores nothing new and answers with the first cursor.
pub async fn idempotent_publish<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let c = ch("idem");
    let mut sub = b.subscribe(&c).await.expect("subscribe");
    let mut r = req(&c, "{\"x\":1}");
    r.idempotency_key = Some("key-1".into());
    let first = b.publish(r.clone()).await.expect("publish");
    let again = b.publish(r).await.expect("publish");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.cursor, again.cursor);
    assert_eq!(next_message(&mut sub).await.cursor, first.cursor);
    expect_silence(&mut sub).await;
    let page = b
        .history(
            &c,
            HistoryQuery {
                after: Cursor::ZERO,
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1);
}

/// `head` is the newest cursor; nothing is after it, and that is not a gap.
pub async fn head_tracks_publishes<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let before = b.head().await.expect("head");
    let c = ch("head");
    let cursor = publish(&b, &c, "true").await;
    assert!(cursor > before);
    assert_eq!(b.head().await.expect("head"), cursor);
    let page = b
        .history(
            &c,
            HistoryQuery {
                after: cursor,
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert!(!page.gap && page.messages.is_empty());
    let page = b
        .history(
            &c,
            HistoryQuery {
                after: before,
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert!(!page.gap);
    assert_eq!(page.messages.len(), 1);
}

/// A cursor the broker never issued (ahead of its head) cannot be vouched for: a gap.
pub async fn cursor_ahead_of_head_is_a_gap<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let c = ch("ahead");
    let cursor = publish(&b, &c, "1").await;
    let future = Cursor(cursor.0 + 1_000_000_000);
    let page = b
        .history(
            &c,
            HistoryQuery {
                after: future,
                limit: 10,
            },
        )
        .await
        .expect("history");
    assert!(page.gap);
}

/// Concurrent publishers to one channel: the subscriber sees every message once, in
/// strictly increasing cursor order.
pub async fn concurrent_publishers_lose_nothing<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = Arc::new(make(limits(1000, Duration::from_secs(300))).await);
    let c = ch("conc");
    let mut sub = b.subscribe(&c).await.expect("subscribe");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (b, c) = (b.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..50 {
                mine.push(publish(&*b, &c, &format!("[{t},{i}]")).await);
            }
            mine
        }));
    }
    let mut published = Vec::new();
    for t in tasks {
        published.extend(t.await.expect("publisher task"));
    }
    published.sort();
    let mut received = Vec::new();
    while received.len() < published.len() {
        received.push(next_message(&mut sub).await.cursor);
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing"
    );
    assert_eq!(received, published);
}

/// Dropping a subscription ends it cleanly; a new one sees what follows. A message published
/// just before it may still come first (the trait promises only what follows: with one NATS
/// subscription per node its copy can still be on its way inside the node), in order and once.
pub async fn dropped_subscription_ends_interest<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = B>,
{
    let b = make(HistoryLimits::default()).await;
    let c = ch("drop");
    let sub = b.subscribe(&c).await.expect("subscribe");
    drop(sub);
    let first = publish(&b, &c, "1").await;
    let mut sub = b.subscribe(&c).await.expect("subscribe");
    let second = publish(&b, &c, "2").await;
    let got = next_message(&mut sub).await.cursor;
    if got == first {
        assert_eq!(next_message(&mut sub).await.cursor, second);
    } else {
        assert_eq!(got, second);
    }
    expect_silence(&mut sub).await;
}
