//! Files the agent writes and trusts, made so that another local user
//! cannot aim them: every file the agent writes (spool records, the pin
//! baseline and its lock, the `/metrics` counters, the host id) goes through
//! [`write_atomically`] or [`open_lock`], every directory they live in through
//! [`ensure_dir`], and every file whose content decides something (the
//! config, the API key, the ingest CA) is read through [`open_trusted`].
//!
//! - A file is written to a temporary file of a random name
//!   (`.tmp-<name>.<6 random>`) created with `O_CREAT|O_EXCL|O_NOFOLLOW` (a
//!   planted symlink or file at that name is never opened: another name is
//!   tried) and mode 0600 set with `fchmod` (whatever the umask), written,
//!   fsynced when the caller claims durability ([`Durability`], whose
//!   variants say when each is right), renamed
//!   over its final name (a symlink there is replaced, never followed) and
//!   the directory fsynced (durable writes).
//! - A directory is created 0700 (set exactly, whatever the umask) when
//!   absent, and refused when it, or a directory above it, could be changed
//!   by another user: a symlink (the directory itself, opened with
//!   `O_NOFOLLOW|O_DIRECTORY` and checked with `fstat` on what was opened),
//!   owned by anyone but root or the agent's user, or group- or
//!   world-writable without the sticky bit.
//! - A file of the agent's own is read back ([`open_own`], [`read_own`])
//!   without following a symlink at its name, and refused when its `fstat`
//!   shows another owner or group/world write (a spool record planted
//!   there is skipped and counted by the spool).
//! - A trusted file is opened once and checked with `fstat` on the open
//!   descriptor (no stat-then-open race): a regular file owned by root or
//!   the agent's user, not group- or world-writable. Symlinks are followed
//!   (a Kubernetes Secret volume's files and `/etc/ssl/certs` are symlinks),
//!   but every directory a link or the file sits in must pass the
//!   directory rule, so only root or the agent's user chose where they
//!   point.
//!
//! This module never follows a symlink at a name it creates, never leaves a
//! file's mode to the umask, never writes into a directory it has not
//! checked, and never reads a trusted file by path twice.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The mode of every file the agent writes: the agent's user only.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory the agent creates: the agent's user only
/// (nothing the agent writes is read by the service group).
pub const DIR_MODE: u32 = 0o700;
/// Every temporary file's name starts with this (then the final name).
pub const TMP_PREFIX: &str = ".tmp-";
/// Random characters in a temporary file's name.
const TMP_RANDOM: usize = 6;
/// Symlinks followed at most when checking a trusted file's path.
const MAX_HOPS: usize = 40;

/// Why a directory or a file is refused, or could not be checked.
#[derive(Debug, Error)]
pub enum FileError {
    /// The check itself failed (the error says what was tried).
    #[error("{what} {path}: {action}: {error}")]
    Io {
        what: String,
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    /// A symbolic link where a directory (or a file the agent writes) must be.
    #[error(
        "{what} {path} is a symbolic link: refused, since whoever can change the link \
         aims the agent's files; name the real path instead ({path} -> {target})"
    )]
    Symlink {
        what: String,
        path: PathBuf,
        target: String,
    },
    /// `path` (the thing itself, or a directory above it) could be changed
    /// by another user: `why` names it, its owner and mode, `fix` what to do.
    #[error("{what} {path}{why}: refused, since {risk}; {fix}")]
    Unsafe {
        what: String,
        path: PathBuf,
        why: String,
        risk: &'static str,
        fix: String,
    },
    /// Not the kind of file expected (a directory where a file must be, …).
    #[error("{what} {path} is not a {expected}")]
    Kind {
        what: String,
        path: PathBuf,
        expected: &'static str,
    },
}

