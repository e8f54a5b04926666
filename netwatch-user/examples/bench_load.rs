//! Workload generator for `cargo xtask bench`: loopback-only traffic whose
//! byte counts are known exactly, so the bench can compare what each monitor
//! attributes to each process with the truth. It must never touch anything
//! but 127.0.0.1 / ::1 and never sleep-time anything it reports as exact.
//!
//! Every command ends by printing one JSON line: `{"wall_s", "cpu_s",
//! "procs": [{"pid", "comm", "tx", "rx"}], ...}` (application bytes per
//! process). Server roles run in a second process started from `argv[0]`
//! with its last two characters `-c` replaced by `-s` when it ends that way
//! (the bench runs it through symlinks such as `nwb-xfer-c`), so peers that
//! attribute by process name can tell the two ends apart.
//!
//! Usage:
//!   bench_load transfer <bytes> [v4|v6]     client writes in 4 KiB, server reads
//!   bench_load paced <bytes> <secs> [v4|v6]  the same, spread evenly over secs
//!   bench_load short <conns> <bytes>        connections shorter than an interval
//!   bench_load reply-close <conns> <req> <reply>  server replies, then closes
//!   bench_load udp <datagrams> <size> [v4|v6]     echoed datagrams
//!   bench_load same <bytes>                 both ends in this process
//!   bench_load idle <sockets> <active_per_s> <secs>  open sockets, some active
//!   bench_load rate <conns_per_s> <secs>    new connections per second
//!   bench_load serve <kind> [args]          (internal) the server role

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const CHUNK: usize = 4096;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let num = |i: usize| -> Result<u64> {
        args.get(i)
            .with_context(|| format!("argument {i} missing"))?
            .parse::<u64>()
            .with_context(|| format!("argument {i} is not a number"))
    };
    let fam = |i: usize| args.get(i).map(String::as_str) == Some("v6");
    match cmd {
        "transfer" => transfer(num(2)?, fam(3), 0),
        "paced" => transfer(num(2)?, fam(4), num(3)?),
        "short" => short(num(2)?, num(3)?),
        "reply-close" => reply_close(num(2)?, num(3)?, num(4)?),
        "udp" => udp(num(2)?, num(3)?, fam(4)),
        "same" => same(num(2)?),
        "idle" => idle(num(2)?, num(3)?, num(4)?),
        "rate" => rate(num(2)?, num(3)?),
        "serve" => serve(&args[2..]),
        _ => bail!("usage: bench_load transfer|short|reply-close|udp|same|idle|rate ..."),
    }
}

fn loopback(v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }
}

/// CPU seconds of this process plus its waited-for children.
fn cpu_seconds() -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: rusage is plain data; getrusage writes it fully on success.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a rusage.
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            total += tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    total
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The server process: same binary, name ending in `-s`.
struct Server {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    addr: SocketAddr,
    pid: u32,
    comm: String,
}

impl Server {
    fn start(args: &[&str]) -> Result<Server> {
        let me = std::env::args().next().context("argv[0]")?;
        let exe = match me.strip_suffix("-c") {
            Some(stem) if std::path::Path::new(&format!("{stem}-s")).exists() => {
                format!("{stem}-s")
            }
            _ => me,
        };
        let mut child = Command::new(&exe)
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting server {exe}"))?;
        let pid = child.id();
        let mut out = BufReader::new(child.stdout.take().context("server stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let addr: SocketAddr = line.trim().parse().context("server address")?;
        Ok(Server {
            child,
            out,
            addr,
            pid,
            comm: comm(pid),
        })
    }

    /// Wait for the server to finish; returns the (tx, rx) it counted.
    fn finish(mut self) -> Result<(u64, u64)> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("server failed: {status}");
        }
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(tx)), Some(Ok(rx))) => Ok((tx, rx)),
            _ => bail!("server report unreadable: {line:?}"),
        }
    }
}

