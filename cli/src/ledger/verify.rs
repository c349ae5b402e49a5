//! `ledger verify`: the full check, with a progress bar on long runs.

use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use daemoneye_lib::ledger::{VerifyOptions, VerifyReport, read_public_key, verify_with};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value as Json, json};

use crate::output::{Format, Grid};

/// Below this many bytes of segments, no progress bar (it would only flash).
const PROGRESS_MIN_BYTES: u64 = 32 * 1024 * 1024;

#[allow(clippy::print_stderr, reason = "the verdict goes to stderr next to the machine output")]
pub(super) fn run(
    dir: &Path,
    pubkey: Option<&Path>,
    expect: Option<&str>,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let public_key = match pubkey {
        Some(p) => Some(read_public_key(p).with_context(|| format!("reading the public key {}", p.display()))?),
        None => None,
    };
    let expect_at_least = expect.map(parse_expect).transpose().context("--expect")?;
    let opts = VerifyOptions { public_key, expect_at_least };
    let bar = progress_bar(dir);
    let report = verify_with(dir, &opts, &mut |records, bytes| {
        if let Some(b) = &bar {
            b.set_position(bytes);
            b.set_message(format!("{records} records"));
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report.with_context(|| format!("verifying the ledger in {}", dir.display()))?;
    write_report(dir, &report, format, out)?;
    match &report.problem {
        None => {
            if let Some((loc, bytes)) = &report.incomplete_tail {
                eprintln!(
                    "note: {bytes} bytes at {loc} are an unfinished record (a write in progress, or a crash procmond will repair on its next start)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(t) => {
            eprintln!(
                "ledger verify FAILED: first bad record: seq {} in {} at offset {}: {}",
                t.seq,
                t.file.display(),
                t.offset,
                t.what
            );
            match t.signed_through {
                Some(s) => eprintln!("records up to seq {s} are covered by a valid checkpoint signature"),
                None => eprintln!("no record before it is covered by a valid checkpoint signature"),
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// `SEQ:HASH` with a 64-hex-digit entry hash.
fn parse_expect(s: &str) -> anyhow::Result<(u64, [u8; 32])> {
    let Some((seq, hash)) = s.split_once(':') else { bail!("expected SEQ:HASH, got {s:?}") };
    let seq = seq.trim().parse::<u64>().with_context(|| format!("seq {seq:?} is not a number"))?;
    let bytes = hex::decode(hash.trim()).with_context(|| "the hash must be 64 hex digits")?;
    let hash = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("the hash must be 64 hex digits (32 bytes), got {} bytes", bytes.len()))?;
    Ok((seq, hash))
}

/// A byte-sized bar on stderr when it is a terminal and the ledger is big.
fn progress_bar(dir: &Path) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let total: u64 = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    if total < PROGRESS_MIN_BYTES {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} {msg} ({eta})") {
        bar.set_style(style);
    }
    Some(bar)
}

fn write_report(dir: &Path, r: &VerifyReport, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let problem = r.problem.as_ref().map(|t| {
        json!({
            "seq": t.seq,
            "file": t.file.display().to_string(),
            "offset": t.offset,
            "what": t.what,
            "signed_through": t.signed_through,
        })
    });
    let doc = json!({
        "status": if r.is_ok() { "ok" } else { "failed" },
        "dir": dir.display().to_string(),
        "records": r.records,
        "checkpoints": r.checkpoints,
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "last_entry_hash": r.last_entry_hash.map(hex::encode),
        "signed_through": r.signed_through,
        "unsigned_records": r.unsigned_records(),
        "segments": r.segments,
        "bytes": r.bytes,
        "incomplete_tail": r.incomplete_tail.as_ref().map(|(loc, n)| json!({
            "file": loc.file.display().to_string(), "offset": loc.offset, "bytes": n,
        })),
        "problem": problem,
    });
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut grid = Grid { columns: vec!["item".into(), "value".into()], rows: Vec::new() };
    if let Some(obj) = doc.as_object() {
        for (k, v) in obj {
            let v = match v {
                Json::Object(_) => Json::from(v.to_string()),
                other => other.clone(),
            };
            grid.rows.push(vec![Json::from(k.as_str()), v]);
        }
    }
    grid.write(format, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_takes_seq_and_a_full_hash() {
        let h = "ab".repeat(32);
        assert_eq!(parse_expect(&format!("12:{h}")).unwrap(), (12, [0xab; 32]));
        assert!(parse_expect("12").is_err());
        assert!(parse_expect("x:00").is_err());
        assert!(format!("{:#}", parse_expect("3:abcd").unwrap_err()).contains("32 bytes"));
    }
}
