//! A mutation fuzzer for the document parsers, on stable Rust (cargo-fuzz needs
//! nightly here; see `fuzz/README.md`). Seeds come from `fuzz/corpus/<format>/`;
//! each input is a seed changed by a few random edits (bit flips, random bytes,
//! inserted format tokens, deleted, duplicated and spliced ranges; for DOCX,
//! edits of the XML inside the zip too), parsed with `parse_bytes`. A panic or
//! an input that takes longer than `SLOW` is a finding: it is written to
//! `fuzz/findings/<format>/` and the test fails. PDFs are parsed in a child
//! process, as `cairn serve` does; a crash there (pdf-extract's unbounded
//! recursion) is kept in `fuzz/contained/pdf/` and counted, not failed.
//!
//! - `corpus_parses_cleanly` (always run): every kept input parses or fails
//!   with an error, never a panic — findings stay fixed.
//! - `fuzz_parsers` (ignored): `CAIRN_FUZZ_SECS` per format (default 10),
//!   `CAIRN_FUZZ_FORMATS` (default `md,html,pdf,docx`), `CAIRN_FUZZ_SEED`:
//!   `cargo test --release -p cairn-retrieval --test fuzz -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_retrieval::formats::parse_bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An input slower than this is a finding (a parser must not hold a worker).
const SLOW: Duration = Duration::from_secs(2);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn corpus(format: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in ["corpus", "findings"] {
        if let Ok(entries) = std::fs::read_dir(root().join(dir).join(format)) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            out.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
        }
    }
    out
}

fn tokens(format: &str) -> &'static [&'static [u8]] {
    match format {
        "pdf" => &[
            b"BT ",
            b" ET",
            b"Tj",
            b"TJ",
            b"Tf",
            b" obj",
            b"endobj",
            b"stream\n",
            b"endstream",
            b"<<",
            b">>",
            b" 0 R",
            b"/Length 99999999",
            b"/Filter /FlateDecode",
            b"/Kids [",
            b"/Type /Page",
            b"xref",
            b"trailer",
            b"(",
            b")",
            b"[",
            b"]",
            b"/F1 ",
            b"q ",
            b" Q",
            b"/XObject",
            b"Do",
            b"-1",
            b"999999999999",
        ],
        "html" => &[
            b"<div>",
            b"</div>",
            b"<p>",
            b"</p>",
            b"<h1>",
            b"</h1>",
            b"<table>",
            b"<td>",
            b"<li>",
            b"<script>",
            b"</script>",
            b"<!--",
            b"-->",
            b"&amp;",
            b"&#x0;",
            b"&#99999999;",
            b"<",
            b">",
            b"\"",
            b"<![CDATA[",
            b"<title>",
            b"<pre>",
            b"\0",
        ],
        "docx" => &[
            b"<w:p>",
            b"</w:p>",
            b"<w:r>",
            b"<w:t>",
            b"</w:t>",
            b"</w:r>",
            b"<w:tab/>",
            b"&amp;",
            b"&bogus;",
            b"<w:pStyle w:val=\"Heading1\"/>",
            b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]>",
            b"&a;",
            b"<",
            b">",
            b"\xff\xfe",
        ],
        _ => &[
            b"# ",
            b"\n## ",
            b"```",
            b"\n\n",
            b"| a | b |\n|---|---|\n",
            b"- ",
            b"> ",
            b"[x](y)",
            b"<div>",
            b"\r\n",
            b"\t",
            b"\xc3\xa9",
            b"\xf0\x9f\x99\x82",
            b"\xff",
        ],
    }
}

fn mutate(rng: &mut StdRng, seed: &[u8], others: &[Vec<u8>], format: &str) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let len = b.len().max(1);
        let at = rng.random_range(0..len).min(b.len());
        match rng.random_range(0..7) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.random();
            }
            2 => {
                let t = tokens(format);
                let tok = t[rng.random_range(0..t.len())];
                b.splice(at..at, tok.iter().copied());
            }
            3 if !b.is_empty() => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                b.drain(at..end);
            }
            4 if !b.is_empty() => {
                let end = (at + rng.random_range(1..256)).min(b.len());
                let piece = b[at..end].to_vec();
                for _ in 0..rng.random_range(1..20) {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            5 if !others.is_empty() => {
                let o = &others[rng.random_range(0..others.len())];
                if !o.is_empty() {
                    let from = rng.random_range(0..o.len());
                    let to = (from + rng.random_range(1..512)).min(o.len());
                    b.splice(at..at, o[from..to].iter().copied());
                }
            }
            _ => {
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, bytes);
            }
        }
        if b.len() > 1 << 20 {
            b.truncate(1 << 20);
        }
    }
    b
}