/// Whether a write must survive a crash of the machine (power loss), or
/// only a crash of the agent. Either way a reader sees the old file or the
/// new one, whole (the rename); the choice is only what a power loss
/// keeps, against the cost of two fsyncs (file and directory) per write.
/// Each caller says in one line at its call why its choice is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The file and its directory are fsynced: after [`write_atomically`]
    /// returns, a power loss keeps the new file. Right for data nothing
    /// can rebuild: a spool record is a snapshot the cloud has not
    /// accepted (lost, its interval is missing for good), and the host id
    /// is the cloud's key for the host (lost, the cloud sees a new host and
    /// the history splits). Both are written rarely (a record per
    /// interval, an id once), so the fsyncs cost little.
    Durable,
    /// No fsync: a crash of the agent keeps the file (the page cache has
    /// it), a power loss may not. Right for state that is only ever used
    /// with kernel state a reboot loses anyway: the pin baseline and the
    /// `/metrics` counters are read back only with the pins (bpffs, in
    /// memory) they were written for, and the instance tag holds the boot
    /// id, so after a power loss they are unused whatever the disk holds
    /// (a restart re-seeds). They are rewritten every interval, where two
    /// fsyncs a tick would be a cost for nothing.
    Volatile,
}

/// A write [`write_atomically`] could not finish.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    /// The file the failed step was on (the temporary file, or the final
    /// one once renamed).
    pub path: PathBuf,
    /// The file was renamed into place before the failure (only the
    /// directory's fsync failed): the caller decides whether it stays.
    pub renamed: bool,
    pub source: io::Error,
}

/// The agent's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a file or directory owned by `uid` with `mode` can be changed by
/// someone besides root and the agent's user (`None`: it cannot), and the
/// command that fixes it. The sticky bit makes a shared directory safe
/// for entries of their own (`/tmp`).
fn unsafe_because(uid: u32, mode: u32, is_dir: bool, at: &Path) -> Option<(String, String)> {
    let mode = mode & 0o7777;
    if uid != 0 && uid != euid() {
        return Some((
            format!(
                "is owned by uid {uid}, not by root or the agent's user (uid {}); mode {mode:04o}",
                euid()
            ),
            format!(
                "chown it to the agent's user or root (chown {} {})",
                euid(),
                at.display()
            ),
        ));
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        let without = if is_dir {
            " without the sticky bit"
        } else {
            ""
        };
        return Some((
            format!("is group- or world-writable (mode {mode:04o}){without}; owner uid {uid}"),
            format!("chmod go-w {}", at.display()),
        ));
    }
    None
}

/// The refusal of `path` because of `at` (itself, or a directory above it).
fn refusal(
    what: &str,
    path: &Path,
    at: &Path,
    meta: &Metadata,
    risk: &'static str,
) -> Option<FileError> {
    let (why, fix) = unsafe_because(meta.uid(), meta.mode(), meta.is_dir(), at)?;
    let why = if at == path {
        format!(" {why}")
    } else {
        format!(": the directory {} above it {why}", at.display())
    };
    Some(FileError::Unsafe {
        what: what.to_string(),
        path: path.to_path_buf(),
        why,
        risk,
        fix,
    })
}

/// What another user could do with a directory of the agent's.
const DIR_RISK: &str = "another user could plant or replace the agent's files in it";
/// What another user could do with a file the agent trusts.
const FILE_RISK: &str = "another user could change what the agent reads from it";

fn io_err(what: &str, path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> FileError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| FileError::Io {
        what,
        path,
        action,
        error: source,
    }
}

