//! Fork and replay over HTTP, on the embedded store and on Redis: a fork holds
//! the original's transcript up to the chosen message and then goes its own way;
//! a finished turn's recorded steps and answer can be read back.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, config, redis_url};
use serde_json::json;

async fn forks_and_steps(redis: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), redis);
    cfg.agent.max_fork_messages = 4;
    let mut server = Server::start(&cfg).await;
    let c = server.client(&server.token("acme", "ana"));
    let src = c.new_conversation().await;
    for q in [
        "what time is it?",
        "what is 6 times 7?",
        "thanks, and 2 + 2?",
    ] {
        c.ask(&src, q).await;
    }
    let items = c
        .get(&format!("/v1/conversations/{src}/messages"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 6, "{items:?}");

    // Fork after the second answer.
    let r = c
        .post(
            &format!("/v1/conversations/{src}/fork"),
            json!({"message_id": items[3]["id"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["forked_from"]["conversation_id"], src.as_str());
    assert_eq!(r.body["forked_from"]["message_id"], items[3]["id"]);
    assert!(r.body["title"].as_str().unwrap().starts_with("Fork of"));
    let fork = r.body["id"].as_str().unwrap().to_owned();
    assert_ne!(fork, src);
    let copied = c
        .get(&format!("/v1/conversations/{fork}/messages"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .clone();
    let texts = |v: &[serde_json::Value]| -> Vec<(String, String)> {
        v.iter()
            .map(|m| (m["role"].to_string(), m["content"].to_string()))
            .collect()
    };
    assert_eq!(texts(&copied), texts(&items[..4]));

    // The fork goes its own way; the original is untouched.
    let answer = c.ask(&fork, "and 3 + 3?").await;
    assert!(answer["answer"]["content"].is_string(), "{answer}");
    let after = |id: String| {
        let c = &c;
        async move {
            c.get(&format!("/v1/conversations/{id}/messages"))
                .await
                .body["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(after(fork.clone()).await, 6);
    assert_eq!(after(src.clone()).await, 6);

    // Errors: an unknown message, another user's conversation.
    let r = c
        .post(
            &format!("/v1/conversations/{src}/fork"),
            json!({"message_id": "no-such-message"}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "message_not_found");
    // A fork copies at most agent.max_fork_messages (4 here): not at the 5th.
    let r = c
        .post(
            &format!("/v1/conversations/{src}/fork"),
            json!({"message_id": items[4]["id"]}),
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "fork_too_large");
    assert_eq!(r.body["error"]["details"]["max"], 4);
    let other = server.client(&server.token("acme", "bob"));
    let r = other
        .post(
            &format!("/v1/conversations/{src}/fork"),
            json!({"message_id": items[1]["id"]}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "conversation_not_found");

    // A finished turn's steps and answer.
    let turn = items[1]["turn_id"].as_str().unwrap();
    let s = c
        .get(&format!("/v1/conversations/{src}/turns/{turn}/steps"))
        .await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    assert_eq!(s.body["answer"], items[1]["content"]);
    assert_eq!(s.body["message_id"], items[1]["id"]);
    assert!(s.body["steps"].is_array());
    let s = c
        .get(&format!("/v1/conversations/{src}/turns/no-such-turn/steps"))
        .await;
    assert_eq!(s.status, 404, "{:?}", s.body);
    assert_eq!(s.body["error"]["code"], "not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_and_steps_on_the_embedded_store() {
    forks_and_steps(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_and_steps_on_redis() {
    forks_and_steps(Some(redis_url())).await;
}
