//! Writes what a bench run measured: `BENCHMARKS.md` (tables with median
//! and min–max over the interleaved repetitions, the command, machine,
//! kernel, date and load average), `bench/plots/*.svg` (plotters, SVG
//! backend only) and `bench/results.json` (every raw measurement). Formats
//! numbers only; never measures and never drops a failed run silently.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use serde_json::json;

use super::monitor::Kind;
use super::stats::{fmt, pct, ratio, summary};
use super::{Cost, Plan, ScalePoint, Session};

pub struct Context {
    pub command: String,
    pub started: String,
    pub duration: Duration,
    pub load: Vec<f64>,
    pub machine: BTreeMap<&'static str, String>,
    pub plan: Plan,
    pub peer_notes: Vec<String>,
    pub tcptop: String,
    pub kinds: Vec<Kind>,
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1048576.0)
}

fn secs(s: f64) -> String {
    format!("{s:.3} s")
}

/// Per-rep values of `f` for `kind`, with NaN where the run failed.
fn per_rep(sessions: &[Session], kind: Kind, f: impl Fn(&Session) -> f64) -> Vec<f64> {
    sessions.iter().filter(|s| s.kind == kind).map(f).collect()
}

/// Per-rep ratio of `f` between two kinds, paired by repetition.
fn paired(sessions: &[Session], a: Kind, b: Kind, f: impl Fn(&Session) -> f64) -> Vec<f64> {
    sessions
        .iter()
        .filter(|s| s.kind == a)
        .filter_map(|s| {
            let o = sessions.iter().find(|o| o.kind == b && o.rep == s.rep)?;
            Some(f(s) / f(o))
        })
        .collect()
}

pub fn write(
    root: &Path,
    ctx: &Context,
    sessions: &[Session],
    scale: &[ScalePoint],
    cost: &Cost,
    cold: &BTreeMap<Kind, Vec<f64>>,
) -> Result<()> {
    let plots = root.join("bench/plots");
    std::fs::create_dir_all(&plots)?;
    let mut md = String::new();
    let m = &ctx.machine;
    let load: Vec<String> = ctx.load.iter().map(|l| format!("{l:.2}")).collect();
    let _ = writeln!(
        md,
        "# netwatch benchmarks\n\n\
         Written by `{}` (as root) on {}; the run took {:.0} s. Do not edit by hand: re-run the command.\n\n\
         - Machine: {} CPUs ({}), {} memory; kernel {}.\n\
         - 1-minute load average at the start and after each section (overhead, scale, cost, cold start): **{}**. \
         The machine is shared: wall-time ratios are noisy, CPU seconds and per-event kernel costs less so.\n\
         - {} interleaved repetitions (the order of the monitors rotates each repetition); every figure is \
         `median (min–max)` over them. Workloads run on loopback only (`netwatch-user/examples/bench_load.rs`), \
         the agent at a 1 s interval writing JSON lines to a file.\n\
         - Peers: bandwhich {} (crates.io, built here), nethogs, bpftrace, bpftool, libbpf-tools (Debian). \
         tcptop: {}.\n",
        ctx.command,
        ctx.started,
        ctx.duration.as_secs_f64(),
        m.get("nproc").cloned().unwrap_or_default(),
        m.get("cpu").cloned().unwrap_or_default(),
        m.get("memory").cloned().unwrap_or_default(),
        m.get("kernel").cloned().unwrap_or_default(),
        load.join(" → "),
        ctx.plan.reps,
        super::tools::BANDWHICH,
        ctx.tcptop
    );
    for n in &ctx.peer_notes {
        let _ = writeln!(md, "- {n}");
    }
    let failed: Vec<String> = sessions
        .iter()
        .filter_map(|s| {
            s.error
                .as_ref()
                .map(|e| format!("{} rep {}: {e}", s.kind.label(), s.rep + 1))
        })
        .chain(scale.iter().filter_map(|p| {
            p.error.as_ref().map(|e| {
                format!(
                    "scale {} sockets={} rate={} rep {}: {e}",
                    p.kind.label(),
                    p.sockets,
                    p.rate,
                    p.rep + 1
                )
            })
        }))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\nRuns that failed (left out of the figures):\n");
        for f in &failed {
            let _ = writeln!(md, "- {f}");
        }
    }

    if !sessions.is_empty() {
        accuracy_table(&mut md, ctx, sessions);
        overhead_table(&mut md, ctx, sessions);
        slowdown_plot(&plots.join("overhead.svg"), ctx, sessions)?;
        let _ = writeln!(
            md,
            "\n![workload slowdown per monitor](bench/plots/overhead.svg)\n"
        );
    }
    if !scale.is_empty() {
        scale_table(&mut md, ctx, scale);
        scale_plots(&plots, scale)?;
        let _ = writeln!(
            md,
            "\n![agent CPU and RSS against open sockets](bench/plots/scale_sockets.svg)\n\
             ![agent CPU and RSS against connection rate](bench/plots/scale_rate.svg)\n"
        );
    }
    if !cost.netwatch.is_empty() || !cost.bpftrace.is_empty() {
        cost_table(&mut md, ctx, cost);
    }
    if !cold.is_empty() {
        let _ = writeln!(
            md,
            "\n## Cold start\n\nSeconds from launching the agent (`--interval 1 --output json`) until its first \
             JSON line arrives, minus the 1 s interval (the start-up work).\n\n| mode | start-up beyond one interval |\n|---|---|"
        );
        for (k, v) in cold {
            let _ = writeln!(md, "| {} | {} |", k.label(), fmt(v, secs));
        }
    }
    std::fs::write(root.join("BENCHMARKS.md"), md).context("writing BENCHMARKS.md")?;
    raw_json(root, ctx, sessions, scale, cost, cold)
}

