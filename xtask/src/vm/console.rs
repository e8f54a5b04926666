//! The console protocol between the guest's `/init` and the host: the marker
//! lines `/init` prints, and the parser that turns the serial console into
//! per-command results. Pure: no I/O, so every failure mode is unit-tested.
//! It must never trust a marker line that lacks this run's nonce.

use std::fmt;
use std::time::Duration;

/// Every marker line starts with this.
pub const PREFIX: &str = "NETWATCH-VM-";

/// The marker lines of one run. Each ends in ` (run <nonce>)`, so output
/// that merely mentions a marker cannot forge a result.
#[derive(Debug, Clone)]
pub struct Markers {
    nonce: String,
}

impl Markers {
    pub fn new(nonce: impl Into<String>) -> Self {
        Self {
            nonce: nonce.into(),
        }
    }

    /// A nonce for a fresh run, from the clock and the process id.
    pub fn fresh() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        Self::new(format!("{:08x}", (mixed ^ (mixed >> 29)) as u32))
    }

    fn suffix(&self) -> String {
        format!(" (run {})", self.nonce)
    }

    /// First line `/init` prints; `release` is a shell expression.
    pub fn booted(&self, release: &str) -> String {
        format!("{PREFIX}BOOTED kernel={release}{}", self.suffix())
    }
    /// Printed when a setup step (a mount, a sysctl) fails.
    pub fn setup_error(&self, what: &str) -> String {
        format!("{PREFIX}SETUP-ERROR {what}{}", self.suffix())
    }
    /// Printed once every kernel module of the run is loaded; `count` is
    /// a shell expression.
    pub fn modules_loaded(&self, count: &str) -> String {
        format!("{PREFIX}MODULES-LOADED count={count}{}", self.suffix())
    }
    /// Printed before a command runs.
    pub fn start(&self, name: &str) -> String {
        format!("{PREFIX}START {name}{}", self.suffix())
    }
    /// Printed after a command exits; `rc` is a shell expression.
    pub fn result(&self, name: &str, rc: &str) -> String {
        format!("{PREFIX}RESULT {name} rc={rc}{}", self.suffix())
    }
    /// The last line before power-off; arguments are shell expressions.
    pub fn summary(&self, passed: &str, failed: &str) -> String {
        format!(
            "{PREFIX}SUMMARY passed={passed} failed={failed}{}",
            self.suffix()
        )
    }

    /// Parses a cleaned console line. Returns the text before the marker
    /// (output that did not end in a newline) and the marker, or `None`
    /// when the line holds no marker of this run.
    fn parse<'a>(&self, line: &'a str) -> Option<(&'a str, Marker)> {
        let at = line.rfind(PREFIX)?;
        let (before, marker) = line.split_at(at);
        let body = marker[PREFIX.len()..].strip_suffix(self.suffix().as_str())?;
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        let marker = match kind {
            "BOOTED" => Marker::Booted {
                kernel_release: rest.strip_prefix("kernel=").unwrap_or(rest).to_string(),
            },
            "SETUP-ERROR" => Marker::SetupError {
                what: rest.to_string(),
            },
            "MODULES-LOADED" => Marker::ModulesLoaded {
                count: rest.strip_prefix("count=")?.parse().ok()?,
            },
            "START" => Marker::Start {
                name: rest.to_string(),
            },
            "RESULT" => {
                let (name, rc) = rest.rsplit_once(" rc=")?;
                Marker::Result {
                    name: name.to_string(),
                    rc: rc.parse().ok()?,
                }
            }
            "SUMMARY" => {
                let mut passed = None;
                let mut failed = None;
                for field in rest.split(' ') {
                    match field.split_once('=') {
                        Some(("passed", n)) => passed = n.parse().ok(),
                        Some(("failed", n)) => failed = n.parse().ok(),
                        _ => {}
                    }
                }
                Marker::Summary {
                    passed: passed?,
                    failed: failed?,
                }
            }
            _ => return None,
        };
        Some((before, marker))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Booted { kernel_release: String },
    SetupError { what: String },
    ModulesLoaded { count: usize },
    Start { name: String },
    Result { name: String, rc: i32 },
    Summary { passed: u32, failed: u32 },
}

