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
//! Usage: bpf_cost [auto|fentry|kprobe|tracepoint] [calls]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;

use anyhow::{Context, Result};
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