fn accuracy_table(md: &mut String, ctx: &Context, sessions: &[Session]) {
    let _ = writeln!(
        md,
        "\n## Accuracy\n\nApplication bytes each monitor attributed to the right process (by pid; bandwhich by \
         process name: each role runs under its own name), divided by the bytes the workload moved, per direction. \
         1.000 is exact; above 1 counts headers or another process's bytes. All workloads run in each repetition \
         while the monitor runs. Workloads: the bulk transfer is {} MiB in 4 KiB writes as fast as loopback goes (well under an interval); \
         the paced one is 64 MiB in 4 KiB writes spread over 3 s; {} connections of 2000 B \
         each (each far shorter than an interval); {} request/reply connections where the server writes 5000 B and \
         closes first; {} echoed 1000 B UDP datagrams; {} MiB over ::1; {} MiB with both ends in one process.\n",
        ctx.plan.transfer_bytes >> 20,
        ctx.plan.conns,
        ctx.plan.conns,
        ctx.plan.udp_datagrams,
        ctx.plan.small_bytes >> 20,
        ctx.plan.small_bytes >> 20
    );
    let _ = writeln!(
        md,
        "How to read it: netwatch's `ss`, `pcap` and `proc` modes read socket tables between intervals, so bytes of \
         sockets that open and close between two reads are lost (documented; the eBPF tiers count them). bandwhich \
         and nethogs count packets on `lo` (headers included) and find the owning process through the socket inode \
         table they refresh periodically: each loopback packet is seen once, so one end's bytes show as sent and \
         the other end's not at all, and connections shorter than their refresh go to `<UNKNOWN>`/`unknown TCP`. \
         The bpftrace one-liner sums the same tracepoints as netwatch's tracepoint tier and so is exact, but keeps \
         no per-socket, per-interval or closed-socket state.\n"
    );
    let labels: Vec<&str> = sessions
        .iter()
        .find(|s| !s.accuracy.is_empty())
        .map(|s| s.accuracy.iter().map(|a| a.0).collect())
        .unwrap_or_default();
    let _ = write!(md, "| monitor | direction |");
    for l in &labels {
        let _ = write!(md, " {l} |");
    }
    let _ = write!(md, "\n|---|---|");
    for _ in &labels {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    for &k in ctx.kinds.iter().filter(|k| **k != Kind::Baseline) {
        for (dir, name) in [(0, "sent"), (1, "received")] {
            let _ = write!(md, "| {} | {name} |", k.label());
            for l in &labels {
                let v: Vec<f64> = sessions
                    .iter()
                    .filter(|s| s.kind == k)
                    .filter_map(|s| s.accuracy.iter().find(|a| a.0 == *l))
                    .map(|a| if dir == 0 { a.1 } else { a.2 })
                    .collect();
                let _ = write!(md, " {} |", fmt(&v, ratio));
            }
            let _ = writeln!(md);
        }
    }
}

fn overhead_table(md: &mut String, ctx: &Context, sessions: &[Session]) {
    let _ = writeln!(
        md,
        "\n## Overhead on the workload and the monitor's own cost\n\nThe bulk transfer ({} MiB on loopback in 4 KiB \
         writes, client and server processes). Wall time and the workload's own CPU (both processes, getrusage) \
         are divided by the run without a monitor in the same repetition. The monitor's CPU is utime+stime from \
         `/proc/<pid>/stat` during the transfer, and over the whole session (start-up, all accuracy workloads, \
         and 2.5 s of idle at the end) as a share of one core; eBPF work done in the workload's context (netwatch ebpf, \
         bpftrace) shows up in the workload's CPU, not here. Peak RSS is `VmHWM` at the end of the session.\n\n\
         | monitor | wall ÷ no monitor | workload CPU ÷ no monitor | monitor CPU during transfer | monitor CPU, % of one core over the whole session | peak RSS | netwatch ebpf wall ÷ this | netwatch ebpf session CPU ÷ this monitor's |\n|---|---|---|---|---|---|---|---|",
        ctx.plan.transfer_bytes >> 20
    );
    for &k in &ctx.kinds {
        let wall = paired(sessions, k, Kind::Baseline, |s| s.wall);
        let cpu = paired(sessions, k, Kind::Baseline, |s| s.cpu);
        let mon = per_rep(sessions, k, |s| s.mon_cpu);
        let hwm = per_rep(sessions, k, |s| s.mon_hwm);
        let (vs_wall, vs_cpu) = if k == Kind::NetwatchEbpf || k == Kind::Baseline {
            ("—".to_string(), "—".to_string())
        } else {
            (
                fmt(&paired(sessions, Kind::NetwatchEbpf, k, |s| s.wall), ratio),
                fmt(
                    &paired(sessions, Kind::NetwatchEbpf, k, |s| s.mon_cpu_session),
                    ratio,
                ),
            )
        };
        let base = if k == Kind::Baseline {
            format!("{} absolute", fmt(&per_rep(sessions, k, |s| s.wall), secs))
        } else {
            fmt(&wall, pct)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            k.label(),
            base,
            if k == Kind::Baseline {
                fmt(&per_rep(sessions, k, |s| s.cpu), secs)
            } else {
                fmt(&cpu, pct)
            },
            if k == Kind::Baseline {
                "—".into()
            } else {
                fmt(&mon, secs)
            },
            if k == Kind::Baseline {
                "—".into()
            } else {
                fmt(
                    &per_rep(sessions, k, |s| s.mon_cpu_session / s.session_s),
                    |x| format!("{:.2}%", x * 100.0),
                )
            },
            if k == Kind::Baseline {
                "—".into()
            } else {
                fmt(&hwm, mib)
            },
            vs_wall,
            vs_cpu
        );
    }
}

fn scale_table(md: &mut String, ctx: &Context, scale: &[ScalePoint]) {
    let _ = writeln!(
        md,
        "\n## Scale\n\nThe agent at a 1 s interval while one process holds N open TCP sockets on loopback \
         (RLIMIT_NOFILE raised) with {} of them writing 64 B each second, or opens short connections \
         (100 B each) at a rate; \"idle\" is the agent while the workload holds no socket and moves nothing \
         (what it costs on a quiet server: the machine's own background traffic still counts; it starts once the TIME_WAIT sockets earlier rows left have expired, at most 70 s later). CPU is the agent's utime+stime over a {} s window ({} s idle; open-socket rows start it 2.5 s after the sockets exist, once their creation burst is over, which the connection-rate rows measure) divided by the window \
         (seconds per 1 s interval = fraction of one core). RSS is `VmRSS` at the end of the window, peak \
         `VmHWM`; map memory is the sum of `memlock` in `/proc/<agent>/fdinfo` over its BPF maps, each map once (a pinned agent holds some through several descriptors). \
         lost_records is the agent's own counter; exact = bytes attributed to the workload's pid ÷ truth.\n\n\
         | agent | open sockets | new conns/s (achieved) | CPU % of one core | RSS | peak RSS | map memory | lost_records | exact sent | exact received |\n|---|---|---|---|---|---|---|---|---|---|",
        ctx.plan.active_per_s, ctx.plan.window_s, ctx.plan.window_s * 5
    );
    let mut rows: Vec<(Kind, u64, u64)> =
        scale.iter().map(|p| (p.kind, p.sockets, p.rate)).collect();
    rows.dedup();
    let mut seen = Vec::new();
    for r in rows {
        if seen.contains(&r) {
            continue;
        }
        seen.push(r);
        let pts: Vec<&ScalePoint> = scale
            .iter()
            .filter(|p| (p.kind, p.sockets, p.rate) == r && p.error.is_none())
            .collect();
        let v = |f: &dyn Fn(&ScalePoint) -> f64| pts.iter().map(|p| f(p)).collect::<Vec<f64>>();
        let lost = pts.iter().map(|p| p.lost).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.0.label(),
            if r.1 == 0 && r.2 == 0 {
                "idle".into()
            } else if r.1 == 0 {
                "—".into()
            } else {
                r.1.to_string()
            },
            if r.2 == 0 {
                "—".into()
            } else {
                format!(
                    "{} ({})",
                    r.2,
                    fmt(&v(&|p| p.achieved), |x| format!("{x:.0}"))
                )
            },
            fmt(&v(&|p| p.cpu_per_interval), |x| format!(
                "{:.2}%",
                x * 100.0
            )),
            fmt(&v(&|p| p.rss), mib),
            fmt(&v(&|p| p.hwm), mib),
            fmt(&v(&|p| p.memlock), mib),
            lost,
            fmt(&v(&|p| p.exact_tx), ratio),
            fmt(&v(&|p| p.exact_rx), ratio),
        );
    }
}