/// Check every directory above `path` (the lexical parents of `path`
/// made absolute, and of its canonical form when it exists), each
/// followed through symlinks: none may be changeable by another user.
fn check_ancestors(path: &Path, what: &str, risk: &'static str) -> Result<(), FileError> {
    let abs = std::path::absolute(path).map_err(io_err(what, path, "making it absolute"))?;
    let canonical = fs::canonicalize(&abs).ok();
    let chains = std::iter::once(abs.as_path()).chain(canonical.as_deref());
    for chain in chains {
        for dir in chain.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let meta = match fs::metadata(dir) {
                Ok(m) => m,
                // Not there yet: created by the caller, under a checked parent.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(what, path, "checking the directories above it")(e)),
            };
            if let Some(e) = refusal(what, path, dir, &meta, risk) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Refuse a directory (already open, `meta` from `fstat` on it) that
/// another user could change.
fn check_dir_meta(path: &Path, meta: &Metadata, what: &str) -> Result<(), FileError> {
    if !meta.is_dir() {
        return Err(FileError::Kind {
            what: what.to_string(),
            path: path.to_path_buf(),
            expected: "directory",
        });
    }
    match refusal(what, path, path, meta, DIR_RISK) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Open `path` itself without following a symlink (`O_NOFOLLOW`):
/// `Err(Symlink)` when it is one.
fn open_nofollow(
    path: &Path,
    options: &mut OpenOptions,
    flags: i32,
    what: &str,
    action: &'static str,
) -> Result<File, FileError> {
    match options.custom_flags(libc::O_NOFOLLOW | flags).open(path) {
        Ok(f) => Ok(f),
        Err(e) => {
            let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                let target = fs::read_link(path)
                    .map(|t| crate::text::visible(&t.to_string_lossy(), 256).into_owned())
                    .unwrap_or_else(|_| "?".into());
                return Err(FileError::Symlink {
                    what: what.to_string(),
                    path: path.to_path_buf(),
                    target,
                });
            }
            Err(io_err(what, path, action)(e))
        }
    }
}

/// Make sure `dir` is a directory only root and the agent's user can
/// change (see the module's documentation), creating it and missing
/// parents with mode 0700 (exactly) when absent. `what` names it in the
/// error ("spool directory"), which says what is wrong and what to do.
pub fn ensure_dir(dir: &Path, what: &str) -> Result<(), FileError> {
    check_ancestors(dir, what, DIR_RISK)?;
    let abs = std::path::absolute(dir).map_err(io_err(what, dir, "making it absolute"))?;
    // Create what is missing, top down, each one 0700 exactly.
    let mut missing: Vec<&Path> = abs
        .ancestors()
        .take_while(|p| fs::symlink_metadata(p).is_err())
        .collect();
    missing.reverse();
    for p in missing {
        match fs::DirBuilder::new().mode(DIR_MODE).create(p) {
            Ok(()) => fs::set_permissions(p, fs::Permissions::from_mode(DIR_MODE))
                .map_err(io_err(what, p, "setting its mode to 0700"))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(what, p, "creating it")(e)),
        }
    }
    let file = open_nofollow(
        &abs,
        OpenOptions::new().read(true),
        libc::O_DIRECTORY,
        what,
        "opening it",
    )?;
    let meta = file
        .metadata()
        .map_err(io_err(what, dir, "reading its owner and mode"))?;
    check_dir_meta(dir, &meta, what)
}

/// Open a file whose content decides something (the config, the API key,
/// the ingest CA) once, and check what was opened (`fstat`): a regular
/// file owned by root or the agent's user and not group- or
/// world-writable, in directories (its own, and those of every symlink on
/// the way) that pass [`ensure_dir`]'s rule. Returns the open file and its
/// metadata, to read from that descriptor and nothing else.
pub fn open_trusted(path: &Path, what: &str) -> Result<(File, Metadata), FileError> {
    // The directories of the path and of every link hop: where a link can
    // be replaced, it can be aimed.
    let mut hop = std::path::absolute(path).map_err(io_err(what, path, "making it absolute"))?;
    for _ in 0..MAX_HOPS {
        check_ancestors(&hop, what, FILE_RISK)?;
        match fs::symlink_metadata(&hop) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&hop).map_err(io_err(what, &hop, "reading the link"))?;
                hop = match hop.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            _ => break,
        }
    }
    let file = File::open(path).map_err(io_err(what, path, "opening it"))?;
    let meta = file
        .metadata()
        .map_err(io_err(what, path, "reading its owner and mode"))?;
    if !meta.is_file() {
        return Err(FileError::Kind {
            what: what.to_string(),
            path: path.to_path_buf(),
            expected: "regular file",
        });
    }
    match refusal(what, path, path, &meta, FILE_RISK) {
        Some(e) => Err(e),
        None => Ok((file, meta)),
    }
}

