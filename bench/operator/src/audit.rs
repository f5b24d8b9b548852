//! Counting one identity's API writes from the control plane's audit log, which records every
//! write made with a ServiceAccount's credentials (see `sluice_tests::controlplane`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Writes (create, update, patch, delete) by one user, in total and by request.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Writes {
    /// Every write request, whatever its outcome.
    pub total: u64,
    /// Counts by `<verb> <resource>[/<subresource>] <HTTP status>`.
    pub by_request: BTreeMap<String, u64>,
}

/// The size of the audit log now: the boundary between the lines written before and after.
pub fn position(log: &Path) -> Result<u64> {
    match std::fs::metadata(log) {
        Ok(metadata) => Ok(metadata.len()),
        // The API server creates it on the first audited request.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error).with_context(|| format!("cannot read the size of {}", log.display())),
    }
}

/// The writes `username` made between the byte offsets `from` and `to` of the audit log.
/// The API server writes a request's line before it answers it (the log backend blocks), so
/// an offset taken after a response has been seen covers that request.
pub fn writes_between(log: &Path, username: &str, from: u64, to: u64) -> Result<Writes> {
    let mut writes = Writes::default();
    if to <= from {
        return Ok(writes);
    }
    let mut file = File::open(log).with_context(|| format!("cannot open {}", log.display()))?;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut read = from;
    let mut line = String::new();
    while read < to {
        line.clear();
        let length = reader.read_line(&mut line)?;
        if length == 0 {
            break;
        }
        read += length as u64;
        let event: Value =
            serde_json::from_str(&line).with_context(|| format!("an audit line of {} is not JSON", log.display()))?;
        if event["user"]["username"].as_str() != Some(username) {
            continue;
        }
        writes.total += 1;
        *writes.by_request.entry(request_label(&event)).or_default() += 1;
    }
    Ok(writes)
}

fn request_label(event: &Value) -> String {
    let verb = event["verb"].as_str().unwrap_or("?");
    let resource = event["objectRef"]["resource"].as_str().unwrap_or("?");
    let code = event["responseStatus"]["code"].as_u64().unwrap_or(0);
    match event["objectRef"]["subresource"].as_str() {
        Some(subresource) => format!("{verb} {resource}/{subresource} {code}"),
        None => format!("{verb} {resource} {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_users_writes_within_the_range() {
        let operator = "system:serviceaccount:bench-0:sluice-operator";
        let lines = [
            format!(
                r#"{{"user":{{"username":"{operator}"}},"verb":"create","objectRef":{{"resource":"secrets"}},"responseStatus":{{"code":201}}}}"#
            ),
            r#"{"user":{"username":"someone-else"},"verb":"patch","objectRef":{"resource":"pods"},"responseStatus":{"code":200}}"#.to_owned(),
            format!(
                r#"{{"user":{{"username":"{operator}"}},"verb":"patch","objectRef":{{"resource":"dataapis","subresource":"status"}},"responseStatus":{{"code":200}}}}"#
            ),
            format!(
                r#"{{"user":{{"username":"{operator}"}},"verb":"delete","objectRef":{{"resource":"poddisruptionbudgets"}},"responseStatus":{{"code":404}}}}"#
            ),
        ];
        let log = std::env::temp_dir().join(format!("sluice-bench-audit-test-{}.log", std::process::id()));
        std::fs::write(&log, lines.iter().map(|line| format!("{line}\n")).collect::<String>()).unwrap();
        let first_line_end = lines[0].len() as u64 + 1;

        let all = writes_between(&log, operator, 0, position(&log).unwrap()).unwrap();
        let after_first = writes_between(&log, operator, first_line_end, position(&log).unwrap()).unwrap();
        std::fs::remove_file(&log).unwrap();

        assert_eq!(all.total, 3);
        assert_eq!(
            after_first.by_request,
            BTreeMap::from([
                ("delete poddisruptionbudgets 404".to_owned(), 1),
                ("patch dataapis/status 200".to_owned(), 1),
            ])
        );
    }
}
