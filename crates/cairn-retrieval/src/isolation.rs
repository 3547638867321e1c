//! Parsing untrusted documents where a parser's crash cannot take the service
//! down.
//!
//! [`DocumentParser::Child`] runs each parse in a child process (the `cairn`
//! binary's hidden `parse-document` command, which calls [`child_main`]): the
//! document goes in on stdin, the [`ParsedDocument`] comes back as JSON on
//! stdout. The child starts with a cleared environment, caps its own address
//! space and CPU time with `setrlimit` before reading a byte, and is killed when
//! it outlives `timeout`. A stack overflow, an abort on allocation failure or an
//! endless loop in a third-party parser (pdf-extract recurses into form
//! XObjects with no cycle check) then ends only the child, and the document is
//! refused with [`ParseError::Crashed`] or [`ParseError::TimedOut`] — a final
//! outcome, so the job is recorded as failed and never retried.
//!
//! [`DocumentParser::InProcess`] parses on the blocking pool of this process;
//! it is what library users and tests without the binary get.

use crate::chunk::ParsedDocument;
use crate::formats::{ParseError, ParseLimits, parse_bytes_limited};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How documents are parsed.
#[derive(Debug, Clone)]
pub enum DocumentParser {
    /// On this process's blocking pool.
    InProcess(ParseLimits),
    /// In a child process per document.
    Child(ChildParser),
}

/// A parser run as `program args… --format F --title T …` per document.
#[derive(Debug, Clone)]
pub struct ChildParser {
    /// The executable (the `cairn` binary).
    pub program: PathBuf,
    /// Arguments before the per-document ones (`["parse-document"]`).
    pub args: Vec<OsString>,
    /// Size limits, enforced again inside the child.
    pub limits: ParseLimits,
    /// Wall-clock limit (`knowledge.parse_timeout`).
    pub timeout: Duration,
    /// Address-space limit of the child in bytes (`knowledge.parse_memory_mb`).
    pub memory_bytes: u64,
}

/// What the child writes on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildAnswer {
    Parsed(ParsedDocument),
    Refused(ParseError),
}

impl DocumentParser {
    /// Parses `bytes` of format `kind`; never panics, never blocks the runtime.
    pub async fn parse(
        &self,
        kind: &str,
        bytes: Vec<u8>,
        fallback_title: &str,
    ) -> Result<ParsedDocument, ParseError> {
        match self {
            Self::InProcess(limits) => {
                let (kind, title, limits) = (kind.to_owned(), fallback_title.to_owned(), *limits);
                tokio::task::spawn_blocking(move || {
                    parse_bytes_limited(&kind, &bytes, &title, limits)
                })
                .await
                .unwrap_or_else(|e| Err(ParseError::Crashed(format!("panic: {e}"))))
            }
            Self::Child(child) => child.parse(kind, bytes, fallback_title).await,
        }
    }
}

