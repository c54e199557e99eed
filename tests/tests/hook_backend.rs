//! Smoke test of the `hook_backend` process (the scripted application backend the edge's
//! end-to-end tests use): Herald's hook client (`herald_hooks::Hooks`) calls it over HTTP and
//! gRPC, and `GET /calls` tells what it received. The process exits when its stdin closes.

use std::time::{Duration, Instant};

use herald_e2e::HookBackend;

use herald_hooks::{
    ClientContext, ConnectAnswer, ConnectCall, Decision, HookConfig, HookError, HookTarget, Hooks,
    PublishAnswer, PublishCall, RpcAnswer, RpcCall, SubscribeCall,
};
use serde_json::{Value, json, value::RawValue};

fn start() -> HookBackend {
    HookBackend::start(env!("CARGO_BIN_EXE_hook_backend"))
}

fn ctx(traceparent: &str) -> ClientContext {
    ClientContext {
        client: "e2e-client".into(),
        remote_addr: Some("192.0.2.7".parse().unwrap()),
        protocol: "sse",
        user: None,
        headers: vec![
            ("cookie".into(), "sid=42".into()),
            ("x-not-allowed".into(), "secret".into()),
        ],
        traceparent: Some(traceparent.into()),
    }
}

#[tokio::test]
async fn hook_backend_answers_both_transports_and_records_every_call() {
    let b = start();
    let targets = [
        HookTarget::parse(&format!("http://{}/herald", b.http)).unwrap(),
        HookTarget::parse(&format!("grpc://{}", b.grpc)).unwrap(),
    ];
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for target in targets {
        let mut config = HookConfig::new(target.clone());
        config.timeout = Duration::from_millis(500);
        let hooks = Hooks::new(config, None).unwrap();
        let answer = hooks
            .connect(ConnectCall {
                ctx: ctx(tp),
                token: Some("as:carol".into()),
                channels: vec![],
            })
            .await;
        assert_eq!(
            answer,
            Ok(ConnectAnswer::Allow {
                user: Some("carol".into()),
                info: Some(json!({"via": "backend"}))
            }),
            "{target}"
        );
        let refused = hooks
            .subscribe(SubscribeCall {
                ctx: ctx(tp),
                channel: "refuse-this".into(),
            })
            .await;
        assert!(
            matches!(refused, Ok(Decision::Refuse(ref r)) if r.code == "forbidden_by_app"),
            "{target}: {refused:?}"
        );
        let published = hooks
            .publish(PublishCall {
                ctx: ctx(tp),
                channel: "news".into(),
                data: RawValue::from_string(r#"{"modify":true}"#.into()).unwrap(),
            })
            .await;
        match published {
            Ok(PublishAnswer::Allow { data: Some(d) }) => assert_eq!(
                serde_json::from_str::<Value>(d.get()).unwrap(),
                json!({"modify": true, "modified_by": "backend"})
            ),
            other => panic!("{target}: {other:?}"),
        }
        match hooks
            .rpc(RpcCall {
                ctx: ctx(tp),
                method: "echo".into(),
                data: RawValue::from_string("[1,2]".into()).unwrap(),
            })
            .await
        {
            Ok(RpcAnswer::Result(r)) => assert_eq!(r.get(), "[1,2]", "{target}"),
            other => panic!("{target}: {other:?}"),
        }
        let slow = hooks
            .subscribe(SubscribeCall {
                ctx: ctx(tp),
                channel: "slow".into(),
            })
            .await;
        assert_eq!(slow, Err(HookError::Timeout), "{target}");
    }

    let body = reqwest::get(format!("http://{}/calls", b.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let calls: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(calls.len(), 10, "{calls:#?}");
    let hooks: Vec<&str> = calls.iter().map(|c| c["hook"].as_str().unwrap()).collect();
    assert_eq!(
        hooks,
        ["connect", "subscribe", "publish", "rpc", "subscribe"].repeat(2)
    );
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(c["transport"], if i < 5 { "http" } else { "grpc" });
        assert_eq!(c["traceparent"], tp);
        assert_eq!(
            c["headers"],
            json!({"cookie": "sid=42"}),
            "x-not-allowed must not be sent"
        );
        assert_eq!(c["client"], "e2e-client");
        assert_eq!(c["protocol"], "sse");
        assert_eq!(c["remote_addr"], "192.0.2.7");
    }
    assert_eq!(calls[0]["token"], "as:carol");
    assert_eq!(calls[1]["channel"], "refuse-this");
    assert_eq!(calls[3]["method"], "echo");
}

#[test]
fn hook_backend_exits_when_its_stdin_closes() {
    let mut b = start();
    drop(b.child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hook_backend still running after stdin closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
