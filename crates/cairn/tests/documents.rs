//! The document API end to end on a real server: uploads (JSON and multipart)
//! go through the bus to the ingestion actors, job status is readable, search
//! sees the result, and bad uploads get clear errors or a recorded failure.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Reply, Server, config, finished};
use serde_json::json;

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

async fn search_ids(c: &Client, q: &str) -> Vec<String> {
    let r = c.get(&format!("/v1/search?q={q}&limit=10")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["document_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn upload_file(c: &Client, name: &str, bytes: Vec<u8>, fields: &[(&str, &str)]) -> Reply {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
    );
    for (k, v) in fields {
        form = form.text((*k).to_owned(), (*v).to_owned());
    }
    c.send(
        c.req(reqwest::Method::POST, "/v1/documents")
            .multipart(form),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_uploaded_ingested_versioned_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let c = s.client(&s.token_with_scopes("acme", "ops", &["ingest"]));

    // JSON upload → 202 with ids → done → searchable.
    let r = c
        .post(
            "/v1/documents",
            json!({
                "document_id": "warranty",
                "title": "Warranty terms",
                "text": "# Warranty\n\nEvery blender carries a two year warranty against motor failure.\n",
                "source": "handbook/warranty.md",
                "tags": ["policy"]
            }),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["document_id"], "warranty");
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.headers["location"], "/v1/documents/warranty");
    let job1 = r.body["job_id"].as_str().unwrap().to_owned();
    let d = finished(&c, "warranty").await;
    assert_eq!(d["job"]["status"], "done", "{d:?}");
    assert_eq!(d["job"]["job_id"], job1.as_str());
    assert_eq!(d["job"]["outcome"], "added");
    assert_eq!(d["title"], "Warranty terms");
    assert_eq!(d["format"], "markdown");
    assert!(d["chunks"].as_u64().unwrap() >= 1);
    assert_eq!(
        search_ids(&c, "blender%20motor%20warranty").await,
        ["warranty"]
    );

    // The same content again does no work; changed content replaces the old.
    let again = json!({
        "document_id": "warranty",
        "title": "Warranty terms",
        "text": "# Warranty\n\nEvery blender carries a two year warranty against motor failure.\n",
        "source": "handbook/warranty.md",
        "tags": ["policy"]
    });
    assert_eq!(c.post("/v1/documents", again).await.status, 202);
    let d = finished(&c, "warranty").await;
    assert_eq!(d["job"]["outcome"], "unchanged", "{d:?}");
    let r = c
        .post(
            "/v1/documents",
            json!({"document_id": "warranty", "text": "# Warranty\n\nToasters are covered for five years, parts and labour.\n"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let d = finished(&c, "warranty").await;
    assert_eq!(d["job"]["outcome"], "replaced", "{d:?}");
    assert_eq!(search_ids(&c, "toasters%20labour").await, ["warranty"]);
    assert!(
        search_ids(&c, "blender%20motor").await.is_empty(),
        "old chunks are gone"
    );

    // Multipart: format from the file name; id from the source.
    let html = b"<html><head><title>Gift cards</title></head><body><h1>Gift cards</h1><p>Gift cards never expire and can be combined at checkout.</p></body></html>".to_vec();
    let r = upload_file(&c, "gift-cards.html", html, &[("tags", "billing, cards")]).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["document_id"], "gift-cards.html");
    let d = finished(&c, "gift-cards.html").await;
    assert_eq!(d["job"]["status"], "done", "{d:?}");
    assert_eq!(d["format"], "html");
    assert_eq!(d["title"], "Gift cards");
    assert_eq!(d["tags"], json!(["billing", "cards"]));
    let r = c.get("/v1/search?q=gift%20cards%20expire&tag=cards").await;
    assert_eq!(r.body["items"][0]["document_id"], "gift-cards.html");

    // Listing pages in id order.
    for i in 0..3 {
        let r = c
            .post("/v1/documents", json!({"document_id": format!("note-{i}"), "text": format!("Note number {i} about returns.")}))
            .await;
        assert_eq!(r.status, 202);
    }
    for i in 0..3 {
        finished(&c, &format!("note-{i}")).await;
    }
    let page = c.get("/v1/documents?limit=2").await;
    assert_eq!(page.status, 200);
    let ids: Vec<&str> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gift-cards.html", "note-0"]);
    let next = page.body["next_cursor"].as_str().unwrap().to_owned();
    let page = c.get(&format!("/v1/documents?limit=10&after={next}")).await;
    let ids: Vec<&str> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["document_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["note-1", "note-2", "warranty"]);
    assert!(page.body["next_cursor"].is_null());

    // Another tenant sees none of it and cannot delete it.
    let other = s.client(&s.token_with_scopes("globex", "ops", &["ingest"]));
    assert!(
        other.get("/v1/documents").await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_error(&other.get("/v1/documents/warranty").await, 404, "not_found");
    assert_error(
        &other.delete("/v1/documents/warranty").await,
        404,
        "not_found",
    );
    assert!(search_ids(&other, "toasters").await.is_empty());

    // Delete: the record and the chunks go at once.
    assert_eq!(c.delete("/v1/documents/warranty").await.status, 204);
    assert_error(&c.get("/v1/documents/warranty").await, 404, "not_found");
    assert!(search_ids(&c, "toasters%20labour").await.is_empty());
    assert_error(&c.delete("/v1/documents/warranty").await, 404, "not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_clear_errors_and_bad_files_a_recorded_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.knowledge.max_document_bytes = 64 * 1024;
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token_with_scopes("acme", "ops", &["ingest"]));

    // Without the ingest scope: refused; reading is allowed.
    let reader = s.client(&s.token("acme", "ana"));
    assert_error(
        &reader.post("/v1/documents", json!({"text": "hello"})).await,
        403,
        "forbidden",
    );
    assert_eq!(reader.get("/v1/documents").await.status, 200);

    assert_error(
        &c.post("/v1/documents", json!({"title": "no text"})).await,
        422,
        "missing_field",
    );
    assert_error(
        &c.post("/v1/documents", json!({"text": "   "})).await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.post(
            "/v1/documents",
            json!({"text": "x", "document_id": "bad id/../"}),
        )
        .await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.post(
            "/v1/documents",
            json!({"text": "x", "date": "last tuesday"}),
        )
        .await,
        400,
        "invalid_field",
    );
    assert_error(
        &upload_file(&c, "slides.pptx", b"PK..".to_vec(), &[]).await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &upload_file(&c, "noextension", b"hello".to_vec(), &[]).await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &upload_file(&c, "big.txt", vec![b'a'; 80 * 1024], &[]).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &c.send(c.req(reqwest::Method::POST, "/v1/documents").body("plain"))
            .await,
        415,
        "unsupported_media_type",
    );
    assert!(
        c.get("/v1/documents").await.body["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing half-accepted"
    );

    // A corrupt PDF is accepted, then recorded as failed with the reason; the
    // pipeline goes on with the next document.
    let r = upload_file(
        &c,
        "broken.pdf",
        b"%PDF-1.7 this is not really a pdf".to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let d = finished(&c, "broken.pdf").await;
    assert_eq!(d["job"]["status"], "failed");
    assert!(
        d["job"]["error"].as_str().unwrap().contains("corrupt"),
        "{d:?}"
    );
    let r = upload_file(
        &c,
        "fine.txt",
        b"Loyalty points expire after a year.".to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(finished(&c, "fine.txt").await["job"]["status"], "done");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_on_document_dates() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let c = s.client(&s.token_with_scopes("acme", "ops", &["ingest"]));
    for (id, date) in [
        ("old-notice", "2023-03-01"),
        ("new-notice", "2026-09-15T10:00:00Z"),
    ] {
        let r = c
            .post("/v1/documents", json!({"document_id": id, "date": date, "text": "Maintenance notice: the portal is offline on Sunday."}))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        finished(&c, id).await;
    }
    let mut both = search_ids(&c, "maintenance%20portal").await;
    both.sort();
    assert_eq!(both, ["new-notice", "old-notice"]);
    assert_eq!(
        search_ids(&c, "maintenance%20portal&after=2025-01-01").await,
        ["new-notice"]
    );
    assert_eq!(
        search_ids(&c, "maintenance%20portal&before=2025-01-01").await,
        ["old-notice"]
    );
    assert_error(
        &c.get("/v1/search?q=x&after=yesterday").await,
        400,
        "invalid_field",
    );
    s.stop().await;
}

/// A document accepted (on the bus, record queued) by a process that died before
/// ingesting it is ingested by the next process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_document_is_ingested_after_a_restart() {
    use base64::Engine;
    use cairn_core::ports::{DocumentRecord, DocumentStore, EventBus, JobStatus, Topics};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), None);
    let tenant = cairn_core::TenantId::parse("acme").unwrap();
    {
        // What POST /v1/documents leaves behind when the process stops right after the 202.
        let store = cairn_store::EmbeddedStore::open_and_init(
            &dir.path().join(cairn::app::MEMORY_FILE),
            100,
        )
        .await
        .unwrap();
        let bus = cairn_bus::EmbeddedBus::open(&dir.path().join(cairn::app::BUS_FILE))
            .await
            .unwrap();
        let now = chrono::Utc::now();
        let record = DocumentRecord {
            document_id: "pending".into(),
            title: None,
            source: Some("pending.md".into()),
            tags: vec![],
            date: None,
            format: "markdown".into(),
            bytes: 40,
            job_id: "job-before-crash".into(),
            status: JobStatus::Queued,
            outcome: None,
            error: None,
            chunks: None,
            created_at: now,
            updated_at: now,
        };
        store.put_document(&tenant, &record).await.unwrap();
        let sub = cairn_core::DocumentSubmission {
            document_id: "pending".into(),
            job_id: "job-before-crash".into(),
            format: "markdown".into(),
            title: None,
            source: Some("pending.md".into()),
            tags: vec![],
            date: None,
            content_base64: base64::engine::general_purpose::STANDARD
                .encode("# Pending\n\nSurvived the restart intact.\n"),
        };
        let env = cairn_core::envelope::Envelope::new(
            cairn_core::envelope::DOCUMENT_SUBMITTED,
            tenant.clone(),
            serde_json::to_value(&sub).unwrap(),
        );
        bus.publish(
            &Topics::with_prefix(&cfg.bus.topic_prefix).user_events,
            "pending",
            &env,
        )
        .await
        .unwrap();
    }
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token("acme", "ana"));
    let d = finished(&c, "pending").await;
    assert_eq!(d["job"]["status"], "done", "{d:?}");
    assert_eq!(d["job"]["job_id"], "job-before-crash");
    assert_eq!(d["title"], "Pending");
    assert_eq!(search_ids(&c, "survived%20restart").await, ["pending"]);
    s.stop().await;
}