/// What happened to one guest command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReport {
    /// The [`GuestCommand`](super::GuestCommand) name.
    pub name: String,
    /// Exit status; `None` if the command never finished (or never started).
    pub rc: Option<i32>,
    /// Everything the console showed between its start and result lines:
    /// the command's stdout and stderr, and any kernel messages meanwhile.
    pub output: String,
    /// Host-side time from QEMU start to the command's start line.
    pub started_at: Option<Duration>,
    /// Host-side time from the start line to the result line.
    pub duration: Option<Duration>,
}

impl CommandReport {
    pub fn passed(&self) -> bool {
        self.rc == Some(0)
    }
}

/// A reason a VM run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmFailure {
    /// The host killed QEMU after the run's timeout.
    Timeout { after: Duration },
    /// The kernel panicked (the line that said so).
    KernelPanic { line: String },
    /// The kernel reported a BUG, an Oops or a protection fault.
    KernelError { line: String },
    /// `/init` could not set up the guest (a mount or sysctl failed).
    SetupFailed { what: String },
    /// `/init` never printed its summary line.
    NoSummary,
    /// The guest printed its summary but did not power off.
    NoPoweroff,
    /// A command exited non-zero.
    CommandFailed { name: String, rc: i32 },
    /// A command started but printed no result line.
    CommandUnfinished { name: String },
    /// A command never started.
    CommandNotRun { name: String },
    /// The guest's own count disagrees with the host's.
    SummaryMismatch {
        guest_passed: u32,
        guest_failed: u32,
        host_passed: u32,
        host_failed: u32,
    },
}

impl fmt::Display for VmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { after } => write!(
                f,
                "timed out after {:.0} s; QEMU was killed (raise the timeout, or look for a hung test in the console log)",
                after.as_secs_f64()
            ),
            Self::KernelPanic { line } => write!(f, "kernel panic: {line}"),
            Self::KernelError { line } => write!(f, "kernel error: {line}"),
            Self::SetupFailed { what } => write!(f, "guest setup failed: {what}"),
            Self::NoSummary => write!(
                f,
                "the guest never printed its summary line (did /init crash or the kernel fail to boot? see the console log)"
            ),
            Self::NoPoweroff => write!(f, "the guest printed its summary but did not power off"),
            Self::CommandFailed { name, rc } => write!(f, "{name}: exited with rc={rc}"),
            Self::CommandUnfinished { name } => write!(f, "{name}: started but never finished"),
            Self::CommandNotRun { name } => write!(f, "{name}: never ran"),
            Self::SummaryMismatch {
                guest_passed,
                guest_failed,
                host_passed,
                host_failed,
            } => write!(
                f,
                "guest summary says passed={guest_passed} failed={guest_failed}, host saw passed={host_passed} failed={host_failed}"
            ),
        }
    }
}

/// How the QEMU process ended, as seen by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuEnd {
    /// QEMU exited by itself (power-off, or reboot after a panic).
    Exited,
    /// The host killed QEMU at the run's timeout.
    TimedOut { after: Duration },
    /// The summary was printed but QEMU was still running after a grace period.
    KilledAfterSummary,
}

/// The parsed console of one run.
#[derive(Debug, Clone, Default)]
pub struct ParsedConsole {
    pub kernel_release: Option<String>,
    /// Host-side time from QEMU start to `/init`'s first line.
    pub booted_at: Option<Duration>,
    /// Host-side time from QEMU start to the line saying the run's kernel
    /// modules are loaded, and how many; `None` when the run loads none.
    pub modules_loaded: Option<(Duration, usize)>,
    pub commands: Vec<CommandReport>,
    pub failures: Vec<VmFailure>,
}

