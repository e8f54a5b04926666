//! Per-event cost of the BPF programs, from the kernel's own statistics
//! (`run_time_ns / run_cnt` with BPF stats enabled): loads one tier, drives
//! a fixed loopback workload through it, and prints one line per program.
//! A measurement, not a test: `cargo xtask bench` runs it on the host and in
//! the guest kernel. Needs root.
//!
//! Besides the bytes, `calls / 50` connections make the control events
//! (`tp_inet_sock_set_state` at every state change, the connect results,
//! `tp_tcp_send_reset` / `tp_tcp_receive_reset`): each is accepted, then
//! reset by its server (`SO_LINGER` 0), and a connect to a closed port is
//! refused.
//!
//! The retransmit program runs only when segments are lost: a transfer on
//! the loopback of a network namespace of this run's own, where nftables
//! drops 3% of the segments to its port (skipped, with the reason printed,
//! where `ip` or `nft` are missing).
//!
//! Usage: bpf_cost [auto|fentry|kprobe|tracepoint] [calls]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use netwatch::source::ebpf::{EbpfSource, LoadOptions, TierChoice};
use netwatch::source::SocketSource;

/// `SO_LINGER` 0: `close` resets the connection.
fn linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a value of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let tier: TierChoice = args
        .next()
        .unwrap_or_else(|| "auto".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let calls: usize = args
        .next()
        .map_or(Ok(20_000), |c| c.parse())
        .context("calls")?;
    let mut src = EbpfSource::load(&LoadOptions {
        tier,
        ..LoadOptions::default()
    })?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF stats")?;

    // TCP: `calls` writes of 1 KiB, read on the other end.
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1024];
        let mut total = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let chunk = [1u8; 1024];
    for _ in 0..calls {
        c.write_all(&chunk)?;
    }
    drop(c);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    // UDP: `calls` datagrams of 512 B.
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let mut buf = [0u8; 512];
    for _ in 0..calls {
        tx.send_to(&buf, rx.local_addr()?)?;
        rx.recv(&mut buf)?;
    }
    // Control events: `calls / 50` accepted connections reset by their
    // server, and as many refused connects.
    let conns = calls / 50;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    for _ in 0..conns {
        let c = TcpStream::connect(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        linger_zero(&s)?;
        drop(s);
        drop(c);
        if TcpStream::connect(closed).is_ok() {
            anyhow::bail!("{closed} accepted a connection: it was meant to be closed");
        }
    }
    // Retransmits, for `tp_tcp_retransmit_skb` (not on the paths above).
    match lossy_transfer(calls * 1024) {
        Ok(n) => println!("retransmit workload: {n} segments retransmitted"),
        Err(e) => println!("retransmit workload skipped: {e:#}"),
    }
    let batch = src.read()?;
    let counted: u64 = batch
        .samples
        .iter()
        .filter(|s| s.pid == Some(std::process::id()))
        .map(|s| s.tx_bytes)
        .sum();
    println!(
        "tier={} tcp_bytes={got} udp_bytes={} counted_tx_bytes={counted} resets={conns} refused={conns}",
        src.tier(),
        calls * 512
    );
    for (name, prog) in src
        .ebpf()
        .expect("loaded, not continued from pins")
        .programs()
    {
        // Programs of other tiers are in the object but not loaded.
        let Ok(info) = prog.info() else { continue };
        let (ns, cnt) = (info.run_time().as_nanos() as u64, info.run_count());
        if let Some(per) = ns.checked_div(cnt) {
            println!("NETWATCH-COST tier={} program={name} run_cnt={cnt} run_time_ns={ns} ns_per_event={per}", src.tier());
        }
    }
    Ok(())
}

/// Run `cmd` (from the calling thread, so in its network namespace).
fn run(cmd: &mut Command, stdin: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("piped stdin")?
        .write_all(stdin.as_bytes())
        .with_context(|| format!("writing to {cmd:?}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Send `bytes` over TCP through a 3% loss: on the loopback of a new
/// network namespace, which only a thread of this run enters (and which
/// goes away with it and its sockets), nftables dropping 3% of the segments
/// to the listener's port. Returns the sender's `tcpi_total_retrans`.
fn lossy_transfer(bytes: usize) -> Result<u32> {
    thread::spawn(move || -> Result<u32> {
        // SAFETY: unshare(2) moves only this thread (and the processes and
        // threads it starts) into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
        }
        run(Command::new("ip").args(["link", "set", "lo", "up"]), "")?;
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        run(
            Command::new("nft").args(["-f", "-"]),
            &format!(
                "table inet bpf_cost {{\n\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport {port} numgen random mod 100 < 3 drop\n\t}}\n}}\n"
            ),
        )?;
        let reader = thread::spawn(move || -> std::io::Result<usize> {
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                match s.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n,
                }
            }
        });
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0;
        while sent < bytes {
            c.write_all(&chunk)?;
            sent += chunk.len();
        }
        c.shutdown(std::net::Shutdown::Write)?;
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        if got != sent {
            bail!("sent {sent} bytes through the loss, {got} arrived");
        }
        // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid socket and a buffer of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                c.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if r != 0 {
            bail!("TCP_INFO: {}", std::io::Error::last_os_error());
        }
        Ok(info.tcpi_total_retrans)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("lossy transfer thread panicked"))?
}
