//! Starting the agent binary in a test: spawn it, forward its log (stderr)
//! line by line, wait until it says its source is attached (and where it
//! serves /metrics), scrape it, and stop it. Test code only: it only ever signals the
//! children it started.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The agent binary cargo built for these tests.
pub const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");

/// Part of the log line the agent writes once its source is attached and
/// its first read is about to be taken.
pub const ATTACHED: &str = "process rows from the";

/// The log line's prefix that names the /metrics URL.
const SERVING: &str = "serving Prometheus metrics on ";

/// An agent started by [`start_attached`]: attached, its log still flowing
/// into `log`.
pub struct Started {
    /// The agent process (its stdout as the caller's command set it).
    pub child: Child,
    /// Every log line, in order, from the first one on.
    pub log: mpsc::Receiver<String>,
    /// The /metrics URL, if the agent logged one before it attached.
    pub metrics_url: Option<String>,
}

impl Started {
    /// The child, its log and its /metrics URL; a child that serves no
    /// /metrics is stopped and the test fails with its log.
    pub fn serving(self) -> (Child, mpsc::Receiver<String>, String) {
        let Self {
            mut child,
            log,
            metrics_url,
        } = self;
        match metrics_url {
            Some(url) => (child, log, url),
            None => {
                terminate(&mut child);
                panic!(
                    "the agent did not serve /metrics; log: {:?}",
                    log.try_iter().collect::<Vec<_>>()
                )
            }
        }
    }
}

/// Start `cmd` (the agent, `RUST_LOG=info`, stderr piped; stdout as the
/// caller set it) and return once it logs that its source is attached
/// ([`ATTACHED`]). An agent that has not said so within `patience` is
/// killed and the test fails with the log lines it wrote.
pub fn start_attached(cmd: &mut Command, patience: Duration) -> Started {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netwatch-agent");
    let stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (log_tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        let mut url = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(SERVING).nth(1) {
                url = Some(rest.trim().to_string());
            }
            if line.contains(ATTACHED) {
                let _ = ready_tx.send(url.clone());
            }
            let _ = log_tx.send(line);
        }
    });
    match ready_rx.recv_timeout(patience) {
        Ok(metrics_url) => Started {
            child,
            log,
            metrics_url,
        },
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not attach within {patience:?}; log: {:?}",
                log.try_iter().collect::<Vec<_>>()
            )
        }
    }
}

/// Stop `child` with SIGTERM (the agent's clean shutdown) and reap it.
pub fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// The agent with `--no-pin` and `args`, its stdout piped, once attached
/// (30 s at most) and given `prime` to prime its baselines: (child, log).
pub fn start_primed(args: &[&str], prime: Duration) -> (Child, mpsc::Receiver<String>) {
    let started = start_attached(
        Command::new(AGENT)
            .arg("--no-pin")
            .args(args)
            .stdout(Stdio::piped()),
        Duration::from_secs(30),
    );
    std::thread::sleep(prime);
    (started.child, started.log)
}

/// One scrape of `url` (the agent's /metrics), by a `curl` child process,
/// so its bytes are not this process's; fails the test on an HTTP error.
pub fn scrape(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", url])
        .output()
        .expect("running curl (install curl for this test)");
    assert!(
        out.status.success(),
        "scraping {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("/metrics is UTF-8")
}
