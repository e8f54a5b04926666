//! Helpers shared by several integration test files (`mod common;` in
//! each). Test code only: it must never be built into the agent, and only
//! holds what more than one test file uses.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;

/// Read one HTTP/1.1 request from a stand-in endpoint's connection: the
/// request line, the headers and a `Content-Length` body; (method, path,
/// body), `None` at EOF or on a read that fails. A chunked body is refused
/// with a panic: the stand-ins read `Content-Length` bodies only.
pub fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim();
            assert!(
                !k.eq_ignore_ascii_case("transfer-encoding"),
                "the stand-in reads Content-Length bodies only"
            );
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, body))
}
