//! The batched history read against a real nats-server: paging through a channel whose messages
//! are interleaved with other channels' returns exactly its messages, and every way of reading
//! (direct gets only, batched, batched through the unfiltered consumer) reports holes and
//! evictions exactly as a model of the chain says; consumers do not pile up.

mod common;

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream;
use herald_core::{
    Broker, ChannelName, Cursor, HistoryLimits, HistoryQuery, Payload, PublishRequest,
};
use herald_nats::{HistoryWay, NatsBroker};

const WAYS: [HistoryWay; 3] = [
    HistoryWay::DirectGet,
    HistoryWay::Batched,
    HistoryWay::Unfiltered,
];

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

async fn publish(b: &NatsBroker, c: &ChannelName, i: usize) -> u64 {
    b.publish(PublishRequest {
        channel: c.clone(),
        data: Payload::from_json(format!(r#"{{"i":{i},"c":"{c}"}}"#), 1 << 20).unwrap(),
        idempotency_key: None,
    })
    .await
    .unwrap()
    .cursor
    .0
}

/// One page as seen by a test: its cursors, its gap flag, and every message's client encoding.
#[derive(Debug, PartialEq)]
struct Seen {
    cursors: Vec<u64>,
    gap: bool,
    json: Vec<bytes::Bytes>,
}

/// Pages through `c` from `after` until an empty page (included).
async fn page_through(
    b: &NatsBroker,
    c: &ChannelName,
    after: u64,
    limit: usize,
    way: HistoryWay,
) -> Vec<Seen> {
    let mut pages = Vec::new();
    let mut after = after;
    loop {
        let q = HistoryQuery {
            after: Cursor(after),
            limit,
        };
        let page = b.history_by(c, q, way).await.unwrap();
        let seen = Seen {
            cursors: page.messages.iter().map(|m| m.cursor.0).collect(),
            gap: page.gap,
            json: page.messages.iter().map(|m| m.json().clone()).collect(),
        };
        for m in &page.messages {
            assert_eq!(&m.channel, c);
        }
        let last = seen.cursors.last().copied();
        pages.push(seen);
        match last {
            Some(last) => after = last,
            None => return pages,
        }
        assert!(pages.len() < 10_000, "paging does not end");
    }
}

/// What paging must return, from the chain's point of view: `all` is every cursor ever
/// published to the channel (in order), `gone` those no longer retained. A page starts at the
/// first retained message after the cursor (a gap iff its predecessor is after the cursor) and
/// runs while the next message of the chain is retained, up to `limit`.
fn model(all: &[u64], gone: &HashSet<u64>, after: u64, limit: usize) -> Vec<(Vec<u64>, bool)> {
    let mut pages = Vec::new();
    let mut after = after;
    loop {
        let Some(start) = all.iter().position(|&s| s > after && !gone.contains(&s)) else {
            pages.push((Vec::new(), false));
            return pages;
        };
        let gap = start > 0 && all[start - 1] > after;
        let cursors: Vec<u64> = all[start..]
            .iter()
            .copied()
            .take_while(|s| !gone.contains(s))
            .take(limit)
            .collect();
        after = *cursors.last().unwrap();
        pages.push((cursors, gap));
    }
}

fn shape(pages: &[Seen]) -> Vec<(Vec<u64>, bool)> {
    pages.iter().map(|p| (p.cursors.clone(), p.gap)).collect()
}

/// Panics with a short description of the first difference between two lists of pages.
fn same_pages(got: &[(Vec<u64>, bool)], want: &[(Vec<u64>, bool)], what: &str) {
    let brief = |p: &(Vec<u64>, bool)| {
        format!(
            "{} messages {:?}..{:?}, gap {}",
            p.0.len(),
            p.0.first(),
            p.0.last(),
            p.1
        )
    };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let at = g.0.iter().zip(&w.0).position(|(a, b)| a != b);
            panic!(
                "{what}: page {i} differs (first different message at {at:?}):\n got  {}\n want {}",
                brief(g),
                brief(w)
            );
        }
    }
    assert_eq!(got.len(), want.len(), "{what}: number of pages");
}

