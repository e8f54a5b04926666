//! `cargo xtask fuzz`: builds the `cargo fuzz` (libFuzzer) targets of
//! `fuzz/` (one per parser of outside input) and runs each for a given time
//! over its seed corpus (`fuzz/corpus/<target>/`) and the crash inputs kept
//! as regression tests (`netwatch-user/tests/fixtures/fuzz/<target>/`),
//! then prints a table (target, seconds, executions, crashes) and fails if
//! any target crashed. `--corpus-only` runs every committed input once and
//! stops (what `cargo xtask test` does). It never writes into the committed
//! corpora: new inputs go to `target/fuzz/corpus/<target>/`, crash inputs
//! to `target/fuzz/artifacts/<target>/`.
//!
//! The targets build with the stable toolchain (`RUSTC_BOOTSTRAP=1` lets
//! cargo-fuzz pass its flags) and without a sanitizer (safe Rust: a bug is
//! a panic, which libFuzzer catches; overflow checks and debug assertions
//! are on), against the agent's library built without its BPF object
//! (`AYA_BUILD_SKIP=1`: no parser needs it, and no fuzzing flag can then
//! reach the nested BPF build).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds each target fuzzes (libFuzzer `-max_total_time`).
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Run each committed corpus and regression input once, then stop (no
    /// fuzzing; `--time` is ignored). What `cargo xtask test` runs.
    #[arg(long)]
    pub corpus_only: bool,
    /// Targets run side by side (each under `nice`).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// `nice` adjustment for the fuzzing processes.
    #[arg(long, default_value_t = 10)]
    pub nice: i32,
    /// Targets to run (default: all of them).
    pub targets: Vec<String>,
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRun {
    pub target: String,
    pub seconds: f64,
    /// Inputs executed (libFuzzer `stat::number_of_executed_units`).
    pub executions: u64,
    /// Crashing inputs found (libFuzzer stops at the first).
    pub crashes: u64,
    /// Where the crashing input was written, if any.
    pub artifact: Option<PathBuf>,
}

fn root() -> PathBuf {
    crate::vm::workspace_root()
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn target_dir() -> PathBuf {
    root().join("target").join("fuzz")
}

/// The committed seed corpus of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// The crash inputs of `target` kept as regression tests.
pub fn regressions_dir(target: &str) -> PathBuf {
    root()
        .join("netwatch-user/tests/fixtures/fuzz")
        .join(target)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo fuzz` with what building against this workspace needs.
fn cargo_fuzz() -> Command {
    let mut cmd = cargo();
    cmd.arg("fuzz")
        .current_dir(root())
        // cargo-fuzz passes `-Z` flags; the stable compiler takes them so.
        .env("RUSTC_BOOTSTRAP", "1")
        // The agent's build script then builds no BPF object (none of the
        // parsers needs one), so no fuzzing flag reaches the nested build.
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    // What `cargo run` sets for xtask itself: ring's build script reruns
    // when CARGO_MANIFEST_DIR changes, and with it every crate above ring,
    // so a build from xtask and one from a shell would each rebuild.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Every target `fuzz/Cargo.toml` declares.
pub fn list_targets() -> Result<Vec<String>> {
    let out = cargo_fuzz()
        .args(["list", "--fuzz-dir"])
        .arg(fuzz_dir())
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Build the targets (release, debug assertions and overflow checks on, no
/// sanitizer) into `target/fuzz`.
pub fn build(targets: &[String]) -> Result<()> {
    let mut cmd = cargo_fuzz();
    cmd.args(["build", "--sanitizer", "none", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(target_dir());
    if targets.len() == 1 {
        cmd.arg(&targets[0]);
    }
    eprintln!(
        "xtask fuzz: building {} target(s): {}",
        targets.len(),
        crate::host::command_line(&cmd)
    );
    let status = cmd.status().context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status}); see the output above");
    }
    Ok(())
}

fn binary(target: &str) -> PathBuf {
    target_dir()
        .join("x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// The committed inputs of `target`: seeds, then regression inputs.
fn committed_inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [corpus_dir(target), regressions_dir(target)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut these: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            these.sort();
            files.extend(these);
        }
    }
    files
}

/// Run one target: fuzz for `secs`, or (`secs == None`) run each committed
/// input once.
fn run_target(target: &str, secs: Option<u64>, nice: i32) -> Result<TargetRun> {
    let bin = binary(target);
    if !bin.exists() {
        bail!("{}: not built (cargo xtask fuzz builds it)", bin.display());
    }
    let artifacts = target_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let mut cmd = Command::new("nice");
    cmd.arg("-n").arg(nice.to_string()).arg(&bin);
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=20")
        .arg("-max_len=65536");
    match secs {
        Some(secs) => {
            let scratch = target_dir().join("corpus").join(target);
            std::fs::create_dir_all(&scratch)
                .with_context(|| format!("creating {}", scratch.display()))?;
            cmd.arg(format!("-max_total_time={secs}")).arg(&scratch);
            for dir in [corpus_dir(target), regressions_dir(target)] {
                if dir.is_dir() {
                    cmd.arg(dir);
                }
            }
        }
        None => {
            let inputs = committed_inputs(target);
            if inputs.is_empty() {
                bail!(
                    "{target}: no committed inputs under {}",
                    corpus_dir(target).display()
                );
            }
            cmd.args(inputs);
        }
    }
    let log_path = target_dir().join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let t = Instant::now();
    let status = cmd
        .current_dir(root())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    let seconds = t.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut run = parse_log(target, &text, seconds, secs.is_none());
    if !status.success() && run.crashes == 0 {
        run.crashes = 1;
    }
    if run.crashes > 0 {
        eprintln!(
            "xtask fuzz: {target} CRASHED ({status}); its log: {}\n{}",
            log_path.display(),
            tail(&text, 40)
        );
    }
    Ok(run)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Read a libFuzzer log: executions, crashes and the crash input's path.
/// `listed`: the inputs were given as files (one `Executed` line each).
pub fn parse_log(target: &str, text: &str, seconds: f64, listed: bool) -> TargetRun {
    let stat = |name: &str| {
        text.lines()
            .rev()
            .filter_map(|l| l.strip_prefix(name))
            .find_map(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
    };
    let executed_files = text
        .lines()
        .filter(|l| l.starts_with("Executed ") && l.contains(" in "))
        .count() as u64;
    let executions = if listed {
        executed_files
    } else {
        stat("stat::number_of_executed_units").unwrap_or(0)
    };
    let artifact = text.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| PathBuf::from(p.trim()))
    });
    let crashes = u64::from(
        artifact.is_some() || text.contains("==ERROR: libFuzzer") || text.contains("panicked at"),
    );
    TargetRun {
        target: target.to_string(),
        seconds,
        executions,
        crashes,
        artifact,
    }
}

/// The table printed at the end.
pub fn table(runs: &[TargetRun]) -> String {
    let mut s = String::from("| target | seconds | executions | crashes |\n|---|---:|---:|---:|\n");
    for r in runs {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {}{} |\n",
            r.target,
            r.seconds,
            r.executions,
            r.crashes,
            r.artifact
                .as_deref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default()
        ));
    }
    s
}

/// Build and run the targets `args` names (all by default); fails if any
/// crashed.
pub fn run(args: FuzzArgs) -> Result<Vec<TargetRun>> {
    crate::setup::ensure_cargo_fuzz()?;
    let all = list_targets()?;
    let targets = if args.targets.is_empty() {
        all.clone()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target `{t}` (targets: {})", all.join(", "));
            }
        }
        args.targets.clone()
    };
    build(&targets)?;
    let secs = (!args.corpus_only).then_some(args.time);
    eprintln!(
        "xtask fuzz: {} target(s), {} at a time, {}",
        targets.len(),
        args.jobs.max(1),
        match secs {
            Some(s) => format!("{s} s each"),
            None => "committed inputs only".into(),
        }
    );
    let mut runs = Vec::new();
    for group in targets.chunks(args.jobs.max(1)) {
        let results: Vec<Result<TargetRun>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|t| scope.spawn(move || run_target(t, secs, args.nice)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for r in results {
            let r = r?;
            eprintln!(
                "xtask fuzz: {}: {:.0} s, {} executions, {} crashes",
                r.target, r.seconds, r.executions, r.crashes
            );
            runs.push(r);
        }
    }
    println!("{}", table(&runs));
    let crashed: Vec<&str> = runs
        .iter()
        .filter(|r| r.crashes > 0)
        .map(|r| r.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz target(s) crashed: {}; the inputs are under {} (keep each as a regression \
             test under {} once fixed)",
            crashed.join(", "),
            target_dir().join("artifacts").display(),
            root().join("netwatch-user/tests/fixtures/fuzz").display()
        );
    }
    Ok(runs)
}

/// Wall time of a whole run, for `cargo xtask test`'s timings.
pub fn timed(args: FuzzArgs) -> Result<Duration> {
    let t = Instant::now();
    run(args)?;
    Ok(t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_fuzzing_log_gives_executions_and_no_crash() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   Done 123456 runs in 61 second(s)\nstat::number_of_executed_units: 123456\n\
                   stat::average_exec_per_sec:     2023\n";
        let r = parse_log("dns", log, 61.0, false);
        assert_eq!((r.executions, r.crashes, r.artifact), (123_456, 0, None));
    }

    #[test]
    fn a_crash_log_gives_the_artifact() {
        let log = "thread '<unnamed>' panicked at src/x.rs:1:1:\nboom\n==1== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='target/fuzz/artifacts/dns/'; Test unit written to target/fuzz/artifacts/dns/crash-abc\n\
                   stat::number_of_executed_units: 77\n";
        let r = parse_log("dns", log, 1.0, false);
        assert_eq!(r.crashes, 1);
        assert_eq!(r.executions, 77);
        assert_eq!(
            r.artifact.as_deref(),
            Some(Path::new("target/fuzz/artifacts/dns/crash-abc"))
        );
    }

    #[test]
    fn listed_inputs_count_one_execution_each() {
        let log = "Running: a\nExecuted a in 0 ms\nRunning: b\nExecuted b in 1 ms\n***\n";
        assert_eq!(parse_log("x", log, 0.1, true).executions, 2);
    }
}
