//! The live view on a terminal (`--output table` when stdout is one): a
//! thread of its own owns the terminal (raw mode, alternate screen), reads
//! keys and redraws [`super::view`] whenever a snapshot or a key arrives;
//! the tick only hands it a copy of each snapshot, so input never delays
//! collection. `t` switches the process table between bandwidth and TCP
//! quality/DNS columns. `q` or Ctrl-C restores the terminal and raises SIGINT, so the
//! agent stops through its usual path (last snapshot, flush, exit 0).
//!
//! It must never leave the terminal in raw mode: the terminal is restored
//! when the view quits, when the sink is dropped (SIGTERM, errors) and from
//! a panic hook; log lines written while the view is up are kept (see
//! [`LogWriter`]) and replayed on stderr once it is restored.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once};
use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use log::error;
use netwatch_common::wire::Snapshot;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::view::{self, Action, UiState};
use crate::sink::{Emitted, Sink};

/// Set while the terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Log lines kept while the view is up (at most [`KEPT_LOG_LINES`]), and
/// whether to keep them at all.
static LOG: Mutex<LogBuffer> = Mutex::new(LogBuffer {
    capturing: false,
    lines: VecDeque::new(),
    latest: None,
});

const KEPT_LOG_LINES: usize = 500;

struct LogBuffer {
    capturing: bool,
    lines: VecDeque<String>,
    /// The newest line not yet shown in the footer.
    latest: Option<String>,
}

fn log_buffer() -> std::sync::MutexGuard<'static, LogBuffer> {
    LOG.lock().unwrap_or_else(|p| p.into_inner())
}

/// The log target (`env_logger::Target::Pipe`): stderr, except while the
/// live view is up, when lines are kept for the footer and replayed on
/// stderr when the view ends (log text would tear the full-screen view).
///
/// Every record passes [`crate::text::log_record`] first: whatever a call
/// site printed, no control character or terminal escape reaches stderr or
/// the footer raw, and no text inside a record can start a line that looks
/// like a record. env_logger hands a pipe target one whole record per
/// `write` (it formats into a buffer, then `write_all`s it, and this
/// writer always takes the whole buffer).
#[derive(Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let text = crate::text::log_record(&text);
        let mut log = log_buffer();
        if !log.capturing {
            drop(log);
            io::stderr().write_all(text.as_bytes())?;
            return Ok(buf.len());
        }
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if log.lines.len() == KEPT_LOG_LINES {
                log.lines.pop_front();
            }
            log.lines.push_back(line.to_string());
            log.latest = Some(line.to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

fn enter() -> io::Result<()> {
    terminal::enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
    log_buffer().capturing = true;
    Ok(())
}

/// Put the terminal back (once) and replay the kept log lines on stderr.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
    let lines: Vec<String> = {
        let mut log = log_buffer();
        log.capturing = false;
        log.latest = None;
        log.lines.drain(..).collect()
    };
    let mut err = io::stderr().lock();
    for l in lines {
        let _ = writeln!(err, "{l}");
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A worker the supervisor restarts keeps the view up.
            if !crate::supervise::panic_is_restarted() {
                restore();
            }
            previous(info);
        }));
    });
}

/// Ask the agent to stop the way Ctrl-C does outside raw mode. Before the
/// agent handles SIGINT (it is still loading its source) the signal would
/// kill it; then the next emit's `Flow::Stop` ends it instead.
fn raise_sigint() {
    // SAFETY: an all-zero sigaction is a valid out-parameter; sigaction(2)
    // with a null new action only reads the current one into it.
    let handled = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction != libc::SIG_DFL
            && current.sa_sigaction != libc::SIG_IGN
    };
    if handled {
        // SAFETY: kill(2) on our own pid with a valid signal number has no
        // memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGINT);
        }
    }
}

/// The tick's handle on the view thread.
pub struct LiveTable {
    tx: Option<mpsc::Sender<Box<Snapshot>>>,
    /// The view thread, supervised as `live_view` under
    /// [`crate::supervise::Policy::Exit`]: the terminal's state after a
    /// panic is unknown, so the view is not restarted; the agent exits
    /// non-zero with the terminal restored.
    thread: Option<crate::supervise::Worker>,
}