fn cost_table(md: &mut String, ctx: &Context, cost: &Cost) {
    let _ = writeln!(
        md,
        "\n## Per-event kernel cost\n\n`run_time_ns ÷ run_cnt` with `kernel.bpf_stats_enabled=1`, for each netwatch \
         program (the `bpf_cost` example, tier `{}`, {} TCP writes of 1 KiB and {} UDP datagrams, then {} \
         connections accepted and reset by their server with `SO_LINGER` 0 and {} connects refused by a closed \
         port: the state changes, connect results and resets; and for `tp_tcp_retransmit_skb` as many KiB over \
         TCP through a 3% loss that nftables makes in a network namespace of the run's own) and, in the same \
         run and on the same tracepoints, for the bpftrace one-liner (from `/proc/<bpftrace>/fdinfo` of its program \
         fds; names from `bpftool prog show`). Both see every event on the host during the window, other \
         processes' too.\n\n| program | ns per event |\n|---|---|",
        cost.tier,
        ctx.plan.calls,
        ctx.plan.calls,
        ctx.plan.calls / 50,
        ctx.plan.calls / 50
    );
    for (name, v) in &cost.netwatch {
        let _ = writeln!(
            md,
            "| netwatch `{name}` | {} |",
            fmt(v, |x| format!("{x:.0}"))
        );
    }
    for (name, v) in &cost.bpftrace {
        let _ = writeln!(
            md,
            "| bpftrace `{name}` | {} |",
            fmt(v, |x| format!("{x:.0}"))
        );
    }
    for n in &cost.notes {
        let _ = writeln!(md, "\nNote: {n}");
    }
}