/// Incremental console parser: feed it cleaned lines as they arrive.
#[derive(Debug)]
pub struct ConsoleParser {
    markers: Markers,
    expected: Vec<String>,
    parsed: ParsedConsole,
    current: Option<usize>,
    summary: Option<(u32, u32)>,
}

impl ConsoleParser {
    /// `expected` are the command names `/init` will run, in order.
    pub fn new(markers: Markers, expected: Vec<String>) -> Self {
        Self {
            markers,
            expected,
            parsed: ParsedConsole::default(),
            current: None,
            summary: None,
        }
    }

    /// Whether the summary line has been seen.
    pub fn summary_seen(&self) -> bool {
        self.summary.is_some()
    }

    /// Feeds one console line (already cleaned with [`clean_line`]) seen
    /// `at` after QEMU started.
    pub fn feed(&mut self, line: &str, at: Duration) {
        if let Some(kernel_line) = kernel_problem(line) {
            self.parsed.failures.push(kernel_line);
        }
        let Some((before, marker)) = self.markers.parse(line) else {
            self.append_output(line);
            return;
        };
        if !before.is_empty() {
            self.append_output(before);
        }
        match marker {
            Marker::Booted { kernel_release } => {
                self.parsed.kernel_release = Some(kernel_release);
                self.parsed.booted_at = Some(at);
            }
            Marker::SetupError { what } => {
                self.parsed.failures.push(VmFailure::SetupFailed { what });
            }
            Marker::ModulesLoaded { count } => {
                self.parsed.modules_loaded = Some((at, count));
            }
            Marker::Start { name } => {
                self.parsed.commands.push(CommandReport {
                    name,
                    rc: None,
                    output: String::new(),
                    started_at: Some(at),
                    duration: None,
                });
                self.current = Some(self.parsed.commands.len() - 1);
            }
            Marker::Result { name, rc } => {
                if let Some(i) = self.current.take() {
                    let cmd = &mut self.parsed.commands[i];
                    if cmd.name == name {
                        cmd.rc = Some(rc);
                        cmd.duration = cmd.started_at.map(|s| at.saturating_sub(s));
                    }
                }
            }
            Marker::Summary { passed, failed } => {
                self.current = None;
                self.summary = Some((passed, failed));
            }
        }
    }

    fn append_output(&mut self, text: &str) {
        if let Some(i) = self.current {
            let out = &mut self.parsed.commands[i].output;
            out.push_str(text);
            out.push('\n');
        }
    }

    /// Ends the run: checks every expected command ran and passed, the
    /// summary was printed and agrees, and QEMU ended by itself.
    pub fn finish(mut self, end: QemuEnd) -> ParsedConsole {
        let failures = &mut self.parsed.failures;
        match end {
            QemuEnd::Exited => {}
            QemuEnd::TimedOut { after } => failures.push(VmFailure::Timeout { after }),
            QemuEnd::KilledAfterSummary => failures.push(VmFailure::NoPoweroff),
        }
        for name in &self.expected {
            match self.parsed.commands.iter().find(|c| &c.name == name) {
                None => failures.push(VmFailure::CommandNotRun { name: name.clone() }),
                Some(CommandReport { rc: None, .. }) => {
                    failures.push(VmFailure::CommandUnfinished { name: name.clone() })
                }
                Some(CommandReport { rc: Some(rc), .. }) if *rc != 0 => {
                    failures.push(VmFailure::CommandFailed {
                        name: name.clone(),
                        rc: *rc,
                    })
                }
                Some(_) => {}
            }
        }
        match self.summary {
            None => failures.push(VmFailure::NoSummary),
            Some((guest_passed, guest_failed)) => {
                let host_passed = self.parsed.commands.iter().filter(|c| c.passed()).count() as u32;
                let host_failed = self.parsed.commands.len() as u32 - host_passed;
                if (guest_passed, guest_failed) != (host_passed, host_failed) {
                    failures.push(VmFailure::SummaryMismatch {
                        guest_passed,
                        guest_failed,
                        host_passed,
                        host_failed,
                    });
                }
            }
        }
        self.parsed
    }
}

