//! Herald's hook client against a real backend on real sockets: the scripted backend of
//! `herald_hooks::testing` (the application's side, in-process) over HTTP and gRPC, and a
//! fixed-answer HTTP server for malformed answers.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use herald_hooks::{
    ClientContext, ConnectAnswer, ConnectCall, Decision, HookConfig, HookError, HookTarget, Hooks,
    PublishAnswer, PublishCall, Refusal, RpcAnswer, RpcCall, SubscribeCall, testing::Backend,
};
use herald_telemetry::{HookMetrics, Metrics};
use serde_json::{Value, json, value::RawValue};

const TRANSPORTS: [&str; 2] = ["http", "grpc"];

async fn backend() -> Backend {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Backend::start(any, any)
        .await
        .expect("starting the backend")
}

fn target(b: &Backend, transport: &str) -> HookTarget {
    match transport {
        "http" => HookTarget::parse(&format!("http://{}/herald/", b.http_addr())).unwrap(),
        _ => HookTarget::parse(&format!("grpc://{}", b.grpc_addr())).unwrap(),
    }
}

fn hooks_with(target: HookTarget, f: impl FnOnce(&mut HookConfig)) -> Hooks {
    let mut config = HookConfig::new(target);
    f(&mut config);
    Hooks::new(config, None).expect("valid hook config")
}

fn ctx(user: Option<&str>) -> ClientContext {
    ClientContext {
        client: "client-1".into(),
        remote_addr: Some("10.1.2.3".parse().unwrap()),
        protocol: "websocket",
        user: user.map(str::to_owned),
        headers: vec![],
        traceparent: None,
    }
}

fn raw(v: Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).unwrap()
}

fn refused_by_backend() -> Refusal {
    Refusal {
        code: "forbidden_by_app".into(),
        reason: "refused by backend".into(),
    }
}

async fn connect(
    h: &Hooks,
    user: Option<&str>,
    token: Option<&str>,
) -> Result<ConnectAnswer, HookError> {
    h.connect(ConnectCall {
        ctx: ctx(user),
        token: token.map(str::to_owned),
        channels: vec!["news".into()],
    })
    .await
}

async fn subscribe(h: &Hooks, channel: &str) -> Result<Decision, HookError> {
    h.subscribe(SubscribeCall {
        ctx: ctx(Some("alice")),
        channel: channel.into(),
    })
    .await
}

async fn publish(h: &Hooks, channel: &str, data: Value) -> Result<PublishAnswer, HookError> {
    h.publish(PublishCall {
        ctx: ctx(Some("alice")),
        channel: channel.into(),
        data: raw(data),
    })
    .await
}

async fn rpc(h: &Hooks, method: &str, data: Value) -> Result<RpcAnswer, HookError> {
    h.rpc(RpcCall {
        ctx: ctx(Some("alice")),
        method: method.into(),
        data: raw(data),
    })
    .await
}

#[tokio::test]
async fn connect_is_allowed_renamed_or_refused_as_the_backend_says() {
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        assert_eq!(
            connect(&h, None, None).await,
            Ok(ConnectAnswer::Allow {
                user: Some("anon-backend".into()),
                info: None
            }),
            "{t}"
        );
        assert_eq!(
            connect(&h, Some("alice"), Some("tok")).await,
            Ok(ConnectAnswer::Allow {
                user: Some("alice".into()),
                info: None
            }),
            "{t}"
        );
        assert_eq!(
            connect(&h, None, Some("x as:bob")).await,
            Ok(ConnectAnswer::Allow {
                user: Some("bob".into()),
                info: Some(json!({"via": "backend"}))
            }),
            "{t}"
        );
        assert_eq!(
            connect(&h, None, Some("please-refuse")).await,
            Ok(ConnectAnswer::Refuse(refused_by_backend())),
            "{t}"
        );
    }
    let calls = b.calls();
    assert_eq!(calls.len(), 8);
    assert_eq!(calls[0]["transport"], "http");
    assert_eq!(calls[4]["transport"], "grpc");
    for c in &calls {
        assert_eq!(c["hook"], "connect");
        assert_eq!(c["channels"], json!(["news"]));
    }
    assert_eq!(calls[1]["token"], "tok");
    assert_eq!(calls[5]["token"], "tok");
}

#[tokio::test]
async fn subscribe_is_allowed_or_refused() {
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        assert_eq!(subscribe(&h, "news").await, Ok(Decision::Allow), "{t}");
        assert_eq!(
            subscribe(&h, "refuse-me").await,
            Ok(Decision::Refuse(refused_by_backend())),
            "{t}"
        );
    }
    let channels: Vec<Value> = b.calls().iter().map(|c| c["channel"].clone()).collect();
    assert_eq!(
        channels,
        [
            json!("news"),
            json!("refuse-me"),
            json!("news"),
            json!("refuse-me")
        ]
    );
}

