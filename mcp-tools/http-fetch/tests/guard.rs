//! The fetch tool against a local web server: readable text, the size cap and the
//! timeout (with 127.0.0.1 explicitly allowed), and the SSRF guard: loopback,
//! private, link-local and metadata addresses refused by default, also when a
//! name resolves to them, and also after a redirect from an allowed host.

#![allow(clippy::unwrap_used)]

use axum::response::{Html, Redirect};
use axum::routing::get;
use mcp_http_fetch::{Settings, fetch, is_internal};
use std::net::IpAddr;
use std::time::Duration;

async fn site() -> u16 {
    let app = axum::Router::new()
        .route("/page", get(|| async { Html("<html><head><title>Returns</title><style>p{}</style></head><body><h1>Returns</h1><p>Send it back   within 30 days.</p><script>evil()</script></body></html>") }))
        .route("/big", get(|| async { "y".repeat(100_000) }))
        .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(10)).await; "late" }))
        .route("/to-metadata", get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/") }))
        .route("/to-page", get(|| async { Redirect::temporary("/page") }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

fn allowing_loopback() -> Settings {
    Settings {
        allow_ips: vec!["127.0.0.1".parse().unwrap()],
        max_bytes: 1000,
        timeout: Duration::from_millis(800),
        ..Settings::default()
    }
}

#[tokio::test]
async fn pages_come_back_as_readable_text_within_the_caps() {
    let port = site().await;
    let s = allowing_loopback();
    let text = fetch(&s, &format!("http://127.0.0.1:{port}/page"))
        .await
        .unwrap();
    assert_eq!(text, "Returns\n\nReturns Send it back within 30 days.");
    let text = fetch(&s, &format!("http://127.0.0.1:{port}/to-page"))
        .await
        .unwrap();
    assert!(
        text.ends_with("within 30 days."),
        "a same-host redirect is followed"
    );
    let big = fetch(&s, &format!("http://127.0.0.1:{port}/big"))
        .await
        .unwrap();
    assert!(
        big.starts_with(&"y".repeat(1000)) && big.ends_with("[truncated at 1000 bytes]"),
        "{}",
        big.len()
    );
    let e = fetch(&s, &format!("http://127.0.0.1:{port}/slow"))
        .await
        .unwrap_err();
    assert!(e.contains("longer than 800 ms"), "{e}");
    let e = fetch(&s, &format!("http://127.0.0.1:{port}/loop"))
        .await
        .unwrap_err();
    assert!(e.contains("redirects"), "{e}");
}

#[tokio::test]
async fn internal_addresses_are_refused_even_behind_names_and_redirects() {
    let port = site().await;
    let default = Settings {
        timeout: Duration::from_secs(2),
        ..Settings::default()
    };
    for url in [
        format!("http://127.0.0.1:{port}/page"),
        format!("http://localhost:{port}/page"),
        "http://10.0.0.5/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://0.0.0.0/".to_owned(),
    ] {
        let e = fetch(&default, &url).await.unwrap_err();
        assert!(e.starts_with("refused"), "{url}: {e}");
    }
    // Allowed to reach the local site, but its redirect to the metadata address is refused.
    let e = fetch(
        &allowing_loopback(),
        &format!("http://127.0.0.1:{port}/to-metadata"),
    )
    .await
    .unwrap_err();
    assert!(
        e.starts_with("refused") && e.contains("169.254.169.254"),
        "{e}"
    );
    assert!(
        fetch(&default, "file:///etc/passwd")
            .await
            .unwrap_err()
            .contains("only http and https")
    );
    assert!(
        fetch(&default, "gopher://x/")
            .await
            .unwrap_err()
            .contains("only http and https")
    );
    let only_example = Settings {
        allow_hosts: vec!["example.com".into()],
        ..Settings::default()
    };
    assert!(
        fetch(&only_example, "http://example.org/")
            .await
            .unwrap_err()
            .contains("allow-list")
    );
}

#[test]
fn address_classes() {
    let internal = [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        // Forms of IPv6 that carry an internal IPv4 address to a gateway.
        "64:ff9b::10.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b:1::a9fe:a9fe",
        "2002:a00:1::1",
        "2002:7f00:1::",
        "::10.0.0.1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "fec0::1",
        // IPv4 special-purpose ranges.
        "192.0.0.8",
        "198.18.0.1",
        "198.19.255.254",
        "240.0.0.1",
        "255.255.255.255",
    ];
    for a in internal {
        assert!(is_internal(a.parse::<IpAddr>().unwrap()), "{a}");
    }
    for a in [
        "93.184.216.34",
        "1.1.1.1",
        "2606:4700:4700::1111",
        // The same gateways in front of public addresses stay usable.
        "64:ff9b::5db8:d822",
        "2002:5db8:d822::1",
        "198.20.0.1",
    ] {
        assert!(!is_internal(a.parse::<IpAddr>().unwrap()), "{a}");
    }
}

#[test]
fn readable_text_is_linear_in_the_nesting() {
    // Every text node used to look up all its ancestors: quadratic in depth.
    let depth = 20_000;
    let html = format!(
        "<html><body>{}word{}<script>hidden()</script></body></html>",
        "<div>x ".repeat(depth),
        "</div>".repeat(depth)
    );
    let started = std::time::Instant::now();
    let text = mcp_http_fetch::readable_text(&html);
    assert!(text.starts_with("x x"), "{}", &text[..20]);
    assert!(text.contains("word") && !text.contains("hidden"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_proxy_in_the_environment_is_not_used() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    let port = site().await;
    // A "proxy" that answers everything itself: if it were used, the page
    // would come from it.
    let proxy_app = axum::Router::new().fallback(|| async { "FROM THE PROXY" });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, proxy_app).await.unwrap() });
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-http-fetch"));
    cmd.args(["--allow-ip", "127.0.0.1"])
        .env("HTTP_PROXY", format!("http://127.0.0.1:{proxy}"))
        .env("http_proxy", format!("http://127.0.0.1:{proxy}"))
        .env("ALL_PROXY", format!("http://127.0.0.1:{proxy}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let client = ().serve(rmcp::transport::TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let r = client
        .peer()
        .call_tool(
            CallToolRequestParams::new("fetch").with_arguments(
                serde_json::json!({"url": format!("http://127.0.0.1:{port}/page")})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    let text = r.content[0].as_text().unwrap().text.clone();
    assert!(text.contains("Send it back within 30 days."), "{text}");
    assert!(!text.contains("FROM THE PROXY"), "{text}");
    client.cancel().await.unwrap();
}
