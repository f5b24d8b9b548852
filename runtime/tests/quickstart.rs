//! The README's first command, as a process: `sluice-runtime serve --manifests examples/quickstart`
//! creates the sample database, prints an admin key and a working curl with it and without it,
//! serves REST and MCP with that key, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = http("GET", url, headers, None);
    (status, body)
}

/// One HTTP/1.1 request: status, the raw head, and the body.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("URL has a path");
    let mut stream = TcpStream::connect(host).expect("connect to the runtime");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    let mut extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    if let Some(body) = body {
        extra.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(
        stream,
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n{}",
        body.unwrap_or_default()
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    (status, head.to_owned(), body.to_owned())
}

/// The quickstart's MCP endpoint with the printed key, as a 2025-11-25 agent talks to it:
/// initialize, then call the named query `top_customers` in that session.
fn mcp_calls_a_tool(endpoint: &str, header_name: &str, key: &str) {
    let accept = ("Accept", "application/json, text/event-stream");
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"quickstart-test","version":"1"}}}"#;
    let (status, head, body) = http("POST", endpoint, &[(header_name, key), accept], Some(initialize));
    assert_eq!(status, 200, "MCP initialize with the printed key: {body}");
    assert!(body.contains("sluice-shop"), "server info names the DataApi: {body}");
    let session = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Mcp-Session-Id in:\n{head}"));
    let in_session = [
        (header_name, key),
        accept,
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, body) = http("POST", endpoint, &in_session, Some(initialized));
    assert_eq!(status, 202, "initialized notification: {body}");
    let call =
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"top_customers","arguments":{"limit":2}}}"#;
    let (status, _, body) = http("POST", endpoint, &in_session, Some(call));
    assert_eq!(status, 200, "tools/call top_customers: {body}");
    assert!(
        body.contains("lifetime_value") && !body.contains("\"isError\":true"),
        "{body}"
    );
}

#[test]
fn the_quickstart_serves_rows_and_stops_on_sigterm() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    for entry in std::fs::read_dir(&source).expect("read examples/quickstart") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml" || ext == "sql") {
            std::fs::copy(&path, dir.join(path.file_name().expect("file name"))).expect("copy a quickstart file");
        }
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-runtime"))
        .args(["serve", "--manifests"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice-runtime");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut banner = Vec::new();
    let (mut example, mut keyed, mut mcp) = (None, None, None);
    for line in stdout.lines() {
        let line = line.expect("read the banner");
        banner.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("MCP") {
            mcp = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(command) = line.trim().strip_prefix("curl '") {
            example = command.split('\'').next().map(str::to_owned);
        }
        if let Some(command) = line.trim().strip_prefix("curl -H '") {
            // curl -H 'X-API-Key: sluice_…' 'http://…'
            let parts: Vec<&str> = command.split('\'').collect();
            keyed = Some((parts[0].to_owned(), parts[2].to_owned()));
            break;
        }
    }
    let example = example.unwrap_or_else(|| panic!("no anonymous curl in the banner:\n{}", banner.join("\n")));
    let (key_header, keyed) =
        keyed.unwrap_or_else(|| panic!("no curl with a key in the banner:\n{}", banner.join("\n")));
    let (header_name, key) = key_header.split_once(": ").expect("the curl names a header and a key");
    assert!(banner.iter().any(|line| line.contains("/openapi.json")), "{banner:?}");
    assert!(
        banner.iter().any(|line| line.contains(": sluice_")),
        "no generated API key: {banner:?}"
    );
    assert!(
        dir.join("quickstart.db").is_file(),
        "the sample database was not created"
    );

    let (status, body) = http_get(&example, &[]);
    assert_eq!(status, 200, "{example}: {body}");
    let rows: serde_json::Value = serde_json::from_str(&body).expect("JSON rows");
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{body}");

    let (status, body) = http_get(&keyed, &[(header_name, key)]);
    assert_eq!(status, 200, "{keyed} with the admin key: {body}");
    let (status, body) = http_get(&keyed, &[]);
    assert_eq!(
        status, 404,
        "{keyed} without a key must not exist for the anonymous role: {body}"
    );
    let (status, _) = http_get(&keyed, &[(header_name, "sluice_not_issued")]);
    assert_eq!(status, 401, "{keyed} with a key never issued");
    let mcp = mcp.unwrap_or_else(|| panic!("no MCP endpoint in the banner:\n{}", banner.join("\n")));
    mcp_calls_a_tool(&mcp, header_name, key);
    // The visitor's rate limit (burst 20), as the README's loop shows it.
    let statuses: Vec<u16> = (0..25).map(|_| http_get(&example, &[]).0).collect();
    assert!(
        statuses.contains(&429) && statuses.iter().all(|status| [200, 429].contains(status)),
        "25 anonymous requests in a row must meet the visitor's burst of 20: {statuses:?}"
    );
    let (status, _) = http_get(&keyed, &[(header_name, key)]);
    assert_eq!(status, 200, "the admin key has its own bucket");

    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(terminated.success());
    let status = child.wait().expect("wait for the runtime");
    assert!(status.success(), "the runtime did not shut down cleanly: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