fn raw_json(
    root: &Path,
    ctx: &Context,
    sessions: &[Session],
    scale: &[ScalePoint],
    cost: &Cost,
    cold: &BTreeMap<Kind, Vec<f64>>,
) -> Result<()> {
    let j = json!({
        "command": ctx.command,
        "started": ctx.started,
        "load": ctx.load,
        "machine": ctx.machine,
        "sessions": sessions.iter().map(|s| json!({
            "monitor": s.kind.label(), "rep": s.rep, "wall_s": s.wall, "cpu_s": s.cpu,
            "monitor_cpu_s": s.mon_cpu, "monitor_cpu_session_s": s.mon_cpu_session, "session_s": s.session_s, "monitor_hwm": s.mon_hwm, "error": s.error,
            "accuracy": s.accuracy.iter().map(|a| json!({"workload": a.0, "tx": a.1, "rx": a.2})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "scale": scale.iter().map(|p| json!({
            "agent": p.kind.label(), "sockets": p.sockets, "rate": p.rate, "rep": p.rep,
            "cpu_per_interval_s": p.cpu_per_interval, "rss": p.rss, "hwm": p.hwm, "map_memlock": p.memlock,
            "lost_records": p.lost, "exact_tx": p.exact_tx, "exact_rx": p.exact_rx,
            "achieved_per_s": p.achieved, "error": p.error,
        })).collect::<Vec<_>>(),
        "bpf_cost": {"tier": cost.tier, "netwatch": cost.netwatch, "bpftrace": cost.bpftrace, "notes": cost.notes},
        "cold_start_s": cold.iter().map(|(k, v)| (k.label().to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
    });
    // serde_json writes NaN as null.
    std::fs::write(
        root.join("bench/results.json"),
        serde_json::to_string_pretty(&j)?,
    )
    .context("writing bench/results.json")
}

type DynErr = Box<dyn std::error::Error + Send + Sync>;

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

fn slowdown_plot(path: &Path, ctx: &Context, sessions: &[Session]) -> Result<()> {
    let bars: Vec<(String, (f64, f64, f64))> = ctx
        .kinds
        .iter()
        .filter(|k| **k != Kind::Baseline)
        .filter_map(|&k| {
            let v: Vec<f64> = paired(sessions, k, Kind::Baseline, |s| s.wall)
                .into_iter()
                .map(|r| (r - 1.0) * 100.0)
                .collect();
            Some((k.slug().to_string(), summary(&v)?))
        })
        .collect();
    if bars.is_empty() {
        return Ok(());
    }
    let lo = bars.iter().map(|b| b.1 .1).fold(0.0f64, f64::min) - 5.0;
    let hi = bars.iter().map(|b| b.1 .2).fold(0.0f64, f64::max) + 10.0;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    let r: std::result::Result<(), DynErr> = (|| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Bulk loopback transfer: wall-time slowdown per monitor (median, min-max bar)",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(10)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..(bars.len() as f64 - 0.5), lo..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("% slower than no monitor")
            .draw()?;
        for (i, (name, (med, mn, mx))) in bars.iter().enumerate() {
            let x = i as f64;
            let color = if name.starts_with("nw-") { BLUE } else { RED };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, *med)],
                color.mix(0.6).filled(),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, *mn), (x, *mx)],
                BLACK.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{name} {med:+.1}%"),
                (x - 0.45, hi - (hi - lo) * 0.04 * (1 + i % 2) as f64),
                ("sans-serif", 13),
            )))?;
        }
        root.present()?;
        Ok(())
    })();
    r.map_err(plot_err)
}