#[tokio::test]
async fn publish_is_allowed_modified_published_by_the_app_or_refused() {
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        match publish(&h, "news", json!({"a": 1})).await {
            Ok(PublishAnswer::Allow { data: None }) => {}
            other => panic!("{t}: unchanged publish answered {other:?}"),
        }
        match publish(&h, "news", json!({"a": 1, "modify": true})).await {
            Ok(PublishAnswer::Allow { data: Some(d) }) => {
                let d: Value = serde_json::from_str(d.get()).unwrap();
                assert_eq!(
                    d,
                    json!({"a": 1, "modify": true, "modified_by": "backend"}),
                    "{t}"
                );
            }
            other => panic!("{t}: modify answered {other:?}"),
        }
        match publish(&h, "by-self", json!(1)).await {
            Ok(PublishAnswer::Published) => {}
            other => panic!("{t}: self answered {other:?}"),
        }
        match publish(&h, "refuse", json!(1)).await {
            Ok(PublishAnswer::Refuse(r)) => assert_eq!(r, refused_by_backend(), "{t}"),
            other => panic!("{t}: refuse answered {other:?}"),
        }
    }
    let calls = b.calls();
    assert_eq!(calls[0]["data"], json!({"a": 1}));
    assert_eq!(calls[4]["data"], json!({"a": 1}));
}

#[tokio::test]
async fn rpc_results_and_errors_reach_the_caller() {
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        match rpc(&h, "echo", json!({"x": [1, "two"]})).await {
            Ok(RpcAnswer::Result(r)) => {
                assert_eq!(
                    serde_json::from_str::<Value>(r.get()).unwrap(),
                    json!({"x": [1, "two"]})
                )
            }
            other => panic!("{t}: echo answered {other:?}"),
        }
        match rpc(&h, "refuse", json!(null)).await {
            Ok(RpcAnswer::Error(e)) => assert_eq!(e.code, "rpc_refused", "{t}"),
            other => panic!("{t}: refuse answered {other:?}"),
        }
        match rpc(&h, "nope", json!(null)).await {
            Ok(RpcAnswer::Error(e)) => assert_eq!(e.code, "unknown_method", "{t}"),
            other => panic!("{t}: unknown answered {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_slow_backend_times_out_within_the_timeout_and_a_margin() {
    let b = backend().await;
    for t in TRANSPORTS {
        let timeout = Duration::from_millis(300);
        let h = hooks_with(target(&b, t), |c| c.timeout = timeout);
        let started = Instant::now();
        let r = subscribe(&h, "slow").await;
        let took = started.elapsed();
        assert_eq!(r, Err(HookError::Timeout), "{t}");
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(500),
            "{t}: took {took:?}"
        );
        assert_eq!(h.in_flight(), 0, "{t}");
    }
}

#[tokio::test]
async fn a_backend_that_is_down_is_unavailable_at_once() {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for t in [
        HookTarget::parse(&format!("http://{port}/h")).unwrap(),
        HookTarget::parse(&format!("grpc://{port}")).unwrap(),
    ] {
        let h = hooks_with(t.clone(), |c| c.timeout = Duration::from_secs(5));
        let started = Instant::now();
        let r = subscribe(&h, "news").await;
        assert!(matches!(r, Err(HookError::Unavailable(_))), "{t}: {r:?}");
        assert_eq!(r.unwrap_err().code(), "hook_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{t}: {:?}",
            started.elapsed()
        );
    }
    // And a backend that answers "unavailable" (HTTP 503, gRPC UNAVAILABLE).
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        let r = subscribe(&h, "status503").await;
        assert!(matches!(r, Err(HookError::Unavailable(_))), "{t}: {r:?}");
    }
}

#[tokio::test]
async fn garbage_and_oversized_answers_are_bad_answers() {
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        for channel in ["garbage", "huge"] {
            let r = subscribe(&h, channel).await;
            assert!(
                matches!(r, Err(HookError::BadAnswer(_))),
                "{t} {channel}: {r:?}"
            );
            assert_eq!(r.unwrap_err().code(), "hook_bad_answer");
        }
        let r = rpc(&h, "garbage", json!(1)).await;
        assert!(matches!(r, Err(HookError::BadAnswer(_))), "{t}: {r:?}");
    }
}

