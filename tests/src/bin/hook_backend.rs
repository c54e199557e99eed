//! `hook_backend`: a scripted application backend for Herald's backend hooks, serving the
//! HTTP/JSON and the gRPC (`herald.proxy.v1.HeraldProxy`) contracts at once, for end-to-end
//! tests. Its script (what a token, channel or method containing `refuse`, `slow`, `garbage`,
//! `huge`, `status503`, `as:NAME`, `self` makes it answer) is documented in
//! `herald_hooks::testing`; every call it gets is served back at `GET /calls` on the HTTP port.
//!
//! ```text
//! hook_backend --http 127.0.0.1:0 --grpc 127.0.0.1:0 [--ignore-stdin]
//! ```
//!
//! Prints one line `{"http":"127.0.0.1:P1","grpc":"127.0.0.1:P2"}` on stdout once both
//! listen, then serves until killed or until its stdin closes (so a test that spawns it with
//! a piped stdin never leaks it). `--ignore-stdin` serves until killed (for a shell with a
//! closed stdin).

use std::{io::Write, net::SocketAddr, process::ExitCode};

use herald_hooks::testing::Backend;
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: hook_backend --http ADDR --grpc ADDR [--ignore-stdin]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut http: Option<SocketAddr> = None;
    let mut grpc: Option<SocketAddr> = None;
    let mut ignore_stdin = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--http" => &mut http,
            "--grpc" => &mut grpc,
            "--ignore-stdin" => {
                ignore_stdin = true;
                continue;
            }
            _ => {
                eprintln!("unknown argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        match args.next().map(|v| v.parse()) {
            Some(Ok(addr)) => *slot = Some(addr),
            _ => {
                eprintln!("{arg} needs an address like 127.0.0.1:0\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(http), Some(grpc)) = (http, grpc) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let backend = match Backend::start(http, grpc).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hook_backend: binding failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Written by hand to keep the documented key order (a JSON map would sort them).
    let line = format!(
        r#"{{"http":"{}","grpc":"{}"}}"#,
        backend.http_addr(),
        backend.grpc_addr()
    );
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    drop(out);
    if ignore_stdin {
        std::future::pending::<()>().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    drop(backend);
    ExitCode::SUCCESS
}
