//! A WebSocket client that stops reading is disconnected as a slow consumer, the node's memory
//! stays bounded, and a well-behaved subscriber connected meanwhile receives every message.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_e2e::{
    Msg, Node, Publisher, WsClient, WsEnd, channel, eventually, metric_value, within,
};
use serde_json::json;

const MESSAGES: usize = 3000;
const RSS_LIMIT: u64 = 200 << 20;
const SLOW: &str = "herald_slow_consumer_disconnects_total{protocol=\"websocket\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_is_disconnected_with_bounded_memory() {
    let node = Node::start(&[
        ("HERALD_OUTBOX_BYTES", "65536"),
        ("HERALD_MAX_MESSAGE_BYTES", "16384"),
        // Enough history that the good subscriber can always resume, should it ever be
        // disconnected itself on a loaded machine.
        ("HERALD_HISTORY_SIZE", "5000"),
    ])
    .await;
    let ch = channel("flood");
    let mut p = Publisher::connect(&node).await;
    assert_eq!(metric_value(&node, SLOW).await, 0.0);

    // The slow client: a tiny receive buffer, subscribes, then never reads again.
    let mut slow = WsClient::connect_small_buffer(&node, 4096).await;
    slow.subscribe(&[&ch], None).await;

    // The well-behaved client reads everything; if it is ever cut off it resumes from its
    // last cursor, as the protocol tells clients to.
    let mut good = WsClient::connect(&node, "").await;
    good.subscribe(&[&ch], None).await;
    let good_reconnects = Arc::new(AtomicU64::new(0));
    let reader = {
        let url = node.ws_url();
        let ch = ch.clone();
        let reconnects = good_reconnects.clone();
        tokio::spawn(async move {
            let mut got: Vec<Msg> = Vec::with_capacity(MESSAGES);
            while got.len() < MESSAGES {
                let v = good.next_json_or_end().await;
                match v {
                    Some(v) if v["type"] == "message" => got.push(Msg::from_json(&v)),
                    Some(v) if v["type"] == "error" && v["code"] == "slow_consumer" => {}
                    Some(v) => panic!("unexpected frame on the good client: {v}"),
                    None => {
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        let since = got.last().map(|m| m.id.to_string());
                        good = WsClient::connect_url(&url).await;
                        good.subscribe(&[&ch], since.as_deref()).await;
                    }
                }
            }
            got
        })
    };

    // The flood: ~8 KB messages, as fast as the node takes them, watching memory meanwhile.
    let filler = "x".repeat(8000);
    let mut published = Vec::with_capacity(MESSAGES);
    let mut max_rss = node.rss_bytes();
    for i in 0..MESSAGES {
        published.push(p.publish_msg(&ch, json!({"i": i, "pad": filler})).await);
        if i % 100 == 0 {
            max_rss = max_rss.max(node.rss_bytes());
        }
    }
    max_rss = max_rss.max(node.rss_bytes());

    // The good client got every message, in order, exactly once.
    let got = within(Duration::from_secs(60), "the good subscriber", reader)
        .await
        .expect("good reader task");
    assert_eq!(got.len(), published.len());
    assert!(
        got == published,
        "the good subscriber missed or repeated messages"
    );
    let reconnects = good_reconnects.load(Ordering::Relaxed);

    // The slow client is cut off: one disconnect more than the good client ever had.
    let want = (reconnects + 1) as f64;
    eventually(
        Duration::from_secs(30),
        "the slow client's slow-consumer disconnect",
        || {
            let node = &node;
            async move { (metric_value(node, SLOW).await >= want).then_some(()) }
        },
    )
    .await;
    max_rss = max_rss.max(node.rss_bytes());
    assert!(
        max_rss < RSS_LIMIT,
        "node RSS reached {} MiB (limit {} MiB)",
        max_rss >> 20,
        RSS_LIMIT >> 20
    );

    // What the slow client finally sees: whatever was buffered, then the end (ideally an
    // error frame and close 1013; a reset if the node had to give up on a blocked socket).
    let (texts, end) = slow.read_to_end(Duration::from_secs(20)).await;
    eprintln!(
        "slow client: {} frames buffered before {end:?}; last frame: {:?}; max node RSS {} MiB; good client reconnects: {reconnects}",
        texts.len(),
        texts.last().map(|v| v["type"].clone()),
        max_rss >> 20
    );
    assert!(
        !matches!(end, WsEnd::Close(1000, _)),
        "slow client closed normally? {end:?}"
    );
}
