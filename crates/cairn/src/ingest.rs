//! `cairn ingest` and `cairn search` against the embedded knowledge base.
//!
//! Files are found recursively; Markdown, plain text, HTML, PDF and DOCX are
//! parsed (10 MB limit; a bad file is reported, the others go on). A document's id is its path relative to the folder
//! given (or its file name), so re-ingesting the same tree replaces or skips each
//! document instead of duplicating it.

use cairn_core::TenantId;
use cairn_core::ports::{SearchFilter, SearchMode};
use cairn_retrieval::chunk::ParsedDocument;
use cairn_retrieval::formats::parse_bytes;
use cairn_retrieval::knowledge::{DocumentMeta, IngestOutcome, KnowledgeBase, document_id_from};
use std::path::{Path, PathBuf};

/// Largest file ingested.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// What an ingestion run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestSummary {
    /// New documents.
    pub added: usize,
    /// Identical content, skipped.
    pub unchanged: usize,
    /// Changed content, replaced.
    pub replaced: usize,
    /// Files that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Chunks written.
    pub chunks: usize,
}

/// Every file under `paths` (files as given, folders recursively), sorted, each
/// with the root it was found under.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                out.push((root.to_owned(), p));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, p, &mut out)?;
        } else {
            out.push((
                p.parent().map(Path::to_owned).unwrap_or_default(),
                p.clone(),
            ));
        }
    }
    Ok(out)
}

/// A document id from a path relative to its root: letters, digits and `-_.`.
pub fn document_id(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    document_id_from(&rel.to_string_lossy())
}

/// A file's source: its path below the folder given (so it does not depend on
/// where the command runs).
pub fn source_of(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .to_string_lossy()
        .into_owned()
}

/// Parses a file by its extension (Markdown, text, HTML, PDF, DOCX).
pub fn parse_file(path: &Path) -> Result<ParsedDocument, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "larger than the {} MB limit",
            MAX_FILE_BYTES / 1024 / 1024
        ));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().replace(['-', '_'], " "))
        .unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse_bytes(&ext, &bytes, &stem).map_err(|e| e.to_string())
}

/// A progress bar on stderr over `len` files.
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Ingests files into `kb` for `tenant`, with a progress bar on stderr.
pub async fn ingest_paths(
    kb: &KnowledgeBase,
    tenant: &TenantId,
    paths: &[PathBuf],
) -> std::io::Result<IngestSummary> {
    let in_flight = cairn_core::config::KnowledgeConfig::default().ingest_concurrency;
    ingest_paths_with(kb, tenant, paths, in_flight).await
}

