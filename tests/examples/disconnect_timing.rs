//! Measures how long `Disconnect(user)` takes to end every connection of a user spread over
//! two nodes on NATS: from the call to the last socket seen closed by its client, for users
//! holding 10, 100 and 1,000 connections (half WebSocket on node A, half SSE on node B). The
//! call is made on node A; node B applies it through the cluster.
//!
//! ```sh
//! cargo build --release -p herald && cargo run --release -p herald-e2e --example disconnect_timing
//! ```
//!
//! Prints one JSON line per round. A measurement, not a test: nothing is asserted on time.

use std::time::{Duration, Instant};

use herald_e2e::{
    SseClient, WsClient,
    cluster::{control, nats_node, start_nats},
};
use herald_proto::v1::DisconnectRequest;

const SECRET: &str = "disconnect-timing-secret-0123456789abcdef";

fn token(user: &str) -> String {
    let now = herald_auth::now_secs();
    herald_auth::mint_hs256(
        SECRET.as_bytes(),
        &herald_auth::MintClaims {
            sub: user.into(),
            channels: vec!["*".into()],
            publish: Vec::new(),
            iat: now,
            exp: now + 3600,
            nbf: None,
            iss: None,
            aud: None,
            jti: None,
            info: None,
        },
    )
    .expect("token")
}

#[tokio::main]
async fn main() {
    let nats = start_nats();
    let env = [("HERALD_AUTH_HMAC_SECRET", SECRET), ("HERALD_LOG", "warn")];
    let a = nats_node(&nats, "node-a", &env).await;
    let b = nats_node(&nats, "node-b", &env).await;
    // Both nodes must know each other before a cluster-wide call.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut api = control(&a, None).await;
    for (round, n) in [10usize, 10, 100, 100, 1000, 1000].into_iter().enumerate() {
        let user = format!("user-{round}");
        let t = token(&user);
        let q = format!("channel=room:{round}&token={t}");
        let mut ends = Vec::new();
        for i in 0..n {
            if i % 2 == 0 {
                let mut c = WsClient::connect(&a, &q).await;
                c.expect_type("subscribed").await;
                ends.push(tokio::spawn(async move {
                    let _ = c.read_to_end(Duration::from_secs(30)).await;
                    Instant::now()
                }));
            } else {
                let mut c = SseClient::connect(&b, &q, &[]).await;
                c.expect_event("subscribed").await;
                ends.push(tokio::spawn(async move {
                    while c.next_event().await.is_some() {}
                    Instant::now()
                }));
            }
        }
        let start = Instant::now();
        let r = api
            .disconnect(DisconnectRequest {
                user: user.clone(),
                reconnect: false,
                reason: "timing".into(),
            })
            .await
            .expect("disconnect")
            .into_inner();
        let answered = start.elapsed();
        let mut closed = Vec::with_capacity(n);
        for e in ends {
            if let Ok(at) = e.await {
                closed.push(at.duration_since(start));
            }
        }
        closed.sort();
        let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        println!(
            "{}",
            serde_json::json!({
                "connections": n, "reached": r.connections, "missing_nodes": r.missing_nodes,
                "rpc_ms": ms(answered),
                "first_closed_ms": closed.first().copied().map(ms),
                "median_closed_ms": closed.get(closed.len() / 2).copied().map(ms),
                "last_closed_ms": closed.last().copied().map(ms),
            })
        );
    }
}
