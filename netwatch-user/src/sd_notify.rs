//! systemd's service notifications (`sd_notify(3)`), for the packaged
//! unit's watchdog: `READY=1` with the agent's own stale limit as
//! `WATCHDOG_USEC` when the tick loop starts, then `WATCHDOG=1` after every
//! completed tick. A tick that stops completing stops the keep-alives, and
//! systemd restarts the agent once the limit passes.
//!
//! It must never block the tick (a non-blocking datagram), never fail the
//! agent (a notification that cannot be sent is logged once and dropped),
//! and never send anything when `NOTIFY_SOCKET` is unset (not under
//! systemd, or a unit without `NotifyAccess`).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The socket systemd names in `NOTIFY_SOCKET`.
#[derive(Debug)]
struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

fn notifier() -> Option<&'static Notifier> {
    static N: OnceLock<Option<Notifier>> = OnceLock::new();
    N.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(std::path::Path::new(&path)),
        };
        let made = addr.and_then(|addr| {
            let sock = UnixDatagram::unbound()?;
            sock.set_nonblocking(true)?;
            Ok(Notifier { sock, addr })
        });
        match made {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={}: cannot use it ({e}); systemd gets no readiness or \
                     watchdog notifications",
                    path.to_string_lossy()
                );
                None
            }
        }
    })
    .as_ref()
}

/// Send `state` (newline-separated `KEY=VALUE` lines) if systemd listens.
fn notify(state: &str) {
    let Some(n) = notifier() else {
        return;
    };
    if let Err(e) = n.sock.send_to_addr(state.as_bytes(), &n.addr) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            log::warn!("notifying systemd ({state:?}): {e}; later failures are not logged");
        }
    }
}

/// The tick loop starts: ready, and the watchdog fires after `limit`
/// without a keep-alive.
pub fn ready(limit: Duration) {
    notify(&format!(
        "READY=1\nWATCHDOG_USEC={}\nSTATUS=collecting",
        limit.as_micros()
    ));
}

/// A tick completed: keep the watchdog from firing.
pub fn keep_alive() {
    notify("WATCHDOG=1");
}
