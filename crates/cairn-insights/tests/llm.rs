//! The LLM analyser against an OpenAI-wire test server, through Cairn's real
//! OpenAI client: the conformance suite with a model that agrees with the
//! offline analysis, a model that corrects it, and every way the model can fail
//! (invalid JSON, JSON outside the schema, a timeout, an HTTP error) falling
//! back to the offline analysis.

#![allow(clippy::unwrap_used, missing_docs)]

use axum::extract::State;
use axum::routing::post;
use cairn_core::TenantId;
use cairn_core::insights::PiiPolicy;
use cairn_core::insights_config::{InsightsConfig, PartMode};
use cairn_core::ports::{AnalysisInput, Analyzer};
use cairn_insights::OfflineAnalyzer;
use cairn_insights::llm::LlmAnalyzer;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Model {
    mode: Arc<Mutex<&'static str>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn chat(State(m): State<Model>, body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let req: Value = serde_json::from_str(&body).unwrap();
    m.bodies.lock().unwrap().push(req.clone());
    let user: Value =
        serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
    let off = &user["offline"];
    let mut answer = json!({
        "sentiment": off["sentiment"],
        "intent": off["intent"],
        "urgency": off["urgency"],
        "escalation_conditions": off["escalation_conditions"],
        "suggested_actions": off["suggested_actions"],
        "pii_rejected": [],
        "pii_added": [],
    });
    let mode = *m.mode.lock().unwrap();
    let content = match mode {
        "agree" => answer.to_string(),
        "correct" => {
            answer["sentiment"]["emotion"] = json!("confused");
            answer["sentiment"]["reasoning"] = json!("asks how something works");
            answer["intent"] = json!("billing");
            answer["urgency"] = json!("high");
            answer["escalation_conditions"] = json!(["human_requested"]);
            answer["pii_rejected"] = json!([0]);
            answer["pii_added"] = json!([{"type": "person", "start": 11, "end": 16}]);
            answer.to_string()
        }
        "invalid" => "{\"sentiment\": ".to_owned(),
        "schema" => {
            answer["intent"] = json!("weather");
            answer.to_string()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            answer.to_string()
        }
        _ => {
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "upstream exploded",
            )
                .into_response();
        }
    };
    axum::Json(json!({"id": "x", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10}}))
    .into_response()
}