/// Open a file of the agent's own for reading without following a symlink
/// at its name: `Ok(None)` when absent. `Err(Symlink)` for a link; other
/// checks (owner, mode) are the caller's, on the returned file's metadata.
pub fn open_own(path: &Path, what: &str) -> Result<Option<File>, FileError> {
    match open_nofollow(path, OpenOptions::new().read(true), 0, what, "opening it") {
        Ok(f) => Ok(Some(f)),
        Err(FileError::Io { error: source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Read a whole file of the agent's own (the pin baseline, the `/metrics`
/// counters): never through a symlink at its name, and refused (`Err`) if
/// another user owns it or could write it (checked on the open file).
/// `Ok(None)` when absent.
pub fn read_own(path: &Path, what: &str) -> Result<Option<Vec<u8>>, FileError> {
    use std::io::Read;
    let Some(mut file) = open_own(path, what)? else {
        return Ok(None);
    };
    let meta = file
        .metadata()
        .map_err(io_err(what, path, "reading its owner and mode"))?;
    if let Some(e) = refusal(what, path, path, &meta, FILE_RISK) {
        return Err(e);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(io_err(what, path, "reading it"))?;
    Ok(Some(bytes))
}

/// Whether a file of the agent's own (its `fstat`) may be trusted: owned
/// by the agent's user or root, not group- or world-writable. `None` or
/// why not.
pub fn foreign(meta: &Metadata) -> Option<String> {
    unsafe_because(meta.uid(), meta.mode(), false, Path::new(""))
        .map(|(why, _)| format!("it {why}"))
}

/// Replace `path` with `bytes`, whole or not at all: a temporary file of a
/// random name beside it (`O_EXCL|O_NOFOLLOW`, mode 0600 exactly), written,
/// fsynced if `durability` says so, renamed over `path` (a symlink there
/// is replaced, never followed) and the directory fsynced (durable only).
/// On an error before the rename the temporary file is removed and the old
/// file is untouched; the directory must have been checked
/// ([`ensure_dir`]) by the caller. The one write-then-rename of the agent:
/// every file it writes goes through here.
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), WriteError> {
    let fail = |path: &Path, renamed, source| WriteError {
        path: path.to_path_buf(),
        renamed,
        source,
    };
    let dir = parent(path);
    let Some(name) = path.file_name() else {
        return Err(fail(
            path,
            false,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        ));
    };
    let mut prefix = std::ffi::OsString::from(TMP_PREFIX);
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(TMP_RANDOM)
        .make_in(dir, |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
        })
        .map_err(|e| fail(dir, false, e))?;
    let written = (|| {
        // The umask may have taken bits off the create mode: set it exactly.
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        tmp.write_all(bytes)?;
        if durability == Durability::Durable {
            tmp.as_file().sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        // Dropping `tmp` removes the temporary file.
        return Err(fail(tmp.path(), false, e));
    }
    tmp.persist(path).map_err(|e| {
        let tmp_path = e.file.path().to_path_buf();
        fail(&tmp_path, false, e.error)
    })?;
    if durability == Durability::Durable {
        sync_dir(dir).map_err(|e| fail(path, true, e))?;
    }
    Ok(())
}

/// Flush a directory's entries (a rename in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?
        .sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Remove the temporary files [`write_atomically`] left for `path` (a crash between
/// creating one and renaming it): those named `.tmp-<name>.` and 6
/// characters. Returns how many were removed; errors are logged, not
/// returned (a leftover costs a few bytes, not correctness).
pub fn remove_leftovers(path: &Path) -> usize {
    let (dir, Some(name)) = (parent(path), path.file_name()) else {
        return 0;
    };
    let mut prefix = std::ffi::OsString::from(TMP_PREFIX);
    prefix.push(name);
    prefix.push(".");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        let is_ours = n.strip_prefix(&prefix).is_some_and(|rest| {
            rest.len() == TMP_RANDOM && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if !is_ours {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => log::warn!(
                "removing {}, a torn write's leftover: {e}",
                entry.path().display()
            ),
        }
    }
    removed
}

/// Open (creating it, mode 0600 exactly, when absent) a lock file, never
/// through a symlink at its name. An existing lock of the agent's own user
/// with another mode is set to 0600.
pub fn open_lock(path: &Path) -> Result<File, FileError> {
    let what = "lock file";
    let file = open_nofollow(
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE),
        libc::O_CLOEXEC,
        what,
        "opening it",
    )?;
    let meta = file
        .metadata()
        .map_err(io_err(what, path, "reading its owner and mode"))?;
    if !meta.is_file() {
        return Err(FileError::Kind {
            what: what.into(),
            path: path.to_path_buf(),
            expected: "regular file",
        });
    }
    if meta.uid() == euid() && meta.mode() & 0o7777 != FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(io_err(what, path, "setting its mode to 0600"))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Modes under umask 000 are checked by running the agent with it
    // (tests/file_safety.rs): the umask is per process, and changing it
    // here would change the modes of every other test's files.

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn replace_never_follows_a_planted_symlink_and_sets_0600() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"mine").unwrap();
        let target = d.path().join("state");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        for durability in [Durability::Durable, Durability::Volatile] {
            write_atomically(&target, b"new", durability).unwrap();
            assert_eq!(fs::read(&victim).unwrap(), b"mine");
            assert!(fs::symlink_metadata(&target).unwrap().is_file());
            assert_eq!(fs::read(&target).unwrap(), b"new");
            assert_eq!(mode(&target), 0o600);
        }
        // No temporary file left.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn write_atomically_replaces_the_file_whole_with_mode_0600() {
        for durability in [Durability::Durable, Durability::Volatile] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("state");
            // A longer old file, of another mode: nothing of it is left.
            fs::write(&p, b"old content, longer than the new one").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            write_atomically(&p, b"new", durability).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"new");
            assert_eq!(mode(&p), 0o600);
            // A new file, and an empty one.
            let q = d.path().join("fresh");
            write_atomically(&q, b"", durability).unwrap();
            assert_eq!(fs::read(&q).unwrap(), b"");
            assert_eq!(mode(&q), 0o600);
            assert_eq!(names(d.path()), ["fresh", "state"], "{durability:?}");
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        for durability in [Durability::Durable, Durability::Volatile] {
            let d = tempfile::tempdir().unwrap();
            // The target is a directory: the rename fails (EISDIR).
            let target = d.path().join("state");
            fs::create_dir(&target).unwrap();
            fs::write(target.join("inside"), b"kept").unwrap();
            let e = write_atomically(&target, b"new", durability).unwrap_err();
            assert_eq!(e.source.raw_os_error(), Some(libc::EISDIR), "{e}");
            assert!(!e.renamed);
            assert!(
                e.path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-state."),
                "the error names the temporary file: {e}"
            );
            assert_eq!(names(d.path()), ["state"], "no temporary left");
            assert_eq!(fs::read(target.join("inside")).unwrap(), b"kept");
            // No file name: refused before anything is made.
            let e = write_atomically(Path::new("/"), b"x", durability).unwrap_err();
            assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput);
            // A directory that is not there: nothing made.
            let e = write_atomically(&d.path().join("absent/state"), b"x", durability).unwrap_err();
            assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
            assert_eq!(names(d.path()), ["state"]);
        }
    }

    /// A write that fails half way (the filesystem is full: a 64 KiB tmpfs,
    /// root only; a read-only directory otherwise, which root's
    /// CAP_DAC_OVERRIDE would ignore) keeps the old file whole and leaves
    /// no temporary behind.
    #[test]
    fn a_write_refused_by_the_filesystem_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        if euid() == 0 {
            struct Unmount<'a>(&'a Path);
            impl Drop for Unmount<'_> {
                fn drop(&mut self) {
                    let _ = std::process::Command::new("umount").arg(self.0).status();
                }
            }
            let mounted = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "size=64k,mode=0700",
                    "netwatch-files-test",
                ])
                .arg(d.path())
                .status()
                .unwrap();
            assert!(
                mounted.success(),
                "mounting a tmpfs on {}",
                d.path().display()
            );
            let _unmount = Unmount(d.path());
            fs::write(&p, b"old").unwrap();
            for durability in [Durability::Durable, Durability::Volatile] {
                let e = write_atomically(&p, &vec![7u8; 1 << 20], durability).unwrap_err();
                assert_eq!(e.source.kind(), io::ErrorKind::StorageFull, "{e}");
                assert!(!e.renamed);
                assert_eq!(fs::read(&p).unwrap(), b"old");
                assert_eq!(names(d.path()), ["state"], "no temporary left");
            }
        } else {
            fs::write(&p, b"old").unwrap();
            fs::set_permissions(d.path(), fs::Permissions::from_mode(0o500)).unwrap();
            for durability in [Durability::Durable, Durability::Volatile] {
                let e = write_atomically(&p, b"new", durability).unwrap_err();
                assert_eq!(e.source.kind(), io::ErrorKind::PermissionDenied, "{e}");
                assert_eq!(fs::read(&p).unwrap(), b"old");
                assert_eq!(names(d.path()), ["state"]);
            }
            fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        }
    }

    #[test]
    fn leftovers_of_a_torn_write_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("baseline");
        fs::write(d.path().join(".tmp-baseline.aB3xY9"), b"torn").unwrap();
        fs::write(d.path().join(".tmp-baseline.long-name"), b"not ours").unwrap();
        fs::write(d.path().join(".tmp-other.aB3xY9"), b"not ours").unwrap();
        assert_eq!(remove_leftovers(&p), 1);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn ensure_dir_creates_0700_and_refuses_unsafe_ones() {
        let d = tempfile::tempdir().unwrap();
        let nested = d.path().join("a/b/c");
        ensure_dir(&nested, "spool directory").unwrap();
        for p in [d.path().join("a"), d.path().join("a/b"), nested.clone()] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
        // Group-writable without the sticky bit: refused, naming it.
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_dir(&open, "spool directory")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 0777"), "{e}");
        assert!(e.contains("without the sticky bit"), "{e}");
        assert!(e.contains(&format!("chmod go-w {}", open.display())), "{e}");
        // Below it: the parent is named.
        let below = open.join("spool");
        let e = ensure_dir(&below, "spool directory")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("the directory {}", open.display())),
            "{e}"
        );
        assert!(!below.exists(), "nothing created under an unsafe directory");
        // Sticky: fine.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_dir(&open, "spool directory").unwrap();
        // A symlink: refused, the target named.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&nested, &link).unwrap();
        let e = ensure_dir(&link, "spool directory")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert!(e.contains(&nested.display().to_string()), "{e}");
    }

    #[test]
    fn open_trusted_checks_the_open_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, meta) = open_trusted(&p, "ingest CA file").unwrap();
        assert_eq!(meta.len(), 1);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o664)).unwrap();
        let e = open_trusted(&p, "ingest CA file").unwrap_err().to_string();
        assert!(
            e.contains("mode 0664") && e.contains("group- or world-writable"),
            "{e}"
        );
        // Through a link in a checked directory: followed.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.path().join("bundle.pem");
        std::os::unix::fs::symlink("ca.pem", &link).unwrap();
        open_trusted(&link, "ingest CA file").unwrap();
        // A directory is not a file.
        let e = open_trusted(d.path(), "ingest CA file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_lock_is_never_opened_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join("baseline.lock");
        open_lock(&lock).unwrap();
        assert_eq!(mode(&lock), 0o600);
        let victim = d.path().join("victim");
        fs::write(&victim, b"mine").unwrap();
        let planted = d.path().join("other.lock");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = open_lock(&planted).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