#[tokio::test]
async fn a_full_pool_fails_at_once_with_overloaded() {
    let b = backend().await;
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |c| {
            c.max_concurrent = 2;
            c.timeout = Duration::from_secs(2);
        });
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { subscribe(&h, "slow").await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(1);
        while h.in_flight() < 2 {
            assert!(
                Instant::now() < deadline,
                "{t}: the slow calls never got in flight"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        assert_eq!(
            subscribe(&h, "news").await,
            Err(HookError::Overloaded),
            "{t}"
        );
        assert!(started.elapsed() < Duration::from_millis(100), "{t}");
        for s in slow {
            assert_eq!(s.await.unwrap(), Err(HookError::Timeout), "{t}");
        }
        // Freed again.
        assert_eq!(subscribe(&h, "news").await, Ok(Decision::Allow), "{t}");
    }
}

#[tokio::test]
async fn allowed_headers_and_traceparent_are_forwarded_and_no_others() {
    let b = backend().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for t in TRANSPORTS {
        let h = hooks_with(target(&b, t), |_| {});
        let mut ctx = ctx(Some("alice"));
        ctx.headers = vec![
            ("Cookie".into(), "sid=1".into()),
            ("cookie".into(), "theme=dark".into()),
            ("authorization".into(), "Bearer abc".into()),
            ("x-internal-secret".into(), "do-not-send".into()),
            ("host".into(), "herald.example".into()),
        ];
        ctx.traceparent = Some(traceparent.into());
        let r = h
            .subscribe(SubscribeCall {
                ctx,
                channel: "news".into(),
            })
            .await;
        assert_eq!(r, Ok(Decision::Allow), "{t}");
    }
    for c in b.calls() {
        assert_eq!(
            c["headers"],
            json!({"cookie": "sid=1; theme=dark", "authorization": "Bearer abc"}),
            "{}",
            c["transport"]
        );
        assert_eq!(c["traceparent"], traceparent, "{}", c["transport"]);
        assert_eq!(c["client"], "client-1");
        assert_eq!(c["user"], "alice");
        assert_eq!(c["protocol"], "websocket");
        assert_eq!(c["remote_addr"], "10.1.2.3");
    }
}

#[tokio::test]
async fn every_call_is_counted_by_hook_and_outcome() {
    let b = backend().await;
    let metrics = Metrics::new("n1", "test").unwrap();
    let hm: Arc<HookMetrics> = metrics.hooks.clone();
    let value = |hook: &str, outcome: &str| hm.calls.with_label_values(&[hook, outcome]).get();
    for t in TRANSPORTS {
        let mut config = HookConfig::new(target(&b, t));
        config.timeout = Duration::from_millis(200);
        let h = Hooks::new(config, Some(hm.clone())).unwrap();
        subscribe(&h, "news").await.unwrap();
        subscribe(&h, "refuse").await.unwrap();
        subscribe(&h, "slow").await.unwrap_err();
        publish(&h, "news", json!({"modify": true})).await.unwrap();
        publish(&h, "self", json!(1)).await.unwrap();
        connect(&h, None, Some("garbage")).await.unwrap_err();
    }
    assert_eq!(value("subscribe", "allow"), 2);
    assert_eq!(value("subscribe", "refuse"), 2);
    assert_eq!(value("subscribe", "error_timeout"), 2);
    assert_eq!(value("publish", "modify"), 2);
    assert_eq!(value("publish", "published"), 2);
    assert_eq!(value("connect", "error_bad_answer"), 2);
    assert_eq!(value("rpc", "allow"), 0);
    assert_eq!(hm.in_flight.get(), 0);
    let text = metrics.render();
    assert!(text.contains(
        "herald_hook_duration_seconds_count{hook=\"subscribe\",outcome=\"error_timeout\"} 2"
    ));
}

/// An HTTP server answering every request with `status` and `body`.
async fn fixed(status: u16, body: &'static str) -> SocketAddr {
    use axum::{Router, http::StatusCode};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = StatusCode::from_u16(status).unwrap();
    let app = Router::new().fallback(move || async move {
        (
            status,
            [
                ("content-type", "application/json"),
                ("location", "/elsewhere"),
            ],
            body,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    addr
}

async fn fixed_hooks(status: u16, body: &'static str) -> Hooks {
    let addr = fixed(status, body).await;
    hooks_with(
        HookTarget::parse(&format!("http://{addr}")).unwrap(),
        |_| {},
    )
}

#[tokio::test]
async fn contradictory_or_incomplete_http_answers_are_bad_answers() {
    for (status, body) in [
        (200, r#"{"published":true,"allow":true}"#),
        (200, r#"{"published":true,"data":1}"#),
        (200, r#"{}"#),
        (200, r#"[]"#),
        (200, r#"{"allow":"yes"}"#),
        (404, r#"{"allow":true}"#),
        (302, r#"{"allow":true}"#),
    ] {
        let h = fixed_hooks(status, body).await;
        let r = publish(&h, "news", json!(1)).await;
        assert!(
            matches!(r, Err(HookError::BadAnswer(_))),
            "{status} {body}: {r:?}"
        );
    }
    let h = fixed_hooks(200, r#"{"result":1,"error":{"code":"x"}}"#).await;
    assert!(matches!(
        rpc(&h, "m", json!(1)).await,
        Err(HookError::BadAnswer(_))
    ));
    let h = fixed_hooks(200, r#"{"allow":true,"published":true}"#).await;
    assert!(matches!(
        subscribe(&h, "news").await,
        Err(HookError::BadAnswer(_))
    ));
}

#[tokio::test]
async fn answers_are_read_leniently_where_the_contract_says_so() {
    // A null result is a result.
    let h = fixed_hooks(200, r#"{"result":null}"#).await;
    match rpc(&h, "m", json!(1)).await {
        Ok(RpcAnswer::Result(r)) => assert_eq!(r.get(), "null"),
        other => panic!("{other:?}"),
    }
    // `"data": null` means unchanged; unknown fields are ignored.
    let h = fixed_hooks(200, r#"{"allow":true,"data":null,"future":1}"#).await;
    assert!(matches!(
        publish(&h, "news", json!(1)).await,
        Ok(PublishAnswer::Allow { data: None })
    ));
    // An invalid code becomes forbidden_by_app; a long reason is cut.
    let h = fixed_hooks(
        200,
        r#"{"allow":false,"code":"Not-Valid","reason":"because"}"#,
    )
    .await;
    assert_eq!(
        subscribe(&h, "news").await,
        Ok(Decision::Refuse(Refusal {
            code: "forbidden_by_app".into(),
            reason: "because".into()
        }))
    );
    // A 5xx is unavailable, whatever its body.
    let h = fixed_hooks(502, "{}").await;
    assert!(matches!(
        subscribe(&h, "news").await,
        Err(HookError::Unavailable(_))
    ));
}

#[test]
fn https_targets_are_refused_with_the_fix_in_the_message() {
    let err = Hooks::new(
        HookConfig::new(HookTarget::parse("https://app/h").unwrap()),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("sidecar"), "{err}");
}

#[test]
fn grpc_hooks_outside_a_runtime_are_an_error_not_a_panic() {
    let err = Hooks::new(
        HookConfig::new(HookTarget::parse("grpc://app:1").unwrap()),
        None,
    )
    .unwrap_err();
    assert_eq!(err, herald_hooks::HookConfigError::NoRuntime);
}

/// A raw HTTP/1.1 server answering each connection with `head`, then `chunks` of the body
/// (chunked encoding), pausing `pause` between chunks.
async fn raw_chunked(chunks: Vec<String>, pause: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for c in chunks {
                    let frame = format!("{:x}\r\n{c}\r\n", c.len());
                    if s.write_all(frame.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_streamed_answer_is_cut_at_64_kib_and_read_within_the_timeout() {
    // No content-length: the limit is enforced while reading.
    let mut chunks = vec![r#"{"allow":true,"pad":""#.to_owned()];
    chunks.extend(std::iter::repeat_n("x".repeat(16 * 1024), 5));
    chunks.push(r#""}"#.to_owned());
    let addr = raw_chunked(chunks, Duration::ZERO).await;
    let h = hooks_with(
        HookTarget::parse(&format!("http://{addr}")).unwrap(),
        |_| {},
    );
    let r = subscribe(&h, "news").await;
    assert!(matches!(r, Err(HookError::BadAnswer(_))), "{r:?}");

    // Headers at once, body trickling past the timeout: a timeout, not a hang.
    let chunks = vec![r#"{"allow":"#.to_owned(), "true}".to_owned()];
    let addr = raw_chunked(chunks, Duration::from_secs(5)).await;
    let timeout = Duration::from_millis(300);
    let h = hooks_with(HookTarget::parse(&format!("http://{addr}")).unwrap(), |c| {
        c.timeout = timeout
    });
    let started = Instant::now();
    assert_eq!(subscribe(&h, "news").await, Err(HookError::Timeout));
    assert!(started.elapsed() < timeout + Duration::from_millis(500));

    // The same server answering in time is fine (the chunked path parses).
    let chunks = vec![r#"{"allow":"#.to_owned(), "true}".to_owned()];
    let addr = raw_chunked(chunks, Duration::from_millis(10)).await;
    let h = hooks_with(
        HookTarget::parse(&format!("http://{addr}")).unwrap(),
        |_| {},
    );
    assert_eq!(subscribe(&h, "news").await, Ok(Decision::Allow));
}
