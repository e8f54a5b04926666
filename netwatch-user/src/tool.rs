//! Runs one external tool with a deadline and keeps what it printed: the one
//! way netwatch starts a child process (`ss`; lsof, nettop and netstat on
//! macOS). It never interprets the output, never leaves a child running
//! past its deadline, and never looks a program up in `PATH`: the agent may
//! hold capabilities, so a program is an absolute path, found with
//! [`system_tool`] in a fixed list of system directories.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// More than this on stdout is refused unless the caller sets another
/// limit (a busy Mac's lsof prints a few MB).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// The longest pause between two looks at whether the tool has exited.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Where [`system_tool`] looks, in order. Never `PATH`.
pub const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The absolute path of the system tool `name`: the first of
/// [`SYSTEM_DIRS`] holding a regular file of that name that is owned by
/// root and writable by nobody else (a tool the agent may run while it
/// holds capabilities). `/sbin` → `/usr/sbin` symlinks are followed.
pub fn system_tool(name: &str) -> Result<PathBuf, ToolError> {
    system_tool_in(name, SYSTEM_DIRS)
}

/// [`system_tool`] over the given directories.
pub fn system_tool_in(name: &str, dirs: &[&str]) -> Result<PathBuf, ToolError> {
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if !plain {
        return Err(ToolError::NotAbsolute {
            program: PathBuf::from(name),
        });
    }
    for dir in dirs {
        let path = Path::new(dir).join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                return Err(ToolError::Unsafe {
                    program: path,
                    uid: meta.uid(),
                    mode: meta.mode() & 0o7777,
                });
            }
        }
        return Ok(path);
    }
    Err(ToolError::NotFound {
        program: PathBuf::from(format!("{name} (looked in {})", dirs.join(", "))),
    })
}

/// Why running a tool gave no output to use. Each variant names the program.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("refusing to run {program}: not an absolute path (tools are never looked up in PATH)")]
    NotAbsolute { program: PathBuf },
    #[error("refusing to run {program}: owned by uid {uid} with mode {mode:o}; a tool run with privileges must be owned by root and writable by nobody else")]
    Unsafe {
        program: PathBuf,
        uid: u32,
        mode: u32,
    },
    #[error("running {program}: not found; install it or give the path to it")]
    NotFound { program: PathBuf },
    #[error("starting {program}: {error}")]
    Spawn { program: PathBuf, error: io::Error },
    #[error("waiting for {program} to exit: {error}; killed it")]
    Wait { program: PathBuf, error: io::Error },
    #[error("running {program}: no result within {timeout:?}, killed it (raise the timeout on a busy host)")]
    Timeout { program: PathBuf, timeout: Duration },
    #[error("running {program}: printed more than {limit_bytes} bytes, refusing to keep it")]
    TooMuchOutput { program: PathBuf, limit_bytes: u64 },
    #[error("reading the output of {program}: {error}")]
    Read { program: PathBuf, error: io::Error },
}

/// What a tool printed, and how it exited.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// Empty when the tool printed more than the output limit on stderr.
    pub stderr: Vec<u8>,
}

impl ToolOutput {
    /// stderr, trimmed, cut to 300 characters and escaped
    /// ([`crate::text::visible`]): fit for an error message or a log line.
    pub fn stderr_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        crate::text::visible(text.trim(), 300).into_owned()
    }
}

/// One run of a tool: `program args…` with stdin closed and `env` added to
/// the inherited environment, killed after `timeout`, with at most
/// `max_output_bytes` of stdout kept.
///
/// ```no_run
/// use std::path::Path;
/// use std::time::Duration;
/// use netwatch::tool::ToolCommand;
///
/// let out = ToolCommand::new(Path::new("/usr/sbin/lsof"), &["-i", "-n"], Duration::from_secs(10))
///     .env(&[("LC_ALL", "C")])
///     .run()?;
/// assert!(out.status.success());
/// # Ok::<(), netwatch::tool::ToolError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ToolCommand<'a> {
    program: &'a Path,
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    timeout: Duration,
    max_output_bytes: Option<u64>,
}

