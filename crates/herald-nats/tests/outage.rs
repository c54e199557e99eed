//! Outages against a real nats-server: fast failure while it is down, automatic recovery when
//! it is back, no ghost delivery of failed publishes, and hostile channel names.

mod common;

use std::time::{Duration, Instant};

use herald_core::{
    Broker, BrokerError, BrokerState, ChannelName, Cursor, HistoryLimits, HistoryQuery, LiveEvent,
    Payload, PublishRequest, Subscription,
};

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn req(c: &ChannelName, json: &str) -> PublishRequest {
    PublishRequest {
        channel: c.clone(),
        data: Payload::from_json(json.to_owned(), 1 << 20).unwrap(),
        idempotency_key: None,
    }
}

async fn next_event(sub: &mut Subscription) -> LiveEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("subscription still open")
}

async fn wait_state(b: &impl Broker, want: BrokerState, within: Duration) {
    let mut rx = b.state();
    tokio::time::timeout(within, rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("state never became {want:?} within {within:?}"))
        .expect("state sender alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_recovers_without_ghosts() {
    let mut sb = common::ServerBroker::start(HistoryLimits::default()).await;
    let c = ch("outage.room");
    let mut sub = sb.broker.subscribe(&c).await.unwrap();
    let first = sb.broker.publish(req(&c, "1")).await.unwrap().cursor;
    match next_event(&mut sub).await {
        LiveEvent::Message(m) => assert_eq!(m.cursor, first),
        other => panic!("{other:?}"),
    }

    sb.server.kill();
    let t0 = Instant::now();
    wait_state(
        &sb.broker,
        BrokerState::Disconnected,
        Duration::from_secs(3),
    )
    .await;
    // While down: every call fails fast with Unavailable, nothing hangs.
    for _ in 0..3 {
        let t = Instant::now();
        let err = sb.broker.publish(req(&c, "\"ghost\"")).await.unwrap_err();
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "publish took {:?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    let q = HistoryQuery {
        after: Cursor::ZERO,
        limit: 10,
    };
    assert!(matches!(
        sb.broker.history(&c, q).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(matches!(
        sb.broker.head().await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(matches!(
        sb.broker.subscribe(&c).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(t0.elapsed() < Duration::from_secs(6));

    let server = &mut sb.server;
    tokio::task::block_in_place(|| server.restart());
    wait_state(&sb.broker, BrokerState::Connected, Duration::from_secs(15)).await;
    assert!(sb.broker.reconnects() >= 1);

    let second = sb.broker.publish(req(&c, "2")).await.unwrap().cursor;
    assert!(second > first);
    // The existing subscription moved to the new connection: a Lagged (repair point), then the
    // new message; never the failed ones.
    let mut saw_lagged = false;
    loop {
        match next_event(&mut sub).await {
            LiveEvent::Lagged => saw_lagged = true,
            LiveEvent::Message(m) => {
                assert_eq!(m.cursor, second);
                assert_eq!(m.data.as_bytes(), b"2");
                break;
            }
        }
    }
    assert!(saw_lagged, "a reconnect must be signalled");

    // The history holds exactly what was acknowledged: no ghost from the failed publishes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = sb.broker.history(&c, q).await.unwrap();
    let got: Vec<_> = page.messages.iter().map(|m| m.cursor).collect();
    assert_eq!(got, [first, second]);
    assert!(!page.gap);
    assert_eq!(sb.broker.head().await.unwrap(), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_starts_failing_when_server_is_absent() {
    let cfg = common::config(
        vec![format!(
            "nats://127.0.0.1:{}",
            herald_nats::testing::free_port()
        )],
        HistoryLimits::default(),
    );
    let t = Instant::now();
    let err = herald_nats::NatsBroker::connect(cfg).await.unwrap_err();
    assert!(matches!(err, herald_nats::NatsError::Connect(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_stay_isolated() {
    let sb = common::ServerBroker::start(HistoryLimits::default()).await;
    let names = [
        ".", "..", ".a", "a.", "a", "a.b", "a..b", "a.b.", ".a.b", "a:b", "a=b", "a@b",
    ];
    let mut subs = Vec::new();
    for n in names {
        subs.push(sb.broker.subscribe(&ch(n)).await.unwrap());
    }
    for n in names {
        sb.broker
            .publish(req(&ch(n), &format!("\"{n}\"")))
            .await
            .unwrap();
    }
    for (n, sub) in names.iter().zip(subs.iter_mut()) {
        match next_event(sub).await {
            LiveEvent::Message(m) => {
                assert_eq!(m.channel.as_str(), *n);
                assert_eq!(m.data.as_bytes(), format!("\"{n}\"").as_bytes());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .is_err()
        );
        let page = sb
            .broker
            .history(
                &ch(n),
                HistoryQuery {
                    after: Cursor::ZERO,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1, "{n}");
        assert!(!page.gap);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_chain() {
    // Two brokers (two "edge nodes") on one stream publish to the same channel in turn: the
    // expected-sequence check keeps the chain exact, so there is no false gap.
    let sb = common::ServerBroker::start(HistoryLimits {
        max_messages: 3,
        ..Default::default()
    })
    .await;
    let other = herald_nats::NatsBroker::connect(common::config(
        vec![sb.server.url()],
        HistoryLimits {
            max_messages: 3,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let c = ch("shared");
    let mut cursors = Vec::new();
    for i in 0..6 {
        let b: &dyn Broker = if i % 2 == 0 { &sb.broker } else { &other };
        cursors.push(b.publish(req(&c, &i.to_string())).await.unwrap().cursor);
    }
    let q = |after| HistoryQuery { after, limit: 10 };
    let page = other.history(&c, q(cursors[2])).await.unwrap();
    assert!(!page.gap);
    assert_eq!(
        page.messages.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        cursors[3..]
    );
    let page = sb.broker.history(&c, q(cursors[1])).await.unwrap();
    assert!(page.gap, "message 3 was evicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fully_expired_channel_remembers_its_tip() {
    // A channel whose whole history expired: a resume from before its last message is a gap,
    // from its last message is not, and a channel never published is not either, even with an
    // old cursor.
    let limits = HistoryLimits {
        max_messages: 10,
        max_age: Duration::from_millis(500),
    };
    let sb = common::ServerBroker::start(limits).await;
    let (c, other, never) = (ch("exp"), ch("exp.other"), ch("exp.never"));
    let a = sb.broker.publish(req(&c, "1")).await.unwrap().cursor;
    let b = sb.broker.publish(req(&c, "2")).await.unwrap().cursor;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let keep = sb.broker.publish(req(&other, "0")).await.unwrap().cursor;
    let q = |after| HistoryQuery { after, limit: 10 };
    assert!(sb.broker.history(&c, q(a)).await.unwrap().gap);
    assert!(!sb.broker.history(&c, q(b)).await.unwrap().gap);
    assert!(
        !sb.broker
            .history(&never, q(Cursor::ZERO))
            .await
            .unwrap()
            .gap
    );
    // The next message links to the expired one, so a reader at `b` sees no gap.
    let d = sb.broker.publish(req(&c, "3")).await.unwrap().cursor;
    let page = sb.broker.history(&c, q(b)).await.unwrap();
    assert!(!page.gap);
    assert_eq!(
        page.messages.iter().map(|m| m.cursor).collect::<Vec<_>>(),
        [d]
    );
    assert!(sb.broker.history(&c, q(a)).await.unwrap().gap);
    assert!(keep < d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_fails_fast_and_recovers() {
    // SIGSTOP keeps the TCP connection open but silent (a half-open connection): publishes must
    // still fail within the timeout, the broker must notice by missed PONGs, and recover.
    let sb = common::ServerBroker::start(HistoryLimits::default()).await;
    let c = ch("frozen");
    let mut sub = sb.broker.subscribe(&c).await.unwrap();
    sb.broker.publish(req(&c, "1")).await.unwrap();
    assert!(matches!(next_event(&mut sub).await, LiveEvent::Message(_)));

    sb.server.pause();
    // Signal delivery is asynchronous: let the process actually stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let err = sb.broker.publish(req(&c, "2")).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "publish took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert!(matches!(
        sb.broker.head().await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(3));
    // ping_interval is 1 s in tests: two missed PONGs.
    wait_state(
        &sb.broker,
        BrokerState::Disconnected,
        Duration::from_secs(6),
    )
    .await;

    sb.server.resume();
    wait_state(&sb.broker, BrokerState::Connected, Duration::from_secs(15)).await;
    let third = sb.broker.publish(req(&c, "3")).await.unwrap().cursor;
    loop {
        match next_event(&mut sub).await {
            LiveEvent::Lagged => {}
            LiveEvent::Message(m) if m.cursor == third => break,
            // "2" may have been stored: it reached the server's socket before the freeze (the
            // one ambiguity no client can remove; see the crate docs).
            LiveEvent::Message(m) => {
                assert_eq!(m.data.as_bytes(), b"2");
                eprintln!("the publish answered Unavailable was stored (reached the socket)");
            }
        }
    }
}