fn report(wall: Duration, cpu0: f64, procs: &[(u32, &str, u64, u64)], extra: &str) {
    let procs: Vec<String> = procs
        .iter()
        .map(|(pid, comm, tx, rx)| {
            format!(r#"{{"pid":{pid},"comm":"{comm}","tx":{tx},"rx":{rx}}}"#)
        })
        .collect();
    println!(
        r#"{{"wall_s":{:.6},"cpu_s":{:.6},"procs":[{}]{extra}}}"#,
        wall.as_secs_f64(),
        cpu_seconds() - cpu0,
        procs.join(",")
    );
}

fn read_to_end_count(s: &mut TcpStream) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

fn write_chunks(s: &mut TcpStream, bytes: u64) -> Result<()> {
    let chunk = [7u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn me() -> (u32, String) {
    let pid = std::process::id();
    (pid, comm(pid))
}

/// One connection, `bytes` in 4 KiB writes; spread over `secs` seconds in
/// 100 even slices when `secs` > 0.
fn transfer(bytes: u64, v6: bool, secs: u64) -> Result<()> {
    let srv = Server::start(&["sink", if v6 { "v6" } else { "v4" }, "1"])?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut c = TcpStream::connect(srv.addr)?;
    if secs == 0 {
        write_chunks(&mut c, bytes)?;
    } else {
        let slices = 100 * secs;
        for i in 0..slices {
            write_chunks(&mut c, bytes * (i + 1) / slices - bytes * i / slices)?;
            let due = Duration::from_millis((i + 1) * 1000 * secs / slices);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let back = read_to_end_count(&mut c)?;
    drop(c);
    let (spid, scomm) = (srv.pid, srv.comm.clone());
    let (stx, srx) = srv.finish()?;
    let wall = t0.elapsed();
    if srx != bytes || back != 0 || stx != 0 {
        bail!("transfer: server got {srx} of {bytes}");
    }
    let (pid, c) = me();
    report(
        wall,
        cpu0,
        &[(pid, &c, bytes, 0), (spid, &scomm, 0, bytes)],
        "",
    );
    Ok(())
}

fn short(conns: u64, bytes: u64) -> Result<()> {
    let srv = Server::start(&["sink", "v4", &conns.to_string()])?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for _ in 0..conns {
        let mut c = TcpStream::connect(srv.addr)?;
        write_chunks(&mut c, bytes)?;
    }
    let (spid, scomm) = (srv.pid, srv.comm.clone());
    let (_, srx) = srv.finish()?;
    if srx != conns * bytes {
        bail!("short: server got {srx} of {}", conns * bytes);
    }
    let (pid, c) = me();
    report(
        t0.elapsed(),
        cpu0,
        &[
            (pid, &c, conns * bytes, 0),
            (spid, &scomm, 0, conns * bytes),
        ],
        "",
    );
    Ok(())
}

fn reply_close(conns: u64, req: u64, reply: u64) -> Result<()> {
    let srv = Server::start(&[
        "reply",
        &conns.to_string(),
        &req.to_string(),
        &reply.to_string(),
    ])?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut got = 0;
    for _ in 0..conns {
        let mut c = TcpStream::connect(srv.addr)?;
        write_chunks(&mut c, req)?;
        got += read_to_end_count(&mut c)?;
    }
    let (spid, scomm) = (srv.pid, srv.comm.clone());
    let (stx, srx) = srv.finish()?;
    if got != conns * reply || srx != conns * req || stx != got {
        bail!("reply-close: counts differ");
    }
    let (pid, c) = me();
    report(
        t0.elapsed(),
        cpu0,
        &[(pid, &c, srx, got), (spid, &scomm, stx, srx)],
        "",
    );
    Ok(())
}

fn udp(n: u64, size: u64, v6: bool) -> Result<()> {
    let srv = Server::start(&["udp", if v6 { "v6" } else { "v4" }, &n.to_string()])?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let s = UdpSocket::bind(loopback(v6))?;
    s.connect(srv.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let buf = vec![3u8; size as usize];
    let mut rbuf = vec![0u8; 65536];
    let mut rx = 0;
    for _ in 0..n {
        s.send(&buf)?;
        rx += s.recv(&mut rbuf)? as u64;
    }
    let (spid, scomm) = (srv.pid, srv.comm.clone());
    let (stx, srx) = srv.finish()?;
    if rx != n * size || srx != n * size || stx != srx {
        bail!("udp: counts differ");
    }
    let (pid, c) = me();
    report(
        t0.elapsed(),
        cpu0,
        &[(pid, &c, n * size, rx), (spid, &scomm, stx, srx)],
        "",
    );
    Ok(())
}

fn same(bytes: u64) -> Result<()> {
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let l = TcpListener::bind(loopback(false))?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> Result<u64> {
        let (mut s, _) = l.accept()?;
        read_to_end_count(&mut s)
    });
    let mut c = TcpStream::connect(addr)?;
    write_chunks(&mut c, bytes)?;
    drop(c);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if got != bytes {
        bail!("same: got {got} of {bytes}");
    }
    let (pid, c) = me();
    report(t0.elapsed(), cpu0, &[(pid, &c, bytes, bytes)], "");
    Ok(())
}

/// Sockets one process holds at most; more are spread over child processes
/// (this sandbox refuses an RLIMIT_NOFILE hard limit above 20,000).
const PER_PROCESS: u64 = 16_000;

/// Raise RLIMIT_NOFILE to `want`, or to the hard limit when that is lower
/// and cannot be raised.
fn raise_nofile(want: u64) -> Result<()> {
    let want = want as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return Ok(());
    }
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur = lim.rlim_max.min(want);
    }
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "raising RLIMIT_NOFILE to {want}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `sockets` open TCP sockets (pairs on loopback, both ends here); each
/// second `active` of them write 64 bytes, read on the other end.
fn idle(sockets: u64, active: u64, secs: u64) -> Result<()> {
    if sockets > PER_PROCESS {
        return idle_spread(sockets, active, secs);
    }
    raise_nofile(sockets + 1024)?;
    let l = TcpListener::bind(loopback(false))?;
    let addr = l.local_addr()?;
    let pairs = sockets.div_ceil(2) as usize;
    let mut conns = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let c = TcpStream::connect(addr)?;
        let (s, _) = l.accept()?;
        conns.push((c, s));
    }
    // Ready: the bench starts its measurement window now.
    println!("ready");
    std::io::stdout().flush()?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let msg = [5u8; 64];
    let mut buf = [0u8; 64];
    let mut next = 0usize;
    let mut moved = 0u64;
    let slices = 10u64;
    for tick in 0..secs * slices {
        let per = (active * (tick % slices + 1)) / slices - (active * (tick % slices)) / slices;
        for _ in 0..per {
            let (c, s) = &mut conns[next % pairs];
            c.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            moved += 64;
            next += 1;
        }
        let due = Duration::from_millis((tick + 1) * 1000 / slices);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let (pid, c) = me();
    report(t0.elapsed(), cpu0, &[(pid, &c, moved, moved)], "");
    drop(conns);
    Ok(())
}

/// `idle` over several processes of at most [`PER_PROCESS`] sockets each.
fn idle_spread(sockets: u64, active: u64, secs: u64) -> Result<()> {
    let me = std::env::args().next().context("argv[0]")?;
    let parts = sockets.div_ceil(PER_PROCESS);
    let mut kids = Vec::new();
    for i in 0..parts {
        let n = sockets / parts + u64::from(i < sockets % parts);
        let a = active / parts + u64::from(i < active % parts);
        let mut child = Command::new(&me)
            .args(["idle", &n.to_string(), &a.to_string(), &secs.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting an idle part")?;
        let out = BufReader::new(child.stdout.take().context("part stdout")?);
        kids.push((child, out));
    }
    for (_, out) in &mut kids {
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("an idle part did not start: {line:?}");
        }
    }
    println!("ready");
    std::io::stdout().flush()?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut procs = Vec::new();
    for (mut child, mut out) in kids {
        let mut rest = String::new();
        out.read_to_string(&mut rest)?;
        if !child.wait()?.success() {
            bail!("an idle part failed");
        }
        let line = rest.lines().last().unwrap_or("");
        // {"wall_s":..,"cpu_s":..,"procs":[{...}]}: keep the procs entries.
        let start = line.find("\"procs\":[").context("part report")? + 9;
        let end = line.rfind(']').context("part report")?;
        procs.push(line[start..end].to_string());
    }
    println!(
        r#"{{"wall_s":{:.6},"cpu_s":{:.6},"procs":[{}]}}"#,
        t0.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
        procs.join(",")
    );
    Ok(())
}

/// New short connections at `per_s` a second for `secs` seconds; each
/// sends 100 bytes; the server thread reads to EOF.
fn rate(per_s: u64, secs: u64) -> Result<()> {
    raise_nofile(65536)?;
    let l = TcpListener::bind(loopback(false))?;
    let addr = l.local_addr()?;
    let total = per_s * secs;
    let server = std::thread::spawn(move || -> Result<u64> {
        let mut got = 0;
        for _ in 0..total {
            let (mut s, _) = l.accept()?;
            got += read_to_end_count(&mut s)?;
        }
        Ok(got)
    });
    println!("ready");
    std::io::stdout().flush()?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let slices = 100u64;
    let mut made = 0u64;
    for tick in 0..secs * slices {
        let per = (per_s * (tick % slices + 1)) / slices - (per_s * (tick % slices)) / slices;
        for _ in 0..per {
            let mut c = TcpStream::connect(addr)?;
            c.write_all(&[9u8; 100])?;
            made += 1;
        }
        let due = Duration::from_millis((tick + 1) * 1000 / slices);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let wall = t0.elapsed();
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    if got != made * 100 {
        bail!("rate: server got {got} of {}", made * 100);
    }
    let (pid, c) = me();
    report(
        wall,
        cpu0,
        &[(pid, &c, got, got)],
        &format!(
            r#","achieved_per_s":{:.1}"#,
            made as f64 / wall.as_secs_f64()
        ),
    );
    Ok(())
}

/// Server roles: print the bound address, serve, print "tx rx".
fn serve(args: &[String]) -> Result<()> {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let v6 = args.get(1).map(String::as_str) == Some("v6");
    let n = |i: usize| -> Result<u64> {
        args.get(i)
            .context("serve argument missing")?
            .parse::<u64>()
            .context("serve argument")
    };
    let (tx, rx) = match kind {
        "sink" => {
            let l = TcpListener::bind(loopback(v6))?;
            println!("{}", l.local_addr()?);
            std::io::stdout().flush()?;
            let mut rx = 0;
            for _ in 0..n(2)? {
                let (mut s, _) = l.accept()?;
                rx += read_to_end_count(&mut s)?;
            }
            (0, rx)
        }
        "reply" => {
            let l = TcpListener::bind(loopback(false))?;
            println!("{}", l.local_addr()?);
            std::io::stdout().flush()?;
            let (conns, req, reply) = (n(1)?, n(2)?, n(3)?);
            let (mut tx, mut rx) = (0, 0);
            let mut buf = vec![0u8; req as usize];
            for _ in 0..conns {
                let (mut s, _) = l.accept()?;
                s.read_exact(&mut buf)?;
                rx += req;
                write_chunks(&mut s, reply)?;
                tx += reply;
                // Close first: the server side ends the connection.
                drop(s);
            }
            (tx, rx)
        }
        "udp" => {
            let s = UdpSocket::bind(loopback(v6))?;
            println!("{}", s.local_addr()?);
            std::io::stdout().flush()?;
            let mut buf = vec![0u8; 65536];
            let (mut tx, mut rx) = (0, 0);
            for _ in 0..n(2)? {
                let (k, from) = s.recv_from(&mut buf)?;
                rx += k as u64;
                tx += s.send_to(&buf[..k], from)? as u64;
            }
            (tx, rx)
        }
        _ => bail!("serve: unknown kind {kind:?}"),
    };
    println!("{tx} {rx}");
    Ok(())
}