impl<'a> ToolCommand<'a> {
    /// `program args…`, with no added environment and the
    /// [`DEFAULT_MAX_OUTPUT_BYTES`] limit.
    pub fn new(program: &'a Path, args: &'a [&'a str], timeout: Duration) -> Self {
        Self {
            program,
            args,
            env: &[],
            timeout,
            max_output_bytes: Some(DEFAULT_MAX_OUTPUT_BYTES),
        }
    }

    /// Add these variables to the environment the tool inherits.
    pub fn env(mut self, env: &'a [(&'a str, &'a str)]) -> Self {
        self.env = env;
        self
    }

    /// Refuse stdout longer than this, and drop stderr longer than this
    /// (`None`: keep everything, however much).
    pub fn max_output_bytes(mut self, limit: Option<u64>) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// Run the tool and wait for it, up to the timeout. A program that is
    /// not an absolute path is refused.
    pub fn run(&self) -> Result<ToolOutput, ToolError> {
        if !self.program.is_absolute() {
            return Err(ToolError::NotAbsolute {
                program: self.program.to_path_buf(),
            });
        }
        let mut child = Command::new(self.program)
            .args(self.args)
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => ToolError::NotFound {
                    program: self.program.to_path_buf(),
                },
                _ => ToolError::Spawn {
                    program: self.program.to_path_buf(),
                    error: source,
                },
            })?;
        // Read both pipes while waiting: a child blocked on a full pipe never exits.
        let stdout = child.stdout.take().map(|p| drain(p, self.max_output_bytes));
        let stderr = child.stderr.take().map(|p| drain(p, self.max_output_bytes));
        let status = self.wait(&mut child)?;
        let (stdout, stderr) = (self.collect(stdout)?, self.collect(stderr)?);
        let stdout = match stdout {
            Drained::Kept(bytes) => bytes,
            Drained::Overflowed { limit_bytes } => {
                return Err(ToolError::TooMuchOutput {
                    program: self.program.to_path_buf(),
                    limit_bytes,
                })
            }
        };
        let stderr = match stderr {
            Drained::Kept(bytes) => bytes,
            Drained::Overflowed { .. } => Vec::new(),
        };
        Ok(ToolOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Wait for `child` until the deadline. Out of time, or when waiting
    /// fails, kill and reap it; the reader threads end when the pipes close.
    fn wait(&self, child: &mut Child) -> Result<ExitStatus, ToolError> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let waited = child.try_wait();
            let now = Instant::now();
            let error = match waited {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if now < deadline => {
                    thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(MAX_POLL_INTERVAL);
                    continue;
                }
                Ok(None) => ToolError::Timeout {
                    program: self.program.to_path_buf(),
                    timeout: self.timeout,
                },
                Err(source) => ToolError::Wait {
                    program: self.program.to_path_buf(),
                    error: source,
                },
            };
            // Killing our own child by its handle; it may have just exited.
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
    }

    /// What a reader thread read.
    fn collect(
        &self,
        reader: Option<JoinHandle<io::Result<Drained>>>,
    ) -> Result<Drained, ToolError> {
        let Some(reader) = reader else {
            return Ok(Drained::Kept(Vec::new()));
        };
        reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("output reader thread panicked")))
            .map_err(|source| ToolError::Read {
                program: self.program.to_path_buf(),
                error: source,
            })
    }
}

/// One pipe, read to its end.
#[derive(Debug)]
enum Drained {
    Kept(Vec<u8>),
    /// More than the limit came; all of it was read and dropped.
    Overflowed {
        limit_bytes: u64,
    },
}