async fn setup(config: InsightsConfig) -> (Model, LlmAnalyzer, Arc<OfflineAnalyzer>) {
    let model = Model::default();
    *model.mode.lock().unwrap() = "agree";
    let app = axum::Router::new()
        .route("/chat/completions", post(chat))
        .with_state(model.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    cairn_llm::http::install_crypto_provider();
    let llm_config = cairn_core::config::LlmConfig {
        base_url: Some(base),
        max_retries: 0,
        stream: false,
        ..Default::default()
    };
    let chat = cairn_llm::openai::OpenAiModel::new(&llm_config, "test-model".into(), None).unwrap();
    let offline = Arc::new(OfflineAnalyzer::new(&config, None).unwrap());
    let llm = LlmAnalyzer::new(offline.clone(), Arc::new(chat), config);
    (model, llm, offline)
}

fn all_llm() -> InsightsConfig {
    let mut c = InsightsConfig::default();
    c.parts.sentiment = PartMode::Llm;
    c.parts.intent = PartMode::LlmWithOfflineFallback;
    c.parts.urgency = PartMode::Llm;
    c.parts.pii = PartMode::Llm;
    c.llm_timeout = Duration::from_millis(500);
    c
}

fn input(text: &str) -> AnalysisInput {
    AnalysisInput::customer(TenantId::parse("acme").unwrap(), text)
}

#[tokio::test]
async fn the_llm_analyser_passes_the_conformance_suite_and_asks_for_strict_json() {
    let (model, llm, _) = setup(all_llm()).await;
    cairn_insights::conformance::run(&llm).await;
    let bodies = model.bodies.lock().unwrap();
    assert!(!bodies.is_empty());
    let f = &bodies[0]["response_format"];
    assert_eq!(f["type"], "json_schema");
    assert_eq!(f["json_schema"]["strict"], true);
    assert_eq!(f["json_schema"]["schema"]["additionalProperties"], false);
    let intents = f["json_schema"]["schema"]["properties"]["intent"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(intents.len(), 9);
    // The model gets the offline PII to refine.
    let user: Value =
        serde_json::from_str(bodies[0]["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert!(
        user["offline"]["pii"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "credit_card")
    );
}

#[tokio::test]
async fn the_models_corrections_are_used_for_the_parts_that_ask_for_it() {
    let (model, llm, _) = setup(all_llm()).await;
    *model.mode.lock().unwrap() = "correct";
    let a = llm
        .analyze(&input(
            "Reach me at x@y.io, Marta here. How does this work?",
        ))
        .await
        .unwrap();
    assert_eq!(a.sentiment.emotion, "confused");
    assert_eq!(a.intent, "billing");
    assert_eq!(a.urgency.as_str(), "high");
    assert_eq!(a.escalation_conditions, ["human_requested"]);
    // The email (offline entity 0) was rejected by the model, "Marta" added.
    let kinds: Vec<&str> = a.pii.entities.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["person"]);
    assert_eq!((a.pii.entities[0].start, a.pii.entities[0].end), (11, 16));
    assert_eq!(a.pii.entities[0].detector, "llm");
    for part in ["sentiment", "intent", "urgency", "pii"] {
        assert_eq!(a.analyzer[part].name, "llm", "{part}");
    }
    assert_eq!(a.analyzer["language"].name, "offline");

    // Parts left offline keep the offline answer.
    let mut c = all_llm();
    c.parts.intent = PartMode::Offline;
    c.parts.pii = PartMode::Offline;
    let (model, llm, _) = setup(c).await;
    *model.mode.lock().unwrap() = "correct";
    let a = llm
        .analyze(&input("Reach me at x@y.io, how do I invite a teammate?"))
        .await
        .unwrap();
    assert_eq!(a.sentiment.emotion, "confused");
    assert_eq!(a.intent, "general_question");
    assert_eq!(a.pii.entities[0].kind, "email");
    assert_eq!(a.analyzer["intent"].name, "offline");
}

#[tokio::test]
async fn every_model_failure_falls_back_to_the_offline_analysis() {
    let (model, llm, offline) = setup(all_llm()).await;
    let text = "Great, another outage. My card 4111 1111 1111 1111 got charged twice!";
    let expected = offline.analyze(&input(text)).await.unwrap();
    for (mode, code) in [
        ("invalid", "invalid_json"),
        ("schema", "invalid_json"),
        ("slow", "timeout"),
        ("error", "model_error"),
    ] {
        *model.mode.lock().unwrap() = mode;
        let started = std::time::Instant::now();
        let a = llm.analyze(&input(text)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode}: the timeout holds"
        );
        assert_eq!(a.sentiment, expected.sentiment, "{mode}");
        assert_eq!(a.intent, expected.intent, "{mode}");
        assert_eq!(a.pii, expected.pii, "{mode}");
        assert_eq!(a.urgency, expected.urgency, "{mode}");
        assert_eq!(a.analyzer["sentiment"].name, "offline", "{mode}");
        assert!(
            a.analyzer["sentiment"].version.contains(code),
            "{mode}: {:?}",
            a.analyzer
        );
    }
}

#[tokio::test]
async fn under_redact_model_the_analysis_model_sees_placeholders() {
    let mut c = all_llm();
    c.pii = PiiPolicy::RedactModel;
    let (model, llm, _) = setup(c).await;
    let a = llm
        .analyze(&input(
            "Card 4111 1111 1111 1111, mail ana@example.com, refund please",
        ))
        .await
        .unwrap();
    // The model's (empty) PII corrections are ignored when it saw placeholders.
    assert_eq!(a.pii.entities.len(), 2);
    let sent = model.bodies.lock().unwrap()[0].to_string();
    assert!(
        !sent.contains("ana@example.com") && !sent.contains("4111 1111"),
        "{sent}"
    );
    assert!(
        sent.contains("<EMAIL_1>") && sent.contains("<CREDIT_CARD_1>"),
        "{sent}"
    );
}