/// Every way of reading gives the model's pages, and the same messages as direct gets.
async fn check_all_ways(
    b: &NatsBroker,
    c: &ChannelName,
    all: &[u64],
    gone: &HashSet<u64>,
    starts: &[u64],
    limit: usize,
) {
    for &after in starts {
        let want = model(all, gone, after, limit);
        let direct = page_through(b, c, after, limit, HistoryWay::DirectGet).await;
        same_pages(
            &shape(&direct),
            &want,
            &format!("{c} direct gets after {after}"),
        );
        for way in WAYS {
            if way == HistoryWay::DirectGet {
                continue;
            }
            let got = page_through(b, c, after, limit, way).await;
            let what = format!("{c} {way:?} after {after}, limit {limit}");
            same_pages(&shape(&got), &shape(&direct), &what);
            assert!(got == direct, "{what}: same cursors, different messages");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_interleaved_channels_and_holes_match_direct_gets() {
    let limits = HistoryLimits {
        max_messages: 10_000,
        max_age: Duration::from_secs(3600),
    };
    let sb = common::ServerBroker::start(limits).await;
    let b = &sb.broker;
    let (a, other, sparse) = (ch("batch.a"), ch("batch.b"), ch("batch.sparse"));
    let mut all_a = Vec::new();
    let mut all_sparse = Vec::new();
    for i in 0..5000 {
        // Different channels publish concurrently, so the stream interleaves them.
        let (sa, _) = tokio::join!(publish(b, &a, i), publish(b, &other, i));
        all_a.push(sa);
        if i % 5 == 0 {
            all_sparse.push(publish(b, &sparse, i).await);
        }
    }
    let stats = b.history_stats();

    // Nothing missing: exactly the channel's messages, in order, without a gap.
    let none = HashSet::new();
    let starts = [
        0,
        all_a[0],
        all_a[7],
        all_a[999],
        all_a[2500],
        all_a[4990],
        all_a[4999],
    ];
    check_all_ways(b, &a, &all_a, &none, &starts, 1000).await;
    for after in starts {
        let pages = page_through(b, &a, after, 1000, HistoryWay::Batched).await;
        let cursors: Vec<u64> = pages.iter().flat_map(|p| p.cursors.clone()).collect();
        let want: Vec<u64> = all_a.iter().copied().filter(|&s| s > after).collect();
        assert_eq!(cursors, want, "after {after}");
        assert!(pages.iter().all(|p| !p.gap), "after {after}");
    }
    let starts = [0, all_sparse[10], all_sparse[600]];
    check_all_ways(b, &sparse, &all_sparse, &none, &starts, 100).await;
    let read = b.history_stats();
    assert!(
        read.consumers > stats.consumers && read.consumer_messages > stats.consumer_messages,
        "the batched reads used consumers: {read:?}"
    );

    // Holes: messages deleted from the stream in the middle of the channel (as if evicted
    // while a page was read), in the direct-get prefix of a page, in its batched part, and two
    // in a row.
    let stream = jetstream::new(b.client().unwrap())
        .get_stream("HERALD")
        .await
        .unwrap();
    let mut gone = HashSet::new();
    for i in [3, 600, 601, 1500, 2003, 4000, 4997] {
        stream.delete_message(all_a[i]).await.unwrap();
        gone.insert(all_a[i]);
    }
    let starts = [
        0,
        all_a[2],
        all_a[590],
        all_a[1000],
        all_a[3990],
        all_a[4996],
    ];
    check_all_ways(b, &a, &all_a, &gone, &starts, 1000).await;
    check_all_ways(b, &a, &all_a, &gone, &[0, all_a[1400]], 300).await;
    let mut gone_sparse = HashSet::new();
    for i in [5, 150, 151] {
        stream.delete_message(all_sparse[i]).await.unwrap();
        gone_sparse.insert(all_sparse[i]);
    }
    let starts = [0, all_sparse[100]];
    check_all_ways(b, &sparse, &all_sparse, &gone_sparse, &starts, 100).await;
    // Spelled out once: the page from the start ends before the first hole, and the read from
    // its last cursor reports the gap in its place.
    let pages = page_through(b, &a, 0, 1000, HistoryWay::Batched).await;
    assert_eq!(pages[0].cursors, all_a[..3].to_vec());
    assert!(!pages[0].gap);
    assert!(pages[1].gap);
    assert_eq!(pages[1].cursors[0], all_a[4]);
    println!("{:?}", b.history_stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_by_count_is_reported_the_same_way() {
    let limits = HistoryLimits {
        max_messages: 300,
        max_age: Duration::from_secs(3600),
    };
    let sb = common::ServerBroker::start(limits).await;
    let b = &sb.broker;
    let (a, other) = (ch("evict.a"), ch("evict.b"));
    let mut all = Vec::new();
    for i in 0..1000 {
        let (s, _) = tokio::join!(publish(b, &a, i), publish(b, &other, i));
        all.push(s);
    }
    let gone: HashSet<u64> = all[..700].iter().copied().collect();
    let starts = [0, all[100], all[698], all[699], all[700], all[950]];
    check_all_ways(b, &a, &all, &gone, &starts, 1000).await;
    check_all_ways(b, &a, &all, &gone, &[0, all[699]], 50).await;
    let page = b
        .history(
            &a,
            HistoryQuery {
                after: Cursor::ZERO,
                limit: 1000,
            },
        )
        .await
        .unwrap();
    assert!(page.gap);
    assert_eq!(page.messages.len(), 300);
    assert_eq!(page.messages[0].cursor.0, all[700]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_consumers_do_not_pile_up() {
    let limits = HistoryLimits {
        max_messages: 10_000,
        max_age: Duration::from_secs(3600),
    };
    let sb = common::ServerBroker::start(limits).await;
    let b = &sb.broker;
    let (a, other) = (ch("leak.a"), ch("leak.b"));
    let mut all = Vec::new();
    for i in 0..1500 {
        let (s, _) = tokio::join!(publish(b, &a, i), publish(b, &other, i));
        all.push(s);
    }
    let before = b.history_stats();
    for i in 0..200 {
        let after = all[(i * 7) % 1400];
        let limit = [50, 200, 500, 1000][i % 4];
        let q = HistoryQuery {
            after: Cursor(after),
            limit,
        };
        let page = b.history(&a, q).await.unwrap();
        assert!(!page.messages.is_empty());
    }
    // Cancelled reads, some of them while their consumer is open.
    for i in 0..50u64 {
        let q = HistoryQuery {
            after: Cursor::ZERO,
            limit: 1000,
        };
        let wait = Duration::from_micros(500 + i * 100);
        let _ = tokio::time::timeout(wait, b.history(&a, q)).await;
    }
    let used = b.history_stats();
    assert!(
        used.consumers >= before.consumers + 200,
        "every read of more than a few messages uses a consumer: {used:?}"
    );
    // Deletes are not waited for by the reads, but they are quick: well within a second (the
    // inactivity threshold, which would remove a leaked consumer, is several seconds).
    let stream = jetstream::new(b.client().unwrap())
        .get_stream("HERALD")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut count;
    loop {
        count = stream.get_info().await.unwrap().state.consumer_count;
        if count <= 5 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(count <= 5, "{count} consumers left on the stream");
}
