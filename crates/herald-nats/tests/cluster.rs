//! Smoke test on a 3-node JetStream cluster with replicas 3.

mod common;

use std::time::Duration;

use herald_core::{
    Broker, ChannelName, Cursor, HistoryLimits, HistoryQuery, LiveEvent, Payload, PublishRequest,
};
use herald_nats::{NatsBroker, testing::NatsCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_stream_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    let urls = cluster.urls();
    let mut cfg = common::config(vec![urls[0].clone()], HistoryLimits::default());
    cfg.replicas = 3;
    let a = NatsBroker::connect(cfg.clone()).await.expect("node A");
    cfg.urls = vec![urls[2].clone()];
    let b = NatsBroker::connect(cfg)
        .await
        .expect("node B (stream update is idempotent)");
    let c = ChannelName::new("cluster.room").unwrap();
    let mut sub = b.subscribe(&c).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..5 {
        let data = Payload::from_json(i.to_string(), 100).unwrap();
        let publisher: &NatsBroker = if i % 2 == 0 { &a } else { &b };
        let p = publisher
            .publish(PublishRequest {
                channel: c.clone(),
                data,
                idempotency_key: None,
            })
            .await
            .unwrap();
        sent.push(p.cursor);
    }
    for cursor in &sent {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
        {
            LiveEvent::Message(m) => assert_eq!(m.cursor, *cursor),
            other => panic!("{other:?}"),
        }
    }
    // Direct gets may hit a follower that is a moment behind: allow it to catch up.
    let mut page = Default::default();
    for _ in 0..50 {
        page = a
            .history(
                &c,
                HistoryQuery {
                    after: Cursor::ZERO,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        if page.messages.len() == sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: Vec<_> = page.messages.iter().map(|m| m.cursor).collect();
    assert_eq!(got, sent);
    assert!(!page.gap);
    assert_eq!(a.head().await.unwrap(), sent[4]);

    // A page longer than the direct-get prefix is read through a consumer (R1, in memory) on
    // the replicated stream.
    for i in 5..60 {
        let data = Payload::from_json(i.to_string(), 100).unwrap();
        let p = a
            .publish(PublishRequest {
                channel: c.clone(),
                data,
                idempotency_key: None,
            })
            .await
            .unwrap();
        sent.push(p.cursor);
    }
    let before = a.history_stats();
    let q = HistoryQuery {
        after: Cursor::ZERO,
        limit: 100,
    };
    let mut got = Vec::new();
    for _ in 0..50 {
        let page = a.history(&c, q).await.unwrap();
        assert!(!page.gap);
        got = page.messages.iter().map(|m| m.cursor).collect();
        if got.len() == sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, sent);
    let after = a.history_stats();
    assert!(after.consumers > before.consumers, "{after:?}");
    assert!(
        after.consumer_messages > before.consumer_messages,
        "{after:?}"
    );
}
