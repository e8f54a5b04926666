//! Keeping the API key in the agent's memory only: out of the environment
//! block the kernel shows in `/proc/<pid>/environ`, out of core dumps, and
//! away from ptrace by other processes of the agent's user. It must never
//! leave a copy of the key in the environment block, and never run after a
//! scrub it could not verify.
//!
//! `std::env::remove_var` (libc's `unsetenv`) only drops the pointer from
//! libc's `environ` array; the bytes `NETWATCH_API_KEY=<key>` stay where
//! the kernel put them at `execve`, between the process's `env_start` and
//! `env_end`, and `/proc/<pid>/environ` reads exactly that range of the
//! process's memory. Two ways out: re-exec the agent without the variable
//! (passing the key through an inherited pipe or memfd), or overwrite the
//! bytes in place. This module overwrites in place: it runs first in
//! `main`, before any thread exists, so nothing can be reading the
//! environment meanwhile; the entry is unreachable once `unsetenv` has
//! dropped its pointer, so zeroing it changes nothing any code can see; it
//! needs no fd protocol between two images, no second start-up of a large
//! binary, and keeps the pid systemd (`Type=notify`) knows. Afterwards the
//! agent reads its own `/proc/self/environ` and refuses to run if the
//! variable is still there. The entry's bytes read as NULs (empty strings)
//! in `/proc/<pid>/environ`.
//!
//! [`protect_process`] makes the process non-dumpable (`PR_SET_DUMPABLE`
//! 0): no core dump, no ptrace and no `/proc/<pid>/{mem,environ,fd,…}`
//! for other processes of the same uid without `CAP_SYS_PTRACE`, and the
//! `/proc/<pid>/` entries are owned by root. The process's own view of
//! `/proc/self` is unchanged (the kernel always lets a thread group read
//! itself). Children (`ss`, `lsof`) become dumpable again at their `execve`
//! as usual; they never receive the key.

use std::fmt;

/// Why the key could not be taken out of the environment safely.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// `prctl(PR_SET_DUMPABLE, 0)` failed or did not take.
    #[error("making the agent non-dumpable (prctl PR_SET_DUMPABLE 0): {0}; refusing to hold the API key in a dumpable process")]
    Dumpable(String),
    /// The environment block could not be read back or still holds the variable.
    #[error("scrubbing {name} from the environment block: {what}; pass the key with --api-key-file or [ingest] api_key_file instead")]
    Scrub {
        /// The variable.
        name: String,
        /// What went wrong.
        what: String,
    },
}

/// What [`take_env_var`] did: how many `NAME=value` entries of the
/// environment block it overwrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scrubbed {
    /// Entries overwritten in the block `/proc/<pid>/environ` shows.
    pub entries: usize,
}

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overwritten in the environment block ({} entries)",
            self.entries
        )
    }
}

/// Make the process non-dumpable (Linux; nothing elsewhere) and check that
/// it took. Call right after [`take_env_var`], before anything else runs
/// (the key file is read later, by a non-dumpable process). Not before it:
/// a non-dumpable process's `/proc/self/environ` belongs to root (mode
/// 0400), so an agent running as an unprivileged uid without
/// `CAP_DAC_READ_SEARCH` could not read it back to check the scrub.
pub fn protect_process() -> Result<(), SecretsError> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and
        // touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if rc != 0 {
            return Err(SecretsError::Dumpable(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: as above; PR_GET_DUMPABLE returns the flag.
        let now = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        if now != 0 {
            return Err(SecretsError::Dumpable(format!(
                "PR_GET_DUMPABLE still reads {now}"
            )));
        }
    }
    Ok(())
}

