//! Boots QEMU (software emulation only: KVM hangs on the hosts we use) and
//! feeds its serial console, line by line, to the log file, to stdout and to
//! the console parser, killing QEMU at the deadline. Never judges the run by
//! QEMU's exit status: that says nothing about the guest.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::console::{clean_line, ConsoleParser, ParsedConsole, QemuEnd};
use crate::host;

/// How long QEMU may keep running after the guest printed its summary.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);

/// One QEMU boot.
pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Print each console line to stdout as it arrives.
    pub echo: bool,
    pub log: &'a Path,
}

/// What a boot produced.
pub struct Booted {
    pub parsed: ParsedConsole,
    /// From spawning QEMU to its exit (or kill).
    pub elapsed: Duration,
}

impl Boot<'_> {
    fn command(&self) -> Command {
        let mut cmd = Command::new(self.qemu);
        cmd.args(["-accel", "tcg", "-cpu", "max"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"]);
        cmd
    }

    /// Runs QEMU to the end, feeding `parser`; returns the parsed console.
    pub fn run(&self, mut parser: ConsoleParser) -> Result<Booted> {
        let mut log = File::create(self.log)
            .with_context(|| format!("creating console log {}", self.log.display()))?;
        let mut cmd = self.command();
        let line = host::command_line(&cmd);
        writeln!(log, "# {line}")?;
        let started = Instant::now();
        let mut child = KillOnDrop(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting `{line}` (is qemu-system-x86 installed?)"))?,
        );
        let stdout = child
            .0
            .stdout
            .take()
            .context("QEMU's stdout was not piped")?;
        let stderr = child
            .0
            .stderr
            .take()
            .context("QEMU's stderr was not piped")?;

        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let reader = thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let mut raw = Vec::new();
                match stdout.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send((Instant::now(), raw)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });

        let mut on_line = |at: Instant, raw: &[u8], parser: &mut ConsoleParser| -> Result<()> {
            log.write_all(raw)
                .with_context(|| format!("writing {}", self.log.display()))?;
            let line = clean_line(raw);
            if self.echo {
                // A closed stdout must not stop the run.
                let _ = writeln!(std::io::stdout().lock(), "guest| {line}");
            }
            parser.feed(&line, at.saturating_duration_since(started));
            Ok(())
        };

        let deadline = started + self.timeout;
        let mut poweroff_by: Option<Instant> = None;
        let end = loop {
            let limit = poweroff_by.map_or(deadline, |p| p.min(deadline));
            let now = Instant::now();
            if now >= limit {
                kill(&mut child.0);
                break if poweroff_by.is_some_and(|p| p < deadline) {
                    QemuEnd::KilledAfterSummary
                } else {
                    QemuEnd::TimedOut {
                        after: self.timeout,
                    }
                };
            }
            match rx.recv_timeout(limit - now) {
                Ok((at, raw)) => {
                    on_line(at, &raw, &mut parser)?;
                    if parser.summary_seen() && poweroff_by.is_none() {
                        poweroff_by = Some(Instant::now() + POWEROFF_GRACE);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The console closed: QEMU is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    wait_briefly(&mut child.0);
                    break QemuEnd::Exited;
                }
            }
        };
        let elapsed = started.elapsed();
        let _ = reader.join();
        // Lines read before the kill still count.
        while let Ok((at, raw)) = rx.try_recv() {
            on_line(at, &raw, &mut parser)?;
        }
        let stderr_text = stderr_reader.join().unwrap_or_default();
        if !stderr_text.trim().is_empty() {
            eprintln!("xtask vm: QEMU said on stderr:\n{stderr_text}");
            writeln!(log, "\n# QEMU stderr:\n{stderr_text}")?;
        }
        Ok(Booted {
            parsed: parser.finish(end),
            elapsed,
        })
    }
}

/// Kills QEMU if the run ends early (an error, a panic), so none is left behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill(&mut self.0);
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to five seconds for QEMU to exit after its console closed, then kills it.
fn wait_briefly(child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    kill(child);
}

/// The QEMU binary, installed from Debian's `qemu-system-x86` when missing.
pub fn qemu_binary() -> Result<PathBuf> {
    host::ensure_tool("qemu-system-x86_64", "qemu-system-x86")
}
