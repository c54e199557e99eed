//! Micro-benchmarks of Herald's hot paths, to catch regressions: `cargo bench -p herald-bench`.
//!
//! No benchmark framework (keeps `cargo test` builds lean): each case runs a warm-up, then
//! timed rounds, and prints the median time per operation. Compare runs on the same machine.
//!
//! - encode: building a message's WebSocket, SSE and JSON encodings (once per publish).
//! - validate: publish-time payload validation and compaction.
//! - history: a resume read of 50 messages from a channel among 1,000 in the memory broker.
//! - fanout: one publish delivered to 1,000 live subscriptions of one channel.
//! - token: verifying an HS256 client token (once per connection or refresh).
//! - position: the SSE `id:` of a stream of 1, 16 or 100 channels (once per delivered event
//!   on multi-channel SSE streams), and its size.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use herald_core::{
    Broker, ChannelName, Cursor, HistoryQuery, LiveEvent, MemoryBroker, MemoryBrokerConfig,
    Message, Payload, PublishRequest,
};

/// Median nanoseconds per operation over `rounds` rounds of `per_round` operations.
fn measure(name: &str, rounds: usize, per_round: usize, mut op: impl FnMut()) {
    for _ in 0..per_round {
        op();
    }
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                op();
            }
            t.elapsed().as_nanos() as f64 / per_round as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    println!("{name:<44} {median:>12.1} ns/op");
}

fn payload() -> Payload {
    Payload::from_json(
        &br#"{"user":"u1","text":"hello from the benchmark, about a hundred bytes of JSON","n":42}"#[..],
        1 << 16,
    )
    .expect("valid payload")
}

/// Positions of `k` channels as a busy stream has them: every channel a little ahead of the
/// slowest (the worst case for the token's size).
fn positions(k: usize) -> std::collections::BTreeMap<ChannelName, Cursor> {
    (0..k)
        .map(|i| {
            let name = ChannelName::new(&format!("user:{i}:events")).expect("channel");
            (name, Cursor(1_795_000_000_000_000 + (i as u64) * 7_919))
        })
        .collect()
}

fn main() {
    for k in [1, 16, 100] {
        let p = positions(k);
        let size = herald_core::position::encode(&p).len();
        // An SSE stream hashes its channel set once, then encodes at every event.
        let hash = herald_core::position::set_hash(p.keys());
        measure(
            &format!("position: SSE id of {k} channels ({size} bytes)"),
            20,
            10_000,
            || {
                black_box(herald_core::position::encode_with(
                    black_box(&p),
                    Some(&hash),
                ));
            },
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let channel = ChannelName::new("bench:room").expect("channel");
    let data = payload();

    measure("encode: ws + sse + json of one message", 20, 10_000, || {
        let m = Message::new(
            channel.clone(),
            Cursor(1_795_000_000_000_000),
            1,
            data.clone(),
        );
        black_box((m.ws_frame().len(), m.sse_event().len(), m.json().len()));
    });

    let raw = bytes::Bytes::from_static(
        br#"{ "user": "u1", "text": "hello from the benchmark, about a hundred bytes", "n": 42 }"#,
    );
    measure("validate: 100-byte payload with spaces", 20, 10_000, || {
        black_box(Payload::from_json(raw.clone(), 1 << 16).expect("valid"));
    });

    // The broker starts its sweeper task, so it is created inside the runtime.
    let broker = rt.block_on(async { MemoryBroker::new(MemoryBrokerConfig::default()) });
    let channels: Vec<ChannelName> = (0..1000)
        .map(|i| ChannelName::new(&format!("bench:{i}")).expect("channel"))
        .collect();
    let mut mid = Cursor::ZERO;
    rt.block_on(async {
        for round in 0..100 {
            for c in &channels {
                let p = broker
                    .publish(PublishRequest {
                        channel: c.clone(),
                        data: data.clone(),
                        idempotency_key: None,
                    })
                    .await
                    .expect("publish");
                if round == 49 && c == &channels[0] {
                    mid = p.cursor;
                }
            }
        }
    });
    let query = HistoryQuery {
        after: mid,
        limit: 1000,
    };
    measure(
        "history: 50 of 100 retained, 1,000 channels",
        20,
        2_000,
        || {
            let page = rt
                .block_on(broker.history(&channels[0], query))
                .expect("history");
            black_box(page.messages.len());
        },
    );

    let fan = ChannelName::new("bench:fanout").expect("channel");
    let mut subs = rt.block_on(async {
        let mut subs = Vec::new();
        for _ in 0..1000 {
            subs.push(broker.subscribe(&fan).await.expect("subscribe"));
        }
        subs
    });
    let per_delivery = {
        let rounds = 20;
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            rt.block_on(async {
                broker
                    .publish(PublishRequest {
                        channel: fan.clone(),
                        data: data.clone(),
                        idempotency_key: None,
                    })
                    .await
                    .expect("publish");
                for s in &mut subs {
                    match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
                        Ok(Some(LiveEvent::Message(m))) => {
                            black_box(m.cursor);
                        }
                        other => panic!("subscription did not deliver: {:?}", other.is_ok()),
                    }
                }
            });
            samples.push(t.elapsed().as_nanos() as f64 / subs.len() as f64);
        }
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    println!(
        "{:<44} {per_delivery:>12.1} ns/op",
        "fanout: one publish to 1,000 subscriptions"
    );

    let secret = b"bench-secret-0123456789abcdef-0123";
    let verifier = herald_auth::Verifier::new(&herald_auth::AuthConfig {
        hmac_secrets: vec![secret.to_vec()],
        leeway: herald_auth::DEFAULT_LEEWAY,
        ..Default::default()
    })
    .expect("verifier");
    let token = herald_auth::mint_hs256(
        secret,
        &herald_auth::MintClaims {
            sub: "u1".into(),
            channels: vec!["chat:*".into(), "user:{sub}".into()],
            publish: Vec::new(),
            iat: herald_auth::now_secs(),
            exp: herald_auth::now_secs() + 3600,
            nbf: None,
            iss: None,
            aud: None,
            jti: None,
            info: None,
        },
    )
    .expect("token");
    measure("token: verify HS256, 2 channel patterns", 20, 2_000, || {
        black_box(verifier.verify(&token).expect("valid"));
    });
}
