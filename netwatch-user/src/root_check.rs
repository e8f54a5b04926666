//! Whether a test that needs root may run: as root it does; as another user
//! it prints one line and skips, unless the run must not skip (CI). Test
//! code only: built into the library's unit tests (`#[cfg(test)]`) and into
//! the integration tests (`tests/common` includes this file); it must never
//! be built into the agent, and never makes a test pass silently.

use std::cell::RefCell;

/// Skip the rest of a library unit test unless it runs as root:
/// `crate::root_check::require_root!("mounts a tmpfs")` as its first
/// statement. See [`root_or_skip`].
#[allow(unused_macros)]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::root_check::root_or_skip($why) {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_root;

/// The first words of the line a test skipped for want of root prints
/// (`cargo xtask test` counts these lines in its unprivileged run).
pub const SKIPPED: &str = "skipped: ";

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this run must not skip a root test: in CI (`CI=true`) or when
/// asked (`NETWATCH_REQUIRE_ROOT=1`), a test that needs root fails as
/// another user instead of skipping, so such a run never passes by skipping.
pub fn root_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("NETWATCH_REQUIRE_ROOT").is_ok_and(|v| v == "1")
}

/// True when the calling test may go on: this process is root. As another
/// user: panics when the run requires root ([`root_required`]), else prints
/// once per test, to stderr past libtest's capture (so a plain `cargo test`
/// shows it), `skipped: <test>: needs root (<why>); run as root or with
/// cargo xtask test` and returns false. The test is named after its thread
/// (libtest runs each test on a thread named so).
pub fn root_or_skip(why: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test on a thread of its own")
        .to_string();
    root_or_skip_as(&test, why)
}

/// [`root_or_skip`] for the test named `test` (a test file run without the
/// libtest harness names its own tests).
pub fn root_or_skip_as(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !root_required(),
        "{test} needs root ({why}) and this run requires it (CI=true or \
         NETWATCH_REQUIRE_ROOT=1): run it as root, or with cargo xtask test"
    );
    thread_local! {
        /// The test this thread last printed a skip line for: a test that
        /// checks again says nothing more.
        static SAID: RefCell<String> = const { RefCell::new(String::new()) };
    }
    SAID.with_borrow_mut(|said| {
        if said != test {
            // Straight to stderr, not through eprintln!: libtest captures
            // the print macros of a passing test, and this line must show
            // in a plain `cargo test` too. One write: one whole line.
            let line = format!(
                "{SKIPPED}{test}: needs root ({why}); run as root or with cargo xtask test\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            test.clone_into(said);
        }
    });
    false
}
