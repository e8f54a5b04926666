//! Helpers shared by the integration test files (`#[macro_use] mod common;`
//! in each): the root check ([`require_root!`]), the one-at-a-time lock
//! ([`serial`]), an exact loopback transfer ([`transfer`]), a reset on close
//! ([`reset_on_close`]), a stand-in endpoint's request reader
//! ([`read_request`]), and the submodules [`agent`] (starting the agent
//! binary), [`tiers`] (loading the kernel collector on one tier), [`netns`]
//! (namespaces, veth pairs, nftables) and [`flood`] (raw packet floods).
//! Test code only: it must never be built into the agent, never touch a
//! namespace, pin, mount or rule it did not make, and holds one copy of each
//! helper more than one test file uses.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// Run the rest of the test only as root: the first statement of every test
/// that needs root, with what it needs root for (`require_root!("loads BPF
/// programs")`). As another user the test prints one line and returns (it
/// passes, skipped; see [`root_or_skip`]); as root, or when the run must not
/// skip (`CI=true`, `NETWATCH_REQUIRE_ROOT=1`), it goes on.
#[allow(unused_macros)] // live_view.rs (no libtest harness) names its tests itself
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::common::root_or_skip($why) {
            return;
        }
    };
}

pub mod agent;
pub mod flood;
pub mod netns;
pub mod tiers;

// The root check, one copy with the library's unit tests' (its macro there
// names the library's path; this crate's is [`require_root!`] above).
#[allow(unused_macros, unused_imports)]
#[path = "../../src/root_check.rs"]
mod root_check;
#[allow(unused_imports)] // live_view.rs takes root_or_skip_as only
pub use root_check::{root_or_skip, root_or_skip_as};

/// The kernel (and this process's pid, whose bytes the tests count) is
/// shared state: tests that load programs, run the agent or move bytes run
/// one at a time even when the harness runs tests in parallel.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Move exactly `n` bytes from this process to itself over loopback TCP
/// (one connection, written then closed; the reader checks it got `n`).
pub fn transfer(n: usize) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
    let addr = l.local_addr().expect("listener address");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accepting");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("reading");
        buf.len()
    });
    let mut c = TcpStream::connect(addr).expect("connecting");
    c.write_all(&vec![7u8; n]).expect("writing");
    drop(c);
    assert_eq!(reader.join().expect("reader thread"), n);
}

/// Make closing `s` send a reset (`SO_LINGER` on with a zero timeout): the
/// socket is destroyed at once, with no FIN exchange and no time-wait.
pub fn reset_on_close(s: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket, with a linger struct of its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER 0: {}", std::io::Error::last_os_error());
}

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