/// For DOCX, half the inputs edit the XML inside the zip (a raw edit of a
/// compressed zip rarely gets past its checksum).
fn docx_input(rng: &mut StdRng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let xml = zip::ZipArchive::new(std::io::Cursor::new(seed))
        .ok()
        .and_then(|mut z| {
            let mut f = z.by_name("word/document.xml").ok()?;
            let mut s = Vec::new();
            f.read_to_end(&mut s).ok()?;
            Some(s)
        });
    match xml {
        Some(xml) if rng.random_bool(0.5) => {
            let xml = mutate(rng, &xml, &[], "docx");
            let mut buf = std::io::Cursor::new(Vec::new());
            {
                let mut z = zip::ZipWriter::new(&mut buf);
                z.start_file(
                    "word/document.xml",
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                z.write_all(&xml).unwrap();
                z.finish().unwrap();
            }
            buf.into_inner()
        }
        _ => mutate(rng, seed, others, "docx"),
    }
}

/// Parses a PDF in a child process (this test binary, running `pdf_child`):
/// pdf-extract can recurse without bound, and a stack overflow aborts the
/// process — which is why `cairn serve` parses PDFs in a child process too
/// (`DocumentParser::Child`). `Some(reason)` when the child died or was slow.
fn pdf_in_child(input: &[u8]) -> Option<String> {
    let path = std::env::temp_dir().join(format!("cairn-fuzz-{}.pdf", std::process::id()));
    std::fs::write(&path, input).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pdf_child",
            "--ignored",
            "--quiet",
            "--test-threads",
            "1",
        ])
        // A cleared environment, as the service's parser child has: with
        // RUST_BACKTRACE set, a contained panic spends seconds symbolising its
        // backtrace, which made "slow" findings of inputs parsed in 0.1 s.
        .env_clear()
        .env("CAIRN_FUZZ_PDF", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let elapsed = started.elapsed();
    if out.success() {
        return (elapsed > SLOW).then(|| format!("slow: {elapsed:?}"));
    }
    use std::os::unix::process::ExitStatusExt;
    Some(match out.signal() {
        Some(sig) => format!("crash (signal {sig}; contained by the child parser in production)"),
        None => "panic".to_owned(),
    })
}

#[test]
#[ignore = "the child side of pdf_in_child"]
fn pdf_child() {
    if let Ok(path) = std::env::var("CAIRN_FUZZ_PDF") {
        let input = std::fs::read(path).unwrap();
        let _ = parse_bytes("pdf", &input, "fuzz");
    }
}

/// Parses `input`; `Some(reason)` when it panicked or was slow.
fn finding(format: &str, input: &[u8]) -> Option<String> {
    if format == "pdf" {
        return pdf_in_child(input);
    }
    let started = Instant::now();
    let r = std::panic::catch_unwind(|| {
        let _ = parse_bytes(format, input, "fuzz");
    });
    match r {
        Err(e) => Some(format!(
            "panic: {}",
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        )),
        Ok(()) if started.elapsed() > SLOW => Some(format!("slow: {:?}", started.elapsed())),
        Ok(()) => None,
    }
}

#[test]
fn corpus_parses_cleanly() {
    for format in ["md", "html", "pdf", "docx"] {
        let inputs = corpus(format);
        assert!(!inputs.is_empty(), "no corpus for {format}");
        for (i, input) in inputs.iter().enumerate() {
            assert_eq!(finding(format, input), None, "{format} input {i}");
        }
    }
}

#[test]
#[ignore = "long: run by hand (see the module doc)"]
fn fuzz_parsers() {
    let secs: u64 = std::env::var("CAIRN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("CAIRN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let formats = std::env::var("CAIRN_FUZZ_FORMATS").unwrap_or_else(|_| "md,html,pdf,docx".into());
    println!("fuzz seed {seed}, {secs} s per format");
    let mut found = Vec::new();
    for format in formats.split(',') {
        let seeds = corpus(format);
        assert!(!seeds.is_empty(), "no corpus for {format}");
        let mut rng = StdRng::seed_from_u64(seed);
        let until = Instant::now() + Duration::from_secs(secs);
        let (mut runs, mut bytes, mut crashes) = (0u64, 0u64, 0u64);
        while Instant::now() < until {
            let s = &seeds[rng.random_range(0..seeds.len())];
            let input = if format == "docx" {
                docx_input(&mut rng, s, &seeds)
            } else {
                mutate(&mut rng, s, &seeds, format)
            };
            runs += 1;
            bytes += input.len() as u64;
            if let Some(reason) = finding(format, &input) {
                // A crash the child parser contains is kept apart: it does not
                // fail the run, and the corpus test does not replay it.
                let contained = reason.starts_with("crash");
                let kind = if contained { "contained" } else { "findings" };
                let dir = root().join(kind).join(format);
                std::fs::create_dir_all(&dir).unwrap();
                let name = format!("{:016x}", fxhash(&input));
                std::fs::write(dir.join(&name), &input).unwrap();
                if contained {
                    crashes += 1;
                } else {
                    found.push(format!("{format}/{name}: {reason}"));
                }
            }
        }
        println!(
            "{format}: {runs} inputs ({:.0}/s, {:.1} MB), findings so far: {}, crashes contained by the child parser: {crashes}",
            runs as f64 / secs as f64,
            bytes as f64 / 1e6,
            found.len()
        );
    }
    assert!(found.is_empty(), "findings:\n{}", found.join("\n"));
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}
