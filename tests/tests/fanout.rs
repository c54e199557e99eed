//! A big channel fanned out in parallel shards (`HERALD_FANOUT_SHARD_MIN`), over real sockets:
//! WebSocket and SSE subscribers of one channel get every message once, in publish order,
//! while three publishers publish concurrently and other clients join and leave the channel
//! during the fan-out.

use std::time::Duration;

use herald_e2e::{Msg, Node, Publisher, SseClient, WsClient, channel, query, within};
use serde_json::json;

const WS: usize = 900;
const SSE: usize = 300;
const PER_PUBLISHER: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_channel_split_into_shards_delivers_everything_in_order() {
    // 1,200 subscribers and shards of at least 512 each: 2 shards on a 2-worker node.
    let node = Node::start(&[
        ("HERALD_FANOUT_SHARD_MIN", "600"),
        ("HERALD_HISTORY_SIZE", "1000"),
    ])
    .await;
    let ch = channel("big");
    let mut ws = Vec::with_capacity(WS);
    for _ in 0..WS {
        let mut c = WsClient::connect(&node, "").await;
        c.subscribe(&[&ch], None).await;
        ws.push(c);
    }
    let mut sse = Vec::with_capacity(SSE);
    for _ in 0..SSE {
        let mut c = SseClient::connect(&node, &query(&[&ch], None), &[]).await;
        c.expect_event("subscribed").await;
        sse.push(c);
    }

    // Churn: clients subscribing and leaving while the fan-out runs.
    let churn = {
        let (url, ch) = (node.ws_url(), ch.clone());
        tokio::spawn(async move {
            for _ in 0..60 {
                let mut c = WsClient::connect_url(&url).await;
                c.subscribe(&[&ch], None).await;
                c.close().await;
            }
        })
    };
    let mut publishers = Vec::new();
    for p in 0..3 {
        let mut publisher = Publisher::connect(&node).await;
        let ch = ch.clone();
        publishers.push(tokio::spawn(async move {
            let mut sent = Vec::with_capacity(PER_PUBLISHER);
            for n in 0..PER_PUBLISHER {
                sent.push(publisher.publish_msg(&ch, json!({"p": p, "n": n})).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        }));
    }
    let mut sent: Vec<Msg> = Vec::new();
    for p in publishers {
        sent.extend(p.await.unwrap());
    }
    churn.await.unwrap();
    // One channel's messages arrive in cursor order, whichever publisher sent them.
    sent.sort_by_key(|m| m.id);

    within(
        Duration::from_secs(60),
        "every subscriber's messages",
        async {
            for (i, c) in ws.iter_mut().enumerate() {
                let got = c.next_msgs(sent.len()).await;
                assert_eq!(got, sent, "WebSocket subscriber {i}");
            }
            for (i, c) in sse.iter_mut().enumerate() {
                let got = c.next_msgs(sent.len()).await;
                assert_eq!(got, sent, "SSE subscriber {i}");
            }
        },
    )
    .await;
    // Nothing after the last one (no duplicate delivered late).
    let sentinel = Publisher::connect(&node)
        .await
        .publish_msg(&ch, json!("sentinel"))
        .await;
    assert_eq!(ws[0].next_msg().await, sentinel);
    assert_eq!(sse[SSE - 1].next_msg().await, sentinel);
}