fn scale_plots(dir: &Path, scale: &[ScalePoint]) -> Result<()> {
    let series = |rate: bool| -> Vec<(f64, f64, f64)> {
        let mut xs: Vec<u64> = scale
            .iter()
            .filter(|p| p.kind == Kind::NetwatchEbpf && p.error.is_none())
            .map(|p| if rate { p.rate } else { p.sockets })
            .filter(|x| *x > 0)
            .collect();
        xs.sort();
        xs.dedup();
        xs.into_iter()
            .filter_map(|x| {
                let pts: Vec<&ScalePoint> = scale
                    .iter()
                    .filter(|p| {
                        p.kind == Kind::NetwatchEbpf
                            && p.error.is_none()
                            && (if rate { p.rate } else { p.sockets }) == x
                    })
                    .collect();
                let cpu: Vec<f64> = pts.iter().map(|p| p.cpu_per_interval * 100.0).collect();
                let rss: Vec<f64> = pts.iter().map(|p| p.hwm / 1048576.0).collect();
                Some((x as f64, summary(&cpu)?.0, summary(&rss)?.0))
            })
            .collect()
    };
    for (rate, file, xdesc) in [
        (false, "scale_sockets.svg", "open sockets (500 active/s)"),
        (true, "scale_rate.svg", "new connections per second"),
    ] {
        let pts = series(rate);
        if pts.is_empty() {
            continue;
        }
        let path = dir.join(file);
        let xmin = pts.first().map(|p| p.0).unwrap_or(1.0) * 0.8;
        let xmax = pts.last().map(|p| p.0).unwrap_or(10.0) * 1.25;
        let cmax = pts.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.2;
        let rmax = pts.iter().map(|p| p.2).fold(1.0f64, f64::max) * 1.2;
        let root = SVGBackend::new(&path, (900, 420)).into_drawing_area();
        let r: std::result::Result<(), DynErr> = (|| {
            root.fill(&WHITE)?;
            let (l, rgt) = root.split_horizontally(450);
            for (area, is_cpu) in [(l, true), (rgt, false)] {
                let ymax = if is_cpu { cmax } else { rmax };
                let mut chart = ChartBuilder::on(&area)
                    .caption(
                        if is_cpu {
                            "agent CPU, % of one core"
                        } else {
                            "agent peak RSS, MiB"
                        },
                        ("sans-serif", 16),
                    )
                    .margin(12)
                    .x_label_area_size(40)
                    .y_label_area_size(50)
                    .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)?;
                chart.configure_mesh().x_desc(xdesc).draw()?;
                let data: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.0, if is_cpu { p.1 } else { p.2 }))
                    .collect();
                chart.draw_series(LineSeries::new(data.clone(), BLUE.stroke_width(2)))?;
                chart.draw_series(
                    data.iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, BLUE.filled())),
                )?;
            }
            root.present()?;
            Ok(())
        })();
        r.map_err(plot_err)?;
    }
    Ok(())
}
