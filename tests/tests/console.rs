//! The admin console's access rules (docs/console.md), against a real `herald serve`: without
//! a session every `/console/api` route is refused, a wrong key is refused, a cross-site
//! request and a state change without the CSRF header are refused, and a logged-in session
//! reaches the API's own answers and errors.

use herald_e2e::{Node, StatusCode};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{Value, json};

const KEY: &str = "console-test-key-0123456789abcdef";

fn client() -> Client {
    Client::builder().no_proxy().build().unwrap()
}

/// Every console API route, with the method the page uses (and an unknown one).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "session"),
    ("GET", "stats/stream"),
    ("GET", "stats"),
    ("GET", "channels"),
    ("GET", "history?channel=a"),
    ("GET", "presence?channel=a"),
    ("GET", "presence_stats?channel=a"),
    ("POST", "publish"),
    ("POST", "broadcast"),
    ("POST", "disconnect"),
    ("POST", "subscribe"),
    ("POST", "unsubscribe"),
    ("POST", "revoke_token"),
    ("POST", "revoke_user"),
    ("POST", "drain"),
    ("POST", "logout"),
    ("GET", "no-such-route"),
];

fn req(c: &Client, node: &Node, method: &str, route: &str) -> RequestBuilder {
    let url = format!("{}/console/api/{route}", node.admin_url());
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let r = c.request(m.clone(), url);
    if m == Method::POST {
        r.header("x-herald-console", "1")
            .header("content-type", "application/json")
            .body("{}")
    } else {
        r
    }
}

async fn login(c: &Client, node: &Node, key: &str) -> (StatusCode, Option<String>, Value) {
    let r = c
        .post(format!("{}/console/api/login", node.admin_url()))
        .header("x-herald-console", "1")
        .header("content-type", "application/json")
        .body(json!({ "key": key }).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.bytes().await.unwrap();
    (
        status,
        cookie,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_console_api_route_is_refused() {
    let node = Node::start(&[("HERALD_API_KEYS", KEY)]).await;
    let c = client();
    for (method, route) in ROUTES {
        let r = req(&c, &node, method, route).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {route}");
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{method} {route}");
    }
    // A made-up cookie is no session either.
    let r = req(&c, &node, "GET", "session")
        .header("cookie", format!("herald_console={}", "ab".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The page itself is public code without data; it shows the login.
    let r = c
        .get(format!("{}/console/", node.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("login-form"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_the_right_one_opens_a_strict_session() {
    let node = Node::start(&[("HERALD_API_KEYS", KEY)]).await;
    let c = client();
    let (status, cookie, body) = login(&c, &node, "wrong-key-0123456789abcdef").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["message"], "invalid API key");
    assert!(cookie.is_none());

    let (status, cookie, body) = login(&c, &node, KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = cookie.expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let id = session.strip_prefix("herald_console=").unwrap();
    assert_eq!(id.len(), 64, "256 random bits in hex");
    assert!(!body.to_string().contains(KEY), "the key never comes back");

    // The session reaches the API's own answers and errors.
    let r = req(&c, &node, "GET", "session")
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = req(&c, &node, "POST", "publish")
        .header("cookie", &session)
        .body(r#"{"channel":"bad name","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "invalid_argument");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("channel \"bad name\""),
        "{body}"
    );
    let r = req(&c, &node, "POST", "publish")
        .header("cookie", &session)
        .body(r#"{"channel":"ok","data":{"n":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(node.log().contains("console action"), "actions are logged");
    assert!(!node.log().contains(KEY), "never the key itself");

    // Logged out: the same cookie is refused.
    let r = req(&c, &node, "POST", "logout")
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = req(&c, &node, "GET", "session")
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_and_missing_csrf_headers_are_refused() {
    let node = Node::start(&[("HERALD_API_KEYS", KEY)]).await;
    let c = client();
    let (_, cookie, _) = login(&c, &node, KEY).await;
    let session = cookie.unwrap().split(';').next().unwrap().to_owned();
    let publish = || {
        c.post(format!("{}/console/api/publish", node.admin_url()))
            .header("cookie", &session)
            .header("content-type", "application/json")
            .body(r#"{"channel":"x","data":1}"#)
    };
    // No CSRF header.
    let r = publish().send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another site's Origin, with the header (as a CORS-less attacker cannot even send).
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let r = publish()
            .header("x-herald-console", "1")
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
    }
    let r = req(&c, &node, "GET", "stats")
        .header("cookie", &session)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Login itself needs the header (no login CSRF).
    let r = c
        .post(format!("{}/console/api/login", node.admin_url()))
        .header("content-type", "application/json")
        .body(json!({ "key": KEY }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Same origin passes.
    let r = publish()
        .header("x-herald-console", "1")
        .header("origin", node.admin_url())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_console_is_off_unless_insecure() {
    let node = Node::start(&[]).await;
    let c = client();
    let r = c
        .get(format!("{}/console/", node.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(node.log().contains("CONSOLE DISABLED"));
    let open = Node::start(&[("HERALD_CONSOLE", "insecure")]).await;
    assert!(open.log().contains("CONSOLE OPEN WITHOUT LOGIN"));
    let r = req(&c, &open, "GET", "session").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Still CSRF-guarded.
    let r = c
        .post(format!("{}/console/api/publish", open.admin_url()))
        .header("content-type", "application/json")
        .body(r#"{"channel":"x","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