/// Recognises the kernel's own reports of a panic or a serious error. Kernel
/// lines carry a `[  seconds]` timestamp, which test output does not.
fn kernel_problem(line: &str) -> Option<VmFailure> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, message) = rest.split_once(']')?;
    let stamp = stamp.trim();
    if stamp.is_empty() || !stamp.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let message = message.trim_start();
    if message.starts_with("Kernel panic") {
        return Some(VmFailure::KernelPanic {
            line: message.to_string(),
        });
    }
    const SERIOUS: [&str; 4] = ["BUG:", "Oops", "general protection fault", "kernel BUG at"];
    SERIOUS
        .iter()
        .any(|s| message.starts_with(s))
        .then(|| VmFailure::KernelError {
            line: message.to_string(),
        })
}

/// Strips carriage returns and terminal escape sequences (the firmware and
/// QEMU's serial mux emit some) from one raw console line.
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                // Charset selection takes one more character.
                Some('(' | ')') => {
                    chars.next();
                }
                _ => {}
            },
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn feed_all(parser: &mut ConsoleParser, lines: &[String]) {
        for (i, line) in lines.iter().enumerate() {
            parser.feed(line, ms(i as u64 * 100));
        }
    }

    fn good_run(m: &Markers) -> Vec<String> {
        vec![
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)".into(),
            m.booted("6.1.0-56-cloud-amd64"),
            m.start("tcp"),
            "running 1 test".into(),
            "test tcp ... ok".into(),
            m.result("tcp", "0"),
            m.start("udp"),
            "hello".into(),
            m.result("udp", "0"),
            m.summary("2", "0"),
        ]
    }

    #[test]
    fn a_clean_run_passes_and_keeps_each_commands_output() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec!["tcp".into(), "udp".into()]);
        feed_all(&mut p, &good_run(&m));
        let parsed = p.finish(QemuEnd::Exited);
        assert_eq!(parsed.failures, vec![]);
        assert_eq!(
            parsed.kernel_release.as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(parsed.booted_at, Some(ms(100)));
        assert_eq!(parsed.commands.len(), 2);
        assert_eq!(
            parsed.commands[0].output,
            "running 1 test\ntest tcp ... ok\n"
        );
        assert_eq!(parsed.commands[0].rc, Some(0));
        assert_eq!(parsed.commands[0].duration, Some(ms(300)));
        assert_eq!(parsed.commands[1].output, "hello\n");
    }

    #[test]
    fn a_non_zero_rc_fails() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec!["t".into()]);
        feed_all(
            &mut p,
            &[
                m.booted("x"),
                m.start("t"),
                m.result("t", "101"),
                m.summary("0", "1"),
            ],
        );
        let parsed = p.finish(QemuEnd::Exited);
        assert_eq!(
            parsed.failures,
            vec![VmFailure::CommandFailed {
                name: "t".into(),
                rc: 101
            }]
        );
    }

    #[test]
    fn a_missing_summary_fails_and_the_unfinished_command_is_named() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec!["t".into(), "u".into()]);
        feed_all(&mut p, &[m.booted("x"), m.start("t"), "partial".into()]);
        let parsed = p.finish(QemuEnd::Exited);
        assert_eq!(
            parsed.failures,
            vec![
                VmFailure::CommandUnfinished { name: "t".into() },
                VmFailure::CommandNotRun { name: "u".into() },
                VmFailure::NoSummary,
            ]
        );
        assert_eq!(parsed.commands[0].output, "partial\n");
    }

    #[test]
    fn a_kernel_panic_and_a_timeout_fail() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec![]);
        feed_all(
            &mut p,
            &["[    2.345678] Kernel panic - not syncing: Attempted to kill init!".into()],
        );
        let parsed = p.finish(QemuEnd::TimedOut { after: ms(5000) });
        assert_eq!(
            parsed.failures,
            vec![
                VmFailure::KernelPanic {
                    line: "Kernel panic - not syncing: Attempted to kill init!".into()
                },
                VmFailure::Timeout { after: ms(5000) },
                VmFailure::NoSummary,
            ]
        );
    }

    #[test]
    fn test_output_mentioning_a_panic_is_not_a_kernel_panic() {
        assert_eq!(kernel_problem("Kernel panic in my test name"), None);
        assert_eq!(kernel_problem("[test] BUG: not really"), None);
        assert!(matches!(
            kernel_problem("[   10.5] BUG: unable to handle page fault"),
            Some(VmFailure::KernelError { .. })
        ));
    }

    #[test]
    fn markers_without_this_runs_nonce_are_plain_output() {
        let m = Markers::new("abc");
        let forged = Markers::new("zzz");
        let mut p = ConsoleParser::new(m.clone(), vec!["t".into()]);
        feed_all(
            &mut p,
            &[
                m.start("t"),
                forged.result("t", "0"),
                forged.summary("1", "0"),
                m.result("t", "0"),
                m.summary("1", "0"),
            ],
        );
        let parsed = p.finish(QemuEnd::Exited);
        assert_eq!(parsed.failures, vec![]);
        assert_eq!(
            parsed.commands[0].output,
            format!(
                "{}\n{}\n",
                forged.result("t", "0"),
                forged.summary("1", "0")
            )
        );
    }

    #[test]
    fn output_without_a_final_newline_stays_with_its_command() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec!["t".into()]);
        feed_all(
            &mut p,
            &[
                m.start("t"),
                format!("no newline{}", m.result("t", "0")),
                m.summary("1", "0"),
            ],
        );
        let parsed = p.finish(QemuEnd::Exited);
        assert_eq!(parsed.failures, vec![]);
        assert_eq!(parsed.commands[0].output, "no newline\n");
    }

    #[test]
    fn a_summary_that_disagrees_with_the_results_fails() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec!["t".into()]);
        feed_all(
            &mut p,
            &[m.start("t"), m.result("t", "0"), m.summary("0", "1")],
        );
        let parsed = p.finish(QemuEnd::Exited);
        assert!(matches!(
            parsed.failures.as_slice(),
            [VmFailure::SummaryMismatch { .. }]
        ));
    }

    #[test]
    fn setup_errors_and_lingering_qemu_fail() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec![]);
        feed_all(
            &mut p,
            &[m.setup_error("mount tracefs"), m.summary("0", "0")],
        );
        let parsed = p.finish(QemuEnd::KilledAfterSummary);
        assert_eq!(
            parsed.failures,
            vec![
                VmFailure::SetupFailed {
                    what: "mount tracefs".into()
                },
                VmFailure::NoPoweroff
            ]
        );
    }

    #[test]
    fn the_modules_loaded_line_is_timed_and_a_failed_insmod_fails_the_run() {
        let m = Markers::new("abc");
        let mut p = ConsoleParser::new(m.clone(), vec![]);
        feed_all(
            &mut p,
            &[
                m.booted("x"),
                "insmod: can't insert 'veth.ko': invalid module format".into(),
                m.setup_error("insmod veth (/lib/modules/x/veth.ko) failed: insmod: can't insert"),
                m.modules_loaded("3"),
                m.summary("0", "0"),
            ],
        );
        let parsed = p.finish(QemuEnd::Exited);
        assert_eq!(parsed.modules_loaded, Some((ms(300), 3)));
        assert_eq!(
            parsed.failures,
            vec![VmFailure::SetupFailed {
                what: "insmod veth (/lib/modules/x/veth.ko) failed: insmod: can't insert".into()
            }]
        );
    }

    #[test]
    fn clean_line_strips_escapes_and_carriage_returns() {
        assert_eq!(clean_line(b"\x1bc\x1b[?7l\x1b[2Jhello\r\n"), "hello");
        assert_eq!(clean_line(b"\x1b(Bplain\r"), "plain");
        assert_eq!(clean_line(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }
}
