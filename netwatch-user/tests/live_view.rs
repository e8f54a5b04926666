//! The live view for real: the agent binary runs in a detached tmux session
//! of 80×24 with `--output table` (eBPF if it loads, else `ss`) while a
//! process of ours moves bytes over loopback under a name we chose
//! (`nwlive-mover`: the kernel names a process after the file it was
//! exec'd through, here a symlink to this test binary). The captured pane
//! must show the header and that process's row (pid, name, user, cgroup,
//! its two connections in the pane below), and `q` must end the agent with
//! exit status 0 and the terminal back on the normal screen. A view made to
//! panic (the debug build's fault hook) ends the agent with status 1 and the
//! terminal back on the normal screen.
//!
//! Hostile names (issue 16): a second process names itself
//! `"\e[2J\r\b\a" + "evil"` (prctl `PR_SET_NAME`, as any user can) and
//! moves exactly 1 MiB each way. Sorted by name its row comes first and
//! must read `\x1b[2J\r\x08…` as text, with its connections pane titled by
//! the whole escaped name, the header and the mover's row intact: raw, the
//! escape would clear tmux's screen. `plain_table_escapes_hostile_names`
//! runs the agent with `--output table` into a pipe beside such a process
//! and a normally named one, each moving an exact byte count: the output
//! holds no raw control byte, the hostile row shows the escaped name, and
//! both rows add up to exactly the bytes moved.
//!
//! `t` switches the process table to the TCP quality and DNS columns: the
//! header and footer say so, the hostile name is still escaped.
//!
//! Needs root (the agent loads BPF programs) and tmux. Runs without the
//! libtest harness (`harness = false`): started as `nwlive-mover` (or
//! `nwlive-exact`), this binary is the mover.

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use netwatch::sink::table::view::{cgroup_label, cgroup_path};

    const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
    const MOVER: &str = "nwlive-mover";
    /// The name of the mover of exact byte counts ([`exact_mover`]).
    const EXACT: &str = "nwlive-exact";
    /// A name any user may give a process: clear screen, carriage return,
    /// backspace, bell (11 bytes; the kernel keeps 15).
    const EVIL_NAME: &str = "\x1b[2J\r\x08\x07evil";
    /// [`EVIL_NAME`] as it must be shown (`netwatch::text::visible`).
    const EVIL_SHOWN: &str = "\\x1b[2J\\r\\x08\\x07evil";
    const TESTS: [(&str, fn()); 2] = [
        ("live_view_in_tmux", live_view_in_tmux),
        (
            "plain_table_escapes_hostile_names",
            plain_table_escapes_hostile_names,
        ),
    ];

    pub fn main() {
        let argv0 = std::env::args_os().next().unwrap_or_default();
        if Path::new(&argv0).file_name() == Some(MOVER.as_ref()) {
            mover();
        }
        if Path::new(&argv0).file_name() == Some(EXACT.as_ref()) {
            exact_mover();
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            for (name, _) in TESTS {
                println!("{name}: test");
            }
            return;
        }
        // Name filters, as libtest takes them (`cargo test -- <filter>`).
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let chosen: Vec<(&str, fn())> = TESTS
            .into_iter()
            .filter(|(name, _)| {
                filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
            })
            .collect();
        let plural = if chosen.len() == 1 { "" } else { "s" };
        println!("running {} test{plural}", chosen.len());
        for (name, test) in &chosen {
            test();
            println!("test {name} ... ok");
        }
        println!(
            "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; {} filtered out",
            chosen.len(),
            TESTS.len() - chosen.len()
        );
    }

    /// Started as `nwlive-exact [NAME]`: names itself NAME (prctl
    /// `PR_SET_NAME`, which any user may do), opens one loopback TCP
    /// connection to itself (two sockets), says `ready`, then for each
    /// line `N` on stdin moves exactly N bytes through it (N sent, N
    /// received) and says `moved N`. Ends when stdin closes or its parent
    /// goes.
    fn exact_mover() -> ! {
        use std::io::BufRead;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        if let Some(name) = std::env::args_os().nth(1) {
            let name = std::ffi::CString::new(name.as_bytes()).expect("a name without NUL");
            // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel
            // keeps its first 15 bytes); `name` outlives the call.
            let rc =
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
            assert_eq!(rc, 0, "prctl(PR_SET_NAME)");
        }
        // After the rename: the sockets' owner is named so from the start.
        let l = TcpListener::bind("127.0.0.1:0").expect("exact mover: bind");
        let mut tx = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut rx, _) = l.accept().expect("exact mover: accept");
        drop(l);
        println!("ready");
        let chunk = vec![0x5au8; 64 * 1024];
        let mut back = vec![0u8; 64 * 1024];
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let n: usize = line.trim().parse().expect("a byte count");
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                tx.write_all(&chunk[..k]).expect("exact mover: write");
                rx.read_exact(&mut back[..k]).expect("exact mover: read");
                left -= k;
            }
            println!("moved {n}");
        }
        std::process::exit(0)
    }

    /// A running [`exact_mover`].
    struct Exact {
        child: Child,
        stdin: std::process::ChildStdin,
        stdout: std::io::BufReader<std::process::ChildStdout>,
    }

    impl Exact {
        /// Start it through `link` (a symlink named [`EXACT`] to this
        /// binary), named `name` if given, and wait until it is connected.
        fn start(link: &Path, name: Option<&str>) -> Self {
            let mut cmd = Command::new(link);
            cmd.args(name).stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut child = cmd.spawn().expect("starting the exact mover");
            let stdin = child.stdin.take().expect("stdin");
            let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            let mut ready = String::new();
            std::io::BufRead::read_line(&mut stdout, &mut ready).expect("reading the exact mover");
            assert_eq!(ready, "ready\n");
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).expect("comm");
            assert_eq!(comm.strip_suffix('\n'), Some(name.unwrap_or(EXACT)));
            Self {
                child,
                stdin,
                stdout,
            }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Move exactly `n` bytes each way; returns once they are moved.
        fn go(&mut self, n: usize) {
            writeln!(self.stdin, "{n}").expect("telling the exact mover");
            let mut said = String::new();
            std::io::BufRead::read_line(&mut self.stdout, &mut said)
                .expect("reading the exact mover");
            assert_eq!(said, format!("moved {n}\n"));
        }
    }

    impl Drop for Exact {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Move bytes to ourselves over loopback TCP, ~50 MiB/s each way, until
    /// the test (our parent) goes. Exactly two sockets: the listener is
    /// closed once the connection is accepted.
    fn mover() -> ! {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        let l = TcpListener::bind("127.0.0.1:0").expect("mover: bind");
        let mut tx = TcpStream::connect(l.local_addr().expect("mover: addr")).expect("connect");
        let (mut rx, _) = l.accept().expect("mover: accept");
        drop(l);
        println!("ready");
        thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match rx.read(&mut buf) {
                    Ok(0) | Err(_) => std::process::exit(0),
                    Ok(_) => {}
                }
            }
        });
        let chunk = vec![0x5au8; 256 * 1024];
        loop {
            if tx.write_all(&chunk).is_err() {
                std::process::exit(0);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the mover and the tmux server however the test ends (the
    /// hostile mover, an [`Exact`], on its own drop).
    struct Cleanup {
        mover: Child,
        socket: String,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.mover.kill();
            let _ = self.mover.wait();
            let _ = tmux(&self.socket, &["kill-server"]);
        }
    }

    fn tmux(socket: &str, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tmux (apt install tmux)");
        assert!(
            out.status.success() || args == ["kill-server"],
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait (bounded) until `done` holds for the captured pane.
    fn wait_for(socket: &str, pane: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = tmux(socket, &["capture-pane", "-p", "-t", pane]);
            if done(&screen) {
                return screen;
            }
            let dead = tmux(
                socket,
                &["display-message", "-p", "-t", pane, "#{pane_dead}"],
            );
            assert!(
                dead.trim() != "1" && Instant::now() < deadline,
                "waiting for {what}; the pane shows:\n{screen}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn live_view_in_tmux() {
        if !crate::common::root_or_skip_as("live_view_in_tmux", "the agent loads BPF programs") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join(MOVER);
        std::os::unix::fs::symlink(std::env::current_exe().expect("current_exe"), &link)
            .expect("symlink");
        let mut mover = Command::new(&link)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the mover");
        let pid = mover.id();
        // Once it says so, it has exec'd (so has its name) and connected.
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(mover.stdout.take().expect("stdout")),
            &mut ready,
        )
        .expect("reading the mover");
        assert_eq!(ready, "ready\n");
        let socket = format!("nwlive-{}", std::process::id());
        let _cleanup = Cleanup {
            mover,
            socket: socket.clone(),
        };
        // The hostile one, before the agent starts: the view sees it from
        // its first snapshot on.
        let exact_link = dir.path().join(EXACT);
        std::os::unix::fs::symlink(std::env::current_exe().expect("current_exe"), &exact_link)
            .expect("symlink");
        let mut evil = Exact::start(&exact_link, Some(EVIL_NAME));
        // The name is the kernel's (comm), not argv.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(comm.trim_end(), MOVER);
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let cgroup = cgroup_label(cgroup_path(&cgroup).expect("a cgroup line"));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");

        // No status line: the pane is the whole 80×24 window. The pane
        // stays after the agent exits so its exit status can be read.
        let conf = dir.path().join("tmux.conf");
        // A long history: the log replayed after the view ends is searched
        // whole (other tests' traffic on a shared host can log pages of
        // alerts after it).
        std::fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g status off\nset -g history-limit 100000\n",
        )
        .expect("conf");
        // The pane's shell runs the agent in the foreground and writes its
        // exit status to a file: tmux's own `pane_dead_status` is lost when
        // the agent's SIGCHLD coalesces with one from a job tmux waits for
        // synchronously (seen here: the pane stays dead with no status and
        // the agent an unreaped zombie until tmux gets another SIGCHLD).
        let conf = conf.to_str().expect("utf-8 path");
        for session in ["live", "term", "panic"] {
            let status_file = dir.path().join(format!("{session}.status"));
            // The third view panics (the debug build's fault hook).
            let env = if session == "panic" {
                "NETWATCH_FAULT_INJECT=panic:live_view:after=3 RUST_BACKTRACE=0 "
            } else {
                ""
            };
            let agent = format!(
                "{env}{AGENT} --no-pin --output table --interval 1; echo $? > {}",
                status_file.display()
            );
            tmux(
                &socket,
                &[
                    "-f",
                    conf,
                    "new-session",
                    "-d",
                    "-s",
                    session,
                    "-x",
                    "80",
                    "-y",
                    "24",
                    &agent,
                ],
            );
        }

        let row_of = |screen: &str| -> Option<Vec<String>> {
            screen
                .lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .find(|t| t.len() >= 2 && t[0] == pid.to_string() && t[1] == MOVER)
        };
        // The mover moves the most bytes on this host (other tests' traffic
        // may outrank it for a moment), so it becomes the first row and is
        // selected: its connections fill the pane below.
        let pane_title = format!("── connections of {pid} {MOVER}: 2 ");
        let screen = wait_for(
            &socket,
            "live",
            "the mover's row, first, with its connections",
            |s| {
                let lines: Vec<&str> = s.lines().collect();
                lines.len() > 3
                    && row_of(lines[3]).is_some()
                    && lines.iter().any(|l| l.starts_with(&pane_title))
            },
        );
        println!("{screen}");
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines.len(), 24, "{screen}");
        assert!(
            lines[0].starts_with(&format!("netwatch  host {}  source ", host.trim())),
            "{screen}"
        );
        assert!(
            lines[0].contains("source ebpf (") || lines[0].contains("source ss"),
            "{screen}"
        );
        assert!(
            lines[1].starts_with("rx ") && lines[1].contains("  lost "),
            "{screen}"
        );
        assert_eq!(
            lines[2].trim_end(),
            "    PID NAME            USER     CGROUP                  RX/s   TX/s  TOTAL CONN",
            "{screen}"
        );
        let row = row_of(lines[3]).unwrap_or_default();
        assert_eq!(row[2], "root", "{screen}");
        assert!(cgroup.starts_with(&row[3]) || row[3] == cgroup, "{screen}");
        assert_eq!(row.last().map(String::as_str), Some("2"), "{screen}");
        // Both ends of the mover's connection, by port.
        let conns: Vec<&&str> = lines
            .iter()
            .skip_while(|l| !l.starts_with(&pane_title))
            .skip(2)
            .take_while(|l| l.starts_with("TCP "))
            .collect();
        assert_eq!(conns.len(), 2, "{screen}");
        assert!(
            conns
                .iter()
                .all(|l| l.contains("127.0.0.1:") && l.contains("ESTABLISHED")),
            "{screen}"
        );
        assert_eq!(
            tmux(
                &socket,
                &["display-message", "-p", "-t", "live", "#{alternate_on}"]
            )
            .trim(),
            "1",
            "the view draws on the alternate screen"
        );

        // Sorted by name (`s` four times), the hostile process comes first
        // (ESC sorts before any letter); Home selects it. It moves exactly
        // 1 MiB each way: its TOTAL reads 2.0M.
        for _ in 0..4 {
            tmux(&socket, &["send-keys", "-t", "live", "s"]);
        }
        tmux(&socket, &["send-keys", "-t", "live", "Home"]);
        evil.go(1 << 20);
        let evil_pid = evil.pid().to_string();
        let evil_title = format!("── connections of {evil_pid} {EVIL_SHOWN}: 2 ");
        let screen = wait_for(
            &socket,
            "live",
            "the hostile row, first and escaped, with 2.0M moved and its connections",
            |s| {
                let lines: Vec<&str> = s.lines().collect();
                let first: Vec<&str> = lines
                    .get(3)
                    .map_or(vec![], |l| l.split_whitespace().collect());
                first.len() >= 6
                    && first[0] == evil_pid
                    && first[first.len() - 2] == "2.0M"
                    && lines.iter().any(|l| l.starts_with(&evil_title))
            },
        );
        println!("{screen}");
        assert!(
            !screen.chars().any(|c| c.is_control() && c != '\n'),
            "{screen:?}"
        );
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines.len(), 24, "{screen}");
        assert!(
            lines[0].starts_with(&format!("netwatch  host {}  source ", host.trim())),
            "{screen}"
        );
        assert_eq!(
            lines[2].trim_end(),
            "    PID NAME            USER     CGROUP                  RX/s   TX/s  TOTAL CONN",
            "{screen}"
        );
        // The name column (15 wide) holds the start of the escaped name.
        let first: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(first[1], &EVIL_SHOWN[..15], "{screen}");
        assert_eq!(first[2], "root", "{screen}");
        assert_eq!(first.last().copied(), Some("2"), "{screen}");
        assert!(lines[23].contains("s sort: name"), "the footer:\n{screen}");
        // Every other row intact: the mover's, with its user and sockets.
        let mover_row = lines[3..]
            .iter()
            .find_map(|l| row_of(l))
            .unwrap_or_else(|| panic!("the mover's row:\n{screen}"));
        assert_eq!(mover_row[2], "root", "{screen}");
        assert_eq!(mover_row.last().map(String::as_str), Some("2"), "{screen}");

        // `t`: the quality columns (issue 18), the footer says so, the
        // hostile name still escaped (whole: the name column is wider).
        tmux(&socket, &["send-keys", "-t", "live", "t"]);
        const QUALITY_HEADER: &str =
            "    PID NAME                  USER      RETR CFAIL CONNECT     RTT   DNS DNSFAIL";
        let screen = wait_for(&socket, "live", "the quality columns", |s| {
            s.lines()
                .nth(2)
                .is_some_and(|l| l.trim_end() == QUALITY_HEADER)
        });
        println!("{screen}");
        assert!(
            !screen.chars().any(|c| c.is_control() && c != '\n'),
            "{screen:?}"
        );
        let lines: Vec<&str> = screen.lines().collect();
        assert!(
            lines[23].contains("s sort: name  t columns: quality"),
            "the footer:\n{screen}"
        );
        let first: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            first[..3],
            [evil_pid.as_str(), EVIL_SHOWN, "root"],
            "{screen}"
        );
        // Each quality cell is a figure or `-` (none carried): the figures
        // themselves are checked where the sources fill them.
        let figure = |c: &str| {
            c == "-"
                || c.parse::<u64>().is_ok()
                || c.strip_suffix("ms")
                    .is_some_and(|n| n.parse::<f64>().is_ok())
                || c.strip_suffix("µs")
                    .is_some_and(|n| n.parse::<f64>().is_ok())
                || c.strip_suffix('s')
                    .is_some_and(|n| n.parse::<f64>().is_ok())
        };
        for row in [
            first,
            lines[3..]
                .iter()
                .find_map(|l| row_of(l))
                .unwrap_or_default()
                .iter()
                .map(String::as_str)
                .collect(),
        ] {
            assert_eq!(row.len(), 9, "{row:?} in\n{screen}");
            assert!(row[3..].iter().all(|c| figure(c)), "{row:?} in\n{screen}");
        }

        tmux(&socket, &["send-keys", "-t", "live", "q"]);
        assert_ends_cleanly(&socket, "live", &dir.path().join("live.status"), "q");

        // SIGTERM (systemd, kill): the same clean end.
        wait_for(&socket, "term", "the view in the second pane", |s| {
            s.lines().nth(2).is_some_and(|l| l.contains("PID NAME"))
        });
        let shell_pid = tmux(
            &socket,
            &["display-message", "-p", "-t", "term", "#{pane_pid}"],
        );
        let shell_pid: i32 = shell_pid.trim().parse().expect("pane_pid");
        let agent_pid = child_of(shell_pid).expect("the agent, child of the pane's shell");
        // SAFETY: kill(2) with a pid and a valid signal number.
        assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGTERM) }, 0);
        assert_ends_cleanly(&socket, "term", &dir.path().join("term.status"), "SIGTERM");

        // A panic in the view is not restarted (the terminal's state is
        // unknown): the terminal is restored and the agent exits with
        // status 1, naming the part, for its service manager to restart.
        let status_file = dir.path().join("panic.status");
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            let code = std::fs::read_to_string(&status_file).unwrap_or_default();
            if code.ends_with('\n') || Instant::now() > deadline {
                break code;
            }
            thread::sleep(Duration::from_millis(100));
        };
        let after = tmux(&socket, &["capture-pane", "-p", "-S", "-", "-t", "panic"]);
        assert_eq!(code.trim(), "1", "exit status after the panic:\n{after}");
        assert_eq!(
            tmux(
                &socket,
                &["display-message", "-p", "-t", "panic", "#{alternate_on}"]
            )
            .trim(),
            "0",
            "the normal screen after the panic:\n{after}"
        );
        for needle in [
            "live_view failed: panicked: fault injection: live_view panics; it cannot be \
             restarted safely",
            "the agent's live_view part failed for good",
        ] {
            assert!(
                after.replace('\n', "").contains(needle),
                "`{needle}` after the panic:\n{after}"
            );
        }

        // Not a terminal: plain text, no escape sequences.
        let out = Command::new(AGENT)
            .args([
                "--no-pin",
                "--output",
                "table",
                "--once",
                "--interval",
                "0.5",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running the agent");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("netwatch  "), "{text}");
        assert!(text.contains("     PID PROCESS "), "{text}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    /// `--output table` into a pipe while a process named [`EVIL_NAME`]
    /// and one named [`EXACT`] move exact byte counts: no raw control byte
    /// in the output (or the log), the hostile row shows the escaped name,
    /// and each process's rows add up to exactly its bytes.
    fn plain_table_escapes_hostile_names() {
        if !crate::common::root_or_skip_as(
            "plain_table_escapes_hostile_names",
            "the agent loads BPF programs",
        ) {
            return;
        }
        const EVIL_BYTES: usize = 1_234_567;
        const PLAIN_BYTES: usize = 765_432;
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join(EXACT);
        std::os::unix::fs::symlink(std::env::current_exe().expect("current_exe"), &link)
            .expect("symlink");
        let mut evil = Exact::start(&link, Some(EVIL_NAME));
        let mut plain = Exact::start(&link, None);

        /// Stops the agent however the test ends.
        struct Agent(Child);
        impl Drop for Agent {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut agent = Agent(
            Command::new(AGENT)
                .args([
                    "--no-pin",
                    "--output",
                    "table",
                    "--interval",
                    "1",
                    "--rows",
                    "10000",
                ])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting the agent"),
        );
        let collect = |r: Box<dyn Read + Send>| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
            let into = std::sync::Arc::clone(&buf);
            let t = thread::spawn(move || {
                let mut r = r;
                let mut chunk = [0u8; 8192];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    into.lock().expect("output").extend_from_slice(&chunk[..n]);
                }
            });
            (buf, t)
        };
        let (out, out_reader) = collect(Box::new(agent.0.stdout.take().expect("stdout")));
        let (err, err_reader) = collect(Box::new(agent.0.stderr.take().expect("stderr")));
        let text = || String::from_utf8_lossy(&out.lock().expect("output")).into_owned();
        let snapshots = || text().matches("     PID PROCESS ").count();
        // (rx, tx) summed over every row of `pid`, and the names shown.
        let rows = |pid: u32| -> (u64, u64, Vec<String>) {
            let mut sum = (0, 0, Vec::new());
            for line in text().lines() {
                let t: Vec<&str> = line.split_whitespace().collect();
                if t.len() >= 9 && t[0] == pid.to_string() {
                    sum.0 += t[t.len() - 3].parse::<u64>().expect("RX BYTES");
                    sum.1 += t[t.len() - 2].parse::<u64>().expect("TX BYTES");
                    sum.2.push(t[1].to_string());
                }
            }
            sum
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while snapshots() < 1 {
            assert!(
                Instant::now() < deadline,
                "no table within 60 s; the log:\n{}",
                String::from_utf8_lossy(&err.lock().expect("log"))
            );
            thread::sleep(Duration::from_millis(100));
        }
        evil.go(EVIL_BYTES);
        plain.go(PLAIN_BYTES);
        let want_evil = (EVIL_BYTES as u64, EVIL_BYTES as u64);
        let want_plain = (PLAIN_BYTES as u64, PLAIN_BYTES as u64);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (e, p) = (rows(evil.pid()), rows(plain.pid()));
            if ((e.0, e.1), (p.0, p.1)) == (want_evil, want_plain) || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        // Two more snapshots: nothing is counted twice.
        let seen = snapshots();
        while snapshots() < seen + 2 && Instant::now() < deadline + Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) on our child with a valid signal number.
        assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
        let status = agent.0.wait().expect("waiting for the agent");
        out_reader.join().expect("stdout reader");
        err_reader.join().expect("stderr reader");
        let printed = out.lock().expect("output").clone();
        let log = err.lock().expect("log").clone();
        let text = String::from_utf8_lossy(&printed).into_owned();
        let log = String::from_utf8_lossy(&log).into_owned();
        assert!(status.success(), "{status}; the log:\n{log}");
        let raw: Vec<(usize, char)> = text
            .char_indices()
            .filter(|(_, c)| c.is_control() && *c != '\n')
            .take(5)
            .collect();
        assert!(
            raw.is_empty(),
            "raw control characters {raw:?} in the table:\n{text:?}"
        );
        let raw: Vec<(usize, char)> = log
            .char_indices()
            .filter(|(_, c)| c.is_control() && *c != '\n')
            .take(5)
            .collect();
        assert!(
            raw.is_empty(),
            "raw control characters {raw:?} in the log:\n{log:?}"
        );
        let (erx, etx, enames) = rows(evil.pid());
        let (prx, ptx, pnames) = rows(plain.pid());
        assert!(!enames.is_empty(), "no row of the hostile process:\n{text}");
        assert!(enames.iter().all(|n| n == EVIL_SHOWN), "{enames:?}\n{text}");
        assert!(pnames.iter().all(|n| n == EXACT), "{pnames:?}\n{text}");
        assert_eq!(
            (erx, etx),
            want_evil,
            "the hostile process's bytes:\n{text}"
        );
        assert_eq!((prx, ptx), want_plain, "the other process's bytes:\n{text}");
        // Each hostile row reads as a row: pid, name, two rates, bytes, 2 connections.
        for line in text.lines().filter(|l| l.contains(EVIL_SHOWN)) {
            let t: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(t.len(), 9, "{line}");
            assert_eq!(t[8], "2", "{line}");
        }
    }

    /// The only child of `parent` (from `/proc/*/stat`).
    fn child_of(parent: i32) -> Option<i32> {
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|st| {
                        // The fields after `(comm)`: state, ppid, …
                        let rest = &st[st.rfind(')')? + 1..];
                        rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                    })
                    == Some(parent)
            })
    }

    /// The agent in `pane` exits with status 0 (written to `status_file`
    /// by the pane's shell) and leaves the normal screen, with the log
    /// lines held back while the view was up on it.
    fn assert_ends_cleanly(socket: &str, pane: &str, status_file: &std::path::Path, how: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let dead = tmux(
                socket,
                &[
                    "display-message",
                    "-p",
                    "-t",
                    pane,
                    "#{pane_dead} #{alternate_on}",
                ],
            );
            let code = std::fs::read_to_string(status_file).unwrap_or_default();
            if (dead.starts_with("1 ") && code.ends_with('\n')) || Instant::now() > deadline {
                break format!("{} {}", code.trim(), dead.trim());
            }
            thread::sleep(Duration::from_millis(100));
        };
        // With the whole history: on a shared host other tests' traffic can
        // log enough (alerts) to scroll the replayed lines off the pane.
        let after = tmux(socket, &["capture-pane", "-p", "-S", "-", "-t", pane]);
        assert_eq!(
            status, "0 1 0",
            "after {how}: exit status 0, pane dead, normal screen; the pane shows:\n{after}"
        );
        assert!(
            after.contains("process rows from the"),
            "after {how}:\n{after}"
        );
    }
}
