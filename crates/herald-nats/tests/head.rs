//! `head()` calls made at the same moment share stream-info requests, and none of them reads a
//! head from before it was called: each publisher's own message is at or below the head it
//! reads right after.

mod common;

use herald_core::{Broker, ChannelName, HistoryLimits, Payload, PublishRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_head_reads_never_see_a_head_older_than_the_call() {
    let sb = common::ServerBroker::start(HistoryLimits::default()).await;
    let broker = sb.broker.clone();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            let channel = ChannelName::new(&format!("head-{}", t % 8)).unwrap();
            for n in 0..20 {
                let data = Payload::from_json(format!("{n}"), 100).unwrap();
                let published = broker
                    .publish(PublishRequest {
                        channel: channel.clone(),
                        data,
                        idempotency_key: None,
                    })
                    .await
                    .unwrap();
                let head = broker.head().await.unwrap();
                assert!(
                    head >= published.cursor,
                    "head {head:?} read after publishing {:?}",
                    published.cursor
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // A lone call still works once the burst is over (the reader task ended and restarts).
    let last = broker.head().await.unwrap();
    assert!(last.0 >= 64 * 20);
}
