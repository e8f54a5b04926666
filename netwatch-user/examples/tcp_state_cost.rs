//! Cost of one tick's TCP state count: the `sock_diag` netlink dump against
//! the `/proc/net/tcp{,6}` parse it replaced, with `pairs` loopback
//! connections open (2 × pairs established sockets). A measurement, not a
//! test; raise the open-file limit first (`ulimit -n 65536`).
//!
//! Usage: tcp_state_cost [pairs] [ticks]

use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{Context, Result};
use netwatch::procinfo::tcp_states::TcpStates;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args
        .next()
        .map_or(Ok(5_000), |a| a.parse())
        .context("pairs")?;
    let ticks: u32 = args.next().map_or(Ok(50), |a| a.parse()).context("ticks")?;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let mut open = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let c = TcpStream::connect(addr).context("connect (ulimit -n?)")?;
        let (s, _) = l.accept()?;
        open.push((c, s));
    }
    let time = |f: &dyn Fn() -> Result<TcpStates>| -> Result<(f64, TcpStates)> {
        let mut last = f()?;
        let t = Instant::now();
        for _ in 0..ticks {
            last = f()?;
        }
        Ok((t.elapsed().as_secs_f64() * 1e3 / f64::from(ticks), last))
    };
    let (proc_ms, p) = time(&|| TcpStates::read_proc())?;
    let (nl_ms, n) = time(&|| Ok(TcpStates::read_netlink(|_, _| true)?))?;
    println!("open pairs: {pairs}, ticks: {ticks}");
    println!("/proc/net/tcp parse: {proc_ms:.3} ms/tick  {p:?}");
    println!("sock_diag netlink:   {nl_ms:.3} ms/tick  {n:?}");
    drop(open);
    Ok(())
}
