//! Runs one external tool with a time limit and keeps what it printed. It
//! never interprets the output, and never leaves a child running past its
//! time limit.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::MacError;

/// What a tool printed, and how it exited.
#[derive(Debug)]
pub(crate) struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ToolOutput {
    /// stderr, trimmed and cut to a length fit for an error message.
    pub fn stderr_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text.to_string(),
        }
    }
}

/// More than this on stdout is refused (a busy host's lsof prints a few MB).
pub(crate) const MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// Run `tool args…` with stdin closed and `env` added; kill it after `timeout`.
pub(crate) fn run(
    tool: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<ToolOutput, MacError> {
    let mut child = Command::new(tool)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => MacError::ToolMissing {
                tool: tool.to_path_buf(),
            },
            _ => MacError::Spawn {
                tool: tool.to_path_buf(),
                source,
            },
        })?;
    // Read both pipes while waiting: a child blocked on a full pipe never exits.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
            }
            waited => {
                // Out of time, or waiting failed: make sure it is gone. The
                // reader threads end when the pipes close.
                let _ = child.kill();
                let _ = child.wait();
                return Err(match waited {
                    Err(source) => MacError::Spawn {
                        tool: tool.to_path_buf(),
                        source,
                    },
                    _ => MacError::Timeout {
                        tool: tool.to_path_buf(),
                        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    },
                });
            }
        }
    };
    let collect = |h: Option<JoinHandle<io::Result<Drained>>>| -> Result<Drained, MacError> {
        let joined = h.map(|h| h.join());
        match joined {
            None => Ok(Drained::default()),
            Some(Ok(Ok(d))) => Ok(d),
            Some(Ok(Err(source))) => Err(MacError::Spawn {
                tool: tool.to_path_buf(),
                source,
            }),
            Some(Err(_)) => Err(MacError::Spawn {
                tool: tool.to_path_buf(),
                source: io::Error::other("output reader thread panicked"),
            }),
        }
    };
    let stdout = collect(stdout)?;
    let stderr = collect(stderr)?;
    if stdout.overflowed {
        return Err(MacError::TooMuchOutput {
            tool: tool.to_path_buf(),
            limit_bytes: MAX_OUTPUT_BYTES,
        });
    }
    Ok(ToolOutput {
        status,
        stdout: stdout.bytes,
        stderr: stderr.bytes,
    })
}

#[derive(Debug, Default)]
struct Drained {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// Read a pipe to its end on a thread: keep up to the limit, discard the rest.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<io::Result<Drained>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        (&mut pipe)
            .take(MAX_OUTPUT_BYTES + 1)
            .read_to_end(&mut bytes)?;
        let overflowed = bytes.len() as u64 > MAX_OUTPUT_BYTES;
        if overflowed {
            bytes.truncate(0);
            io::copy(&mut pipe, &mut io::sink())?;
        }
        Ok(Drained { bytes, overflowed })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: &str = "/bin/sh";

    #[test]
    fn captures_stdout_stderr_and_status() {
        let out = run(
            Path::new(SH),
            &[
                "-c",
                "printf 'a\\nb'; echo oops >&2; echo \"$NW_TEST\"; exit 3",
            ],
            &[("NW_TEST", "env-ok")],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, b"a\nbenv-ok\n");
        assert_eq!(out.stderr_excerpt(), "oops");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_missing_tool_says_so() {
        let err = run(
            Path::new("/nonexistent/lsof"),
            &[],
            &[],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, MacError::ToolMissing { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/lsof"), "{err}");
    }

    #[test]
    fn a_slow_tool_is_killed_at_the_deadline() {
        let started = Instant::now();
        let err = run(
            Path::new(SH),
            &["-c", "exec sleep 30"],
            &[],
            Duration::from_millis(200),
        )
        .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                MacError::Timeout {
                    timeout_ms: 200,
                    ..
                }
            ),
            "{err}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn output_larger_than_a_pipe_buffer_does_not_deadlock() {
        // 1 MiB on stdout and stderr each: both pipes must be read while waiting.
        let out = run(
            Path::new(SH),
            &[
                "-c",
                "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2",
            ],
            &[],
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(out.stdout.len(), 1 << 20);
        assert_eq!(out.stderr.len(), 1 << 20);
    }
}
