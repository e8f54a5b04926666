//! Per-event cost of the BPF programs, from the kernel's own statistics
//! (`run_time_ns / run_cnt` with BPF stats enabled): loads one tier, drives
//! a fixed loopback workload through it, and prints one line per program.
//! A measurement, not a test: `cargo xtask bench` runs it on the host and in
//! the guest kernel. Needs root.
//!
//! Usage: bpf_cost [auto|fentry|kprobe|tracepoint] [calls]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;

use anyhow::{Context, Result};
use netwatch::source::ebpf::{EbpfSource, LoadOptions, TierChoice};
use netwatch::source::SocketSource;

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
    let batch = src.read()?;
    let counted: u64 = batch
        .samples
        .iter()
        .filter(|s| s.pid == Some(std::process::id()))
        .map(|s| s.tx_bytes)
        .sum();
    println!(
        "tier={} tcp_bytes={got} udp_bytes={} counted_tx_bytes={counted}",
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