/// Take the variable `name` out of the process environment: its value
/// (lossily UTF-8; the first entry, as `getenv` finds it), with every
/// `name=` entry removed from libc's `environ` and, on Linux, overwritten
/// with NULs in the block the kernel shows in `/proc/<pid>/environ`, then
/// checked there.
///
/// Must be called while the process has a single thread (first in
/// `main`): it edits memory `environ` pointed to, and `std::env`'s lock
/// does not cover libc's own readers.
pub fn take_env_var(name: &str) -> Result<(Option<String>, Scrubbed), SecretsError> {
    let value = std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    #[cfg(target_os = "linux")]
    {
        let entries = linux::entries(name);
        std::env::remove_var(name);
        let n = linux::zero(&entries);
        // Nothing to check when the variable was never there.
        if value.is_some() || n > 0 {
            linux::verify(name)?;
        }
        Ok((value, Scrubbed { entries: n }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::env::remove_var(name);
        Ok((value, Scrubbed::default()))
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::SecretsError;
    use std::ffi::{c_char, CStr};

    extern "C" {
        /// libc's environment array (glibc and musl both export it).
        static mut environ: *mut *mut c_char;
    }

    /// One `NAME=value` entry: where it starts and its length without the NUL.
    pub(super) struct Entry {
        at: *mut u8,
        len: usize,
    }

    /// The environment block's range, `env_start..env_end` of
    /// `/proc/self/stat` (fields 50 and 51, Linux ≥ 3.5).
    fn block() -> Option<(usize, usize)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces and ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Field 3 (state) is f[0]: field n is f[n - 3].
        let start = f.get(47)?.parse().ok()?;
        let end = f.get(48)?.parse().ok()?;
        (start < end).then_some((start, end))
    }

    /// The `name=` entries `environ` points to that lie inside the block
    /// the kernel shows (entries a `setenv` put on the heap are not shown
    /// there, and libc may still own them: left alone).
    pub(super) fn entries(name: &str) -> Vec<Entry> {
        let Some((start, end)) = block() else {
            return Vec::new();
        };
        let prefix = format!("{name}=");
        let mut out = Vec::new();
        // SAFETY: single-threaded (see `take_env_var`); `environ` is a
        // NULL-terminated array of NUL-terminated strings owned by libc,
        // read here without being changed.
        unsafe {
            let mut p = environ;
            while !p.is_null() && !(*p).is_null() {
                let s = CStr::from_ptr(*p).to_bytes();
                let at = *p as usize;
                if s.starts_with(prefix.as_bytes()) && at >= start && at + s.len() < end {
                    out.push(Entry {
                        at: *p as *mut u8,
                        len: s.len(),
                    });
                }
                p = p.add(1);
            }
        }
        out
    }

    /// Overwrite each entry with NULs; how many were.
    pub(super) fn zero(entries: &[Entry]) -> usize {
        for e in entries {
            for i in 0..e.len {
                // SAFETY: `e` lies inside the process's environment block
                // (initial stack, writable), checked in `entries`; after
                // `unsetenv` no pointer of libc's or ours reaches it, and no
                // other thread exists. Volatile: the writes must not be
                // elided as dead stores.
                unsafe { std::ptr::write_volatile(e.at.add(i), 0) };
            }
        }
        entries.len()
    }

    /// Read `/proc/self/environ` (the kernel's view) and fail if `name=` is
    /// still there.
    pub(super) fn verify(name: &str) -> Result<(), SecretsError> {
        let err = |what: String| SecretsError::Scrub {
            name: name.to_string(),
            what,
        };
        let shown = std::fs::read("/proc/self/environ")
            .map_err(|e| err(format!("reading /proc/self/environ back: {e}")))?;
        let prefix = format!("{name}=");
        if shown
            .split(|b| *b == 0)
            .any(|entry| entry.starts_with(prefix.as_bytes()))
        {
            return Err(err(
                "/proc/self/environ still shows it (the block was moved, e.g. by prctl PR_SET_MM)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The kernel's view of this process's environment entries.
    fn shown() -> Vec<Vec<u8>> {
        std::fs::read("/proc/self/environ")
            .unwrap()
            .split(|b| *b == 0)
            .map(<[u8]>::to_vec)
            .collect()
    }

    // The test binary is multi-threaded, but no other test reads or writes
    // this variable, and the only entry zeroed is one libc has dropped.
    #[test]
    fn a_variable_absent_from_the_block_is_taken_from_libc_only() {
        // set_var puts the entry on the heap: not in the kernel's block,
        // left alone there, gone from libc's environment.
        std::env::set_var("NETWATCH_SECRETS_UNIT_HEAP", "heap-value-1");
        let (v, s) = take_env_var("NETWATCH_SECRETS_UNIT_HEAP").unwrap();
        assert_eq!(v.as_deref(), Some("heap-value-1"));
        assert_eq!(s, Scrubbed { entries: 0 });
        assert_eq!(std::env::var_os("NETWATCH_SECRETS_UNIT_HEAP"), None);
        assert!(!shown()
            .iter()
            .any(|e| e.starts_with(b"NETWATCH_SECRETS_UNIT_HEAP=")));
        let (v, s) = take_env_var("NETWATCH_SECRETS_UNIT_HEAP").unwrap();
        assert_eq!((v, s.entries), (None, 0));
    }
}