/// [`ingest_paths`] with `in_flight` documents parsed, embedded and stored at
/// once (`knowledge.ingest_concurrency` for `cairn ingest`): while one waits
/// for the store, another's chunks are embedded; one at a time left a core
/// idle (see BENCHMARKS.md, issue 18).
pub async fn ingest_paths_with(
    kb: &KnowledgeBase,
    tenant: &TenantId,
    paths: &[PathBuf],
    in_flight: usize,
) -> std::io::Result<IngestSummary> {
    use futures::StreamExt;
    let files = collect_files(paths)?;
    // Two files with one document id (the same folder given twice) must not be
    // written at once: each would find no stored version and both would add it.
    let mut ids = std::collections::HashSet::new();
    let in_flight = if files
        .iter()
        .all(|(root, file)| ids.insert(document_id(root, file)))
    {
        in_flight
    } else {
        1
    };
    let bar = progress_bar(files.len());
    let mut summary = IngestSummary::default();
    let mut outcomes = futures::stream::iter(files)
        .map(|(root, file)| async move {
            let outcome = match parse_file(&file) {
                Ok(doc) => {
                    let meta = DocumentMeta {
                        document_id: document_id(&root, &file),
                        source: Some(source_of(&root, &file)),
                        ..Default::default()
                    };
                    kb.ingest(tenant, &meta, &doc)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            (file, outcome)
        })
        .buffered(in_flight.max(1));
    while let Some((file, outcome)) = outcomes.next().await {
        bar.set_message(file.display().to_string());
        match outcome {
            Ok(IngestOutcome::Added { chunks }) => {
                summary.added += 1;
                summary.chunks += chunks;
            }
            Ok(IngestOutcome::Replaced { chunks }) => {
                summary.replaced += 1;
                summary.chunks += chunks;
            }
            Ok(IngestOutcome::Unchanged) => summary.unchanged += 1,
            Err(e) => summary.failed.push((file, e)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Err(e) = kb.maintain().await {
        tracing::warn!(error = %e, "knowledge store housekeeping failed");
    }
    Ok(summary)
}

/// Ingests files through a running server (`POST /v1/documents`), then waits
/// for every accepted document's job to finish. `token` needs the ingest scope.
/// Uploads run 4 at a time; a file the server refuses counts as failed with the
/// server's message.
pub async fn ingest_via_server(
    base: &str,
    token: &str,
    paths: &[PathBuf],
    timeout: std::time::Duration,
) -> anyhow::Result<IngestSummary> {
    use futures::StreamExt;
    use serde_json::Value;
    let base = base.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?;
    let files = collect_files(paths)?;
    let bar = progress_bar(files.len());
    let error_of = |body: &Value, status: reqwest::StatusCode| {
        format!(
            "HTTP {status} {}: {}",
            body["error"]["code"].as_str().unwrap_or("?"),
            body["error"]["message"].as_str().unwrap_or("?")
        )
    };
    // Upload.
    let uploads = futures::stream::iter(files)
        .map(|(root, file)| {
            let (http, base, token) = (http.clone(), base.clone(), token.to_owned());
            async move {
                let result = async {
                    let bytes = tokio::fs::read(&file).await.map_err(|e| e.to_string())?;
                    let name = file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let form = reqwest::multipart::Form::new()
                        .part(
                            "file",
                            reqwest::multipart::Part::bytes(bytes).file_name(name),
                        )
                        .text("document_id", document_id(&root, &file))
                        .text("source", source_of(&root, &file));
                    let r = http
                        .post(format!("{base}/v1/documents"))
                        .bearer_auth(&token)
                        .multipart(form)
                        .send()
                        .await
                        .map_err(|e| format!("cannot reach {base}: {e}"))?;
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if status != reqwest::StatusCode::ACCEPTED {
                        return Err(error_of(&body, status));
                    }
                    Ok((
                        body["document_id"].as_str().unwrap_or_default().to_owned(),
                        body["job_id"].as_str().unwrap_or_default().to_owned(),
                    ))
                }
                .await;
                (file, result)
            }
        })
        .buffered(4);
    let mut accepted = Vec::new();
    let mut summary = IngestSummary::default();
    let mut uploads = std::pin::pin!(uploads);
    while let Some((file, result)) = uploads.next().await {
        bar.set_message(format!("uploaded {}", file.display()));
        match result {
            Ok(ids) => accepted.push((file, ids)),
            Err(e) => {
                summary.failed.push((file, e));
                bar.inc(1);
            }
        }
    }
    // Wait for the jobs.
    let deadline = tokio::time::Instant::now() + timeout;
    for (file, (id, job)) in accepted {
        bar.set_message(format!("ingesting {}", file.display()));
        loop {
            let r = http
                .get(format!("{base}/v1/documents/{id}"))
                .bearer_auth(token)
                .send()
                .await;
            let (status, body) = match r {
                Ok(r) => {
                    let s = r.status();
                    (s, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) => {
                    summary
                        .failed
                        .push((file.clone(), format!("cannot reach {base}: {e}")));
                    break;
                }
            };
            if !status.is_success() {
                summary.failed.push((file.clone(), error_of(&body, status)));
                break;
            }
            let j = &body["job"];
            if j["job_id"].as_str() != Some(job.as_str()) {
                summary.failed.push((
                    file.clone(),
                    "uploaded again by someone else meanwhile".into(),
                ));
                break;
            }
            match j["status"].as_str() {
                Some("done") => {
                    match j["outcome"].as_str() {
                        Some("unchanged") => summary.unchanged += 1,
                        Some("replaced") => summary.replaced += 1,
                        _ => summary.added += 1,
                    }
                    if j["outcome"].as_str() != Some("unchanged") {
                        summary.chunks += body["chunks"].as_u64().unwrap_or(0) as usize;
                    }
                    break;
                }
                Some("failed") => {
                    let reason = j["error"].as_str().unwrap_or("failed").to_owned();
                    summary.failed.push((file.clone(), reason));
                    break;
                }
                _ if tokio::time::Instant::now() > deadline => {
                    summary.failed.push((
                        file.clone(),
                        format!("still {} after {timeout:?}", j["status"]),
                    ));
                    break;
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Runs a search and renders the hits as text.
pub async fn search_text(
    kb: &KnowledgeBase,
    tenant: &TenantId,
    query: &str,
    mode: SearchMode,
    limit: usize,
) -> Result<String, String> {
    let hits = kb
        .search(tenant, query, mode, SearchFilter::default(), limit)
        .await
        .map_err(|e| e.to_string())?;
    if hits.is_empty() {
        return Ok("no results".into());
    }
    let mut out = String::new();
    for (i, h) in hits.iter().enumerate() {
        let section = h.chunk.section_path.join(" > ");
        let snippet: String = h.chunk.text.chars().take(160).collect();
        out.push_str(&format!(
            "{}. [{:.3}] {} — {} ({})\n   {}\n",
            i + 1,
            h.score,
            h.chunk.title,
            section,
            h.chunk.document_id,
            snippet.replace('\n', " ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_safe() {
        let root = Path::new("/kb");
        assert_eq!(
            document_id(root, Path::new("/kb/billing/refund policy.md")),
            "billing.refund-policy.md"
        );
        let id = document_id(root, Path::new("/kb/ä.md"));
        assert!(cairn_core::ConversationId::parse(id).is_ok());
    }
}
