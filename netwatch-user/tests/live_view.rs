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
//! Needs root (the agent loads BPF programs) and tmux. Runs without the
//! libtest harness (`harness = false`): started as `nwlive-mover`, this
//! binary is the mover.

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
    const TEST: &str = "live_view_in_tmux";

    pub fn main() {
        let argv0 = std::env::args_os().next().unwrap_or_default();
        if Path::new(&argv0).file_name() == Some(MOVER.as_ref()) {
            mover();
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            println!("{TEST}: test");
            return;
        }
        // Name filters, as libtest takes them (`cargo test -- <filter>`).
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        if !filters.is_empty() && !filters.iter().any(|f| TEST.contains(f.as_str())) {
            println!("running 0 tests");
            return;
        }
        println!("running 1 test");
        live_view_in_tmux();
        println!("test {TEST} ... ok");
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

    /// Kills the mover and the tmux server however the test ends.
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
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the live view test runs the agent, which loads BPF programs: run as root"
        );
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
        // The name is the kernel's (comm), not argv.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(comm.trim_end(), MOVER);
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let cgroup = cgroup_label(cgroup_path(&cgroup).expect("a cgroup line"));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");

        // No status line: the pane is the whole 80×24 window. The pane
        // stays after the agent exits so its exit status can be read.
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g status off\n").expect("conf");
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
        let after = tmux(
            &socket,
            &["capture-pane", "-p", "-S", "-200", "-t", "panic"],
        );
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
        let after = tmux(socket, &["capture-pane", "-p", "-t", pane]);
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