/// Read a pipe to its end on a thread, so a full pipe never blocks the
/// child: keep up to `limit` bytes, and past it read on but keep nothing.
fn drain<R: Read + Send + 'static>(
    mut pipe: R,
    limit: Option<u64>,
) -> JoinHandle<io::Result<Drained>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let Some(limit_bytes) = limit else {
            pipe.read_to_end(&mut bytes)?;
            return Ok(Drained::Kept(bytes));
        };
        (&mut pipe)
            .take(limit_bytes.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit_bytes {
            drop(bytes);
            io::copy(&mut pipe, &mut io::sink())?;
            return Ok(Drained::Overflowed { limit_bytes });
        }
        Ok(Drained::Kept(bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: &str = "/bin/sh";

    #[test]
    fn captures_stdout_stderr_and_status() {
        let out = ToolCommand::new(
            Path::new(SH),
            &[
                "-c",
                "printf 'a\\nb'; echo oops >&2; echo \"$NW_TEST\"; exit 3",
            ],
            Duration::from_secs(10),
        )
        .env(&[("NW_TEST", "env-ok")])
        .run()
        .unwrap();
        assert_eq!(out.stdout, b"a\nbenv-ok\n");
        assert_eq!(out.stderr_excerpt(), "oops");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn stderr_excerpt_is_escaped_and_capped() {
        let out = ToolCommand::new(
            Path::new(SH),
            &[
                "-c",
                "printf '\\033[2J\\rroot\\007\\n' >&2; head -c 100000 /dev/zero | tr '\\0' x >&2",
            ],
            Duration::from_secs(10),
        )
        .run()
        .unwrap();
        let excerpt = out.stderr_excerpt();
        assert!(
            excerpt.starts_with("\\x1b[2J\\rroot\\x07\\nxxx"),
            "{excerpt}"
        );
        // 300 characters of the original, then `…`.
        assert_eq!(excerpt.chars().count(), 300 + 8 + 1, "{excerpt}");
    }

    #[test]
    fn a_relative_program_is_refused_never_looked_up_in_path() {
        let err = ToolCommand::new(Path::new("sh"), &["-c", "true"], Duration::from_secs(5))
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::NotAbsolute { .. }), "{err}");
        for bad in ["", "sh/..", "../sh", ".", ".."] {
            let err = system_tool(bad).unwrap_err();
            assert!(
                matches!(err, ToolError::NotAbsolute { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn system_tools_come_from_the_fixed_directories_only() {
        let sh = system_tool("sh").unwrap();
        assert!(
            SYSTEM_DIRS.iter().any(|d| sh.starts_with(d)),
            "{}",
            sh.display()
        );
        let err = system_tool("netwatch-no-such-tool").unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
        assert!(
            err.to_string().contains("/usr/sbin, /usr/bin, /sbin, /bin"),
            "{err}"
        );
        // A tool others can write is refused, not run.
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o777)).unwrap();
        let d = dir.path().to_str().unwrap();
        let err = system_tool_in("tool", &[d]).unwrap_err();
        assert!(matches!(err, ToolError::Unsafe { .. }), "{err}");
    }

    #[test]
    fn a_missing_tool_says_so() {
        let err = ToolCommand::new(Path::new("/nonexistent/lsof"), &[], Duration::from_secs(1))
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/lsof"), "{err}");
    }

    #[test]
    fn a_slow_tool_is_killed_at_the_deadline() {
        let started = Instant::now();
        let err = ToolCommand::new(
            Path::new(SH),
            &["-c", "exec sleep 30"],
            Duration::from_millis(200),
        )
        .run()
        .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                ToolError::Timeout { timeout, .. } if timeout == Duration::from_millis(200)
            ),
            "{err}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn output_larger_than_a_pipe_buffer_does_not_deadlock() {
        // 1 MiB on stdout and stderr each: both pipes must be read while waiting.
        let script = [
            "-c",
            "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2",
        ];
        for limit in [Some(DEFAULT_MAX_OUTPUT_BYTES), None] {
            let out = ToolCommand::new(Path::new(SH), &script, Duration::from_secs(20))
                .max_output_bytes(limit)
                .run()
                .unwrap();
            assert_eq!(out.stdout.len(), 1 << 20, "limit {limit:?}");
            assert_eq!(out.stderr.len(), 1 << 20, "limit {limit:?}");
        }
    }

    #[test]
    fn stdout_over_the_limit_is_refused_and_stderr_over_it_dropped() {
        let run = |script: &str| {
            ToolCommand::new(Path::new(SH), &["-c", script], Duration::from_secs(20))
                .max_output_bytes(Some(10))
                .run()
        };
        let out = run("printf 0123456789; printf 0123456789 >&2").unwrap();
        assert_eq!((out.stdout.len(), out.stderr.len()), (10, 10));
        // One byte more on stdout, after a pipe buffer's worth on stderr.
        let err = run("head -c 1048576 /dev/zero >&2; printf 0123456789x").unwrap_err();
        assert!(
            matches!(
                err,
                ToolError::TooMuchOutput {
                    limit_bytes: 10,
                    ..
                }
            ),
            "{err}"
        );
        let out = run("printf ok; printf 0123456789x >&2").unwrap();
        assert_eq!((out.stdout.as_slice(), out.stderr.len()), (&b"ok"[..], 0));
    }
}