impl ChildParser {
    async fn parse(
        &self,
        kind: &str,
        bytes: Vec<u8>,
        fallback_title: &str,
    ) -> Result<ParsedDocument, ParseError> {
        if bytes.len() as u64 > self.limits.max_bytes {
            return Err(ParseError::TooLarge(
                self.limits.max_bytes.div_ceil(1 << 20),
            ));
        }
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .arg("--format")
            .arg(kind)
            .arg("--title")
            .arg(fallback_title)
            .arg("--max-bytes")
            .arg(self.limits.max_bytes.to_string())
            .arg("--max-decompressed-bytes")
            .arg(self.limits.max_decompressed_bytes.to_string())
            .arg("--memory-bytes")
            .arg(self.memory_bytes.to_string())
            .arg("--cpu-seconds")
            .arg(self.timeout.as_secs().saturating_add(1).to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut process = command.spawn().map_err(|e| {
            tracing::error!(program = %self.program.display(), error = %e, "cannot start the document parser");
            ParseError::Crashed("the parser could not be started".into())
        })?;
        let mut stdin = process.stdin.take();
        let mut stdout = process.stdout.take();
        let mut stderr = process.stderr.take();
        // Output is bounded: the text of a document is at most its inflated size,
        // and JSON escaping at most sextuples it.
        let out_cap = self
            .limits
            .max_decompressed_bytes
            .max(self.limits.max_bytes)
            .saturating_mul(8)
            .saturating_add(1 << 20);
        let work = async {
            let feed = async {
                if let Some(mut stdin) = stdin.take() {
                    // A child that dies early closes the pipe; its exit status says why.
                    let _ = stdin.write_all(&bytes).await;
                    let _ = stdin.shutdown().await;
                }
            };
            let read = async {
                let mut out = Vec::new();
                if let Some(stdout) = stdout.take() {
                    let _ = stdout.take(out_cap).read_to_end(&mut out).await;
                }
                out
            };
            // Drained to the end (a child blocked on a full pipe would look like
            // a stalled parser), of which the first 4 KiB are kept for the log.
            let read_err = async {
                let mut err = Vec::new();
                if let Some(mut stderr) = stderr.take() {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stderr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let room = 4096usize.saturating_sub(err.len());
                        err.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
                err
            };
            let ((), out, err) = tokio::join!(feed, read, read_err);
            let status = process.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                // Dropping `work` drops the child handle, which kills it.
                tracing::warn!(format = kind, "document parser timed out; killed");
                return Err(ParseError::TimedOut(self.timeout.as_secs()));
            }
        };
        let status = status.map_err(|e| ParseError::Crashed(format!("wait failed: {e}")))?;
        if status.success() {
            match serde_json::from_slice::<ChildAnswer>(&out) {
                Ok(ChildAnswer::Parsed(doc)) => return Ok(doc),
                Ok(ChildAnswer::Refused(e)) => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "document parser wrote an unreadable answer");
                    return Err(ParseError::Crashed("unreadable answer".into()));
                }
            }
        }
        let why = describe_exit(status);
        tracing::warn!(
            format = kind,
            exit = %why,
            stderr = %String::from_utf8_lossy(&err).trim(),
            "document parser crashed"
        );
        Err(ParseError::Crashed(why))
    }
}

/// "killed by signal 11 (SIGSEGV)" and the like, without paths or contents.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(signal)) => {
            let name = match signal {
                6 => " (SIGABRT: stack overflow or out of memory)",
                9 => " (SIGKILL: CPU time limit)",
                11 => " (SIGSEGV)",
                24 => " (SIGXCPU: CPU time limit)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        (Some(code), None) => format!("exit status {code}"),
        (None, None) => "unknown exit".into(),
    }
}

/// Arguments of the child command.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    /// Document format.
    pub format: String,
    /// Title when the document has none.
    pub title: String,
    /// Limits.
    pub limits: ParseLimits,
    /// Address-space limit in bytes.
    pub memory_bytes: u64,
    /// CPU-time limit in seconds.
    pub cpu_seconds: u64,
}

/// The child's whole life: limit itself, read the document from stdin, parse
/// it, write the answer to stdout. Returns the process exit code.
pub fn child_main(args: ChildArgs) -> i32 {
    use rlimit::Resource;
    // Limits first, before any input is read.
    if let Err(e) = Resource::AS.set(args.memory_bytes, args.memory_bytes) {
        eprintln!("cannot limit memory: {e}");
        return 3;
    }
    if let Err(e) = Resource::CPU.set(args.cpu_seconds, args.cpu_seconds.saturating_add(1)) {
        eprintln!("cannot limit CPU time: {e}");
        return 3;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(args.limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
    {
        eprintln!("cannot read the document: {e}");
        return 2;
    }
    let answer = match parse_bytes_limited(&args.format, &bytes, &args.title, args.limits) {
        Ok(doc) => ChildAnswer::Parsed(doc),
        Err(e) => ChildAnswer::Refused(e),
    };
    let mut stdout = std::io::stdout().lock();
    match serde_json::to_writer(&mut stdout, &answer).map(|_| stdout.flush()) {
        Ok(Ok(())) => 0,
        _ => 2,
    }
}