impl LiveTable {
    /// Take over the terminal and start the view thread.
    pub fn start(host: String) -> anyhow::Result<Self> {
        install_panic_hook();
        if let Err(e) = enter() {
            restore();
            return Err(anyhow::anyhow!(
                "starting the live view on the terminal: {e}"
            ));
        }
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(anyhow::anyhow!(
                    "starting the live view on the terminal: {e}"
                ));
            }
        };
        let (tx, rx) = mpsc::channel::<Box<Snapshot>>();
        let mut parts = Some((terminal, rx, UiState::new(host)));
        let thread = crate::supervise::Worker::spawn(
            "live_view",
            "table",
            crate::supervise::Policy::Exit,
            move || {
                // Policy::Exit: run once.
                let Some((terminal, rx, ui)) = parts.take() else {
                    return Ok(());
                };
                let quit = run(terminal, rx, ui);
                restore();
                match quit {
                    Ok(true) => raise_sigint(),
                    Ok(false) => {}
                    Err(e) => {
                        error!("live view: {e}; stopping");
                        raise_sigint();
                    }
                }
                Ok(())
            },
        );
        match thread {
            Ok(t) => Ok(Self {
                tx: Some(tx),
                thread: Some(t),
            }),
            Err(e) => {
                restore();
                Err(e.into())
            }
        }
    }
}

/// The view loop: `Ok(true)` when the user quit, `Ok(false)` when the sink
/// was dropped.
fn run(
    mut terminal: Terminal<CrosstermBackend<io::Stdout>>,
    rx: mpsc::Receiver<Box<Snapshot>>,
    mut ui: UiState,
) -> io::Result<bool> {
    let mut snapshot: Option<Box<Snapshot>> = None;
    let mut dirty = true;
    let mut keys = true;
    loop {
        crate::supervise::fault::point("live_view");
        loop {
            match rx.try_recv() {
                Ok(s) => {
                    ui.apply(&s, container_of);
                    snapshot = Some(s);
                    dirty = true;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(false),
            }
        }
        if let Some(line) = log_buffer().latest.take() {
            ui.status = Some(view::status_text(&line));
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| {
                let area = f.area();
                view::draw(f.buffer_mut(), area, snapshot.as_deref(), &ui)
            })?;
            dirty = false;
        }
        // Wait for a key at most this long before looking for snapshots.
        const TICK: Duration = Duration::from_millis(100);
        if !keys {
            std::thread::sleep(TICK);
            continue;
        }
        let event = match event::poll(TICK).and_then(|ready| ready.then(event::read).transpose()) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                // No keyboard (no controlling terminal): keep drawing;
                // SIGINT/SIGTERM still stop the agent.
                log::warn!("live view: reading keys: {e}; keys are off");
                keys = false;
                continue;
            }
        };
        let page = terminal.size()?.height.saturating_sub(14) as usize;
        match event {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                let action = match k.code {
                    KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => return Ok(true),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(true)
                    }
                    KeyCode::Up | KeyCode::Char('k') => Action::Up,
                    KeyCode::Down | KeyCode::Char('j') => Action::Down,
                    KeyCode::PageUp => Action::PageUp,
                    KeyCode::PageDown => Action::PageDown,
                    KeyCode::Home => Action::Home,
                    KeyCode::End => Action::End,
                    KeyCode::Char('s') | KeyCode::Char('S') => Action::CycleSort,
                    KeyCode::Char('t') | KeyCode::Char('T') => Action::ToggleColumns,
                    _ => continue,
                };
                ui.act(action, snapshot.as_deref(), page);
                dirty = true;
            }
            Event::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

/// The cgroup label of a live pid, from `/proc/<pid>/cgroup`.
fn container_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    view::cgroup_path(&text).map(view::cgroup_label)
}

impl Sink for LiveTable {
    fn name(&self) -> &'static str {
        "table"
    }

    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Emitted> {
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Box::new(snapshot.clone())).is_ok());
        // The view is gone only after `q` (SIGINT is on its way) or an error.
        Ok(if sent { Emitted::KEPT } else { Emitted::STOP })
    }
}

impl Drop for LiveTable {
    fn drop(&mut self) {
        self.tx = None; // disconnects: the thread restores and ends
        drop(self.thread.take());
        restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record from a call site that printed outside text raw (the alert
    /// log line prints the alert's message as it is) is kept escaped, and
    /// its forged second record is only an indented continuation.
    #[test]
    fn log_records_are_kept_escaped_and_cannot_forge_a_record() {
        log_buffer().capturing = true;
        let rec = "[2026-12-07T13:00:00Z WARN  netwatch::alerts] alert: DNS tunnel to \
                   a\x1b[2J\x07b.example\n[2026-12-07T13:00:01Z ERROR netwatch] forged\n";
        let n = LogWriter.write(rec.as_bytes()).expect("write");
        let (lines, latest) = {
            let mut log = log_buffer();
            log.capturing = false;
            (log.lines.drain(..).collect::<Vec<_>>(), log.latest.take())
        };
        assert_eq!(n, rec.len());
        assert_eq!(
            lines,
            [
                "[2026-12-07T13:00:00Z WARN  netwatch::alerts] alert: DNS tunnel to \
                 a\\x1b[2J\\x07b.example",
                "  [2026-12-07T13:00:01Z ERROR netwatch] forged",
            ]
        );
        assert_eq!(
            latest.as_deref(),
            Some("  [2026-12-07T13:00:01Z ERROR netwatch] forged")
        );
    }
}
