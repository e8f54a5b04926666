//! Static host metadata for every ingest request, and the persisted host id
//! that is the cloud's primary key for this host. It must never silently
//! replace an id that is there: a new id splits the host's history in the
//! cloud, so a corrupt id file is an error that says how to fix it.
//!
//! Host id file policy: absent, empty or whitespace-only → a new v4 UUID
//! is written (parent directories created 0700; written through
//! [`crate::files::write_atomically`], durable: the id is the host's history, so it
//! must survive a power loss once the cloud has seen it). A valid UUID
//! (surrounding whitespace allowed) → reused. Anything else, or the nil
//! UUID → error naming the file, what it holds, and to delete it to mint a
//! new id. Its directory is refused if another user could write it or it is
//! a symlink ([`crate::files::ensure_dir`]); the file is read without
//! following a symlink at its name, and refused if another user owns it or
//! could write it.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use netwatch_common::wire::HostInfo;
use procfs::{CpuInfo, Current, Uptime};
use uuid::Uuid;

/// Gather [`HostInfo`]. Only the host id can fail the call; every other
/// field is `None` (logged at debug level) when its source is unreadable.
pub fn host_info(host_id_path: &Path) -> anyhow::Result<HostInfo> {
    let host_id = load_or_create_host_id(host_id_path)?;
    let uts = rustix::system::uname();
    let cpu = CpuInfo::current()
        .map_err(|e| log::debug!("reading /proc/cpuinfo: {e}"))
        .ok();
    Ok(HostInfo {
        host_id,
        hostname: uts.nodename().to_string_lossy().into_owned(),
        os: os_pretty_name(),
        kernel: Some(uts.release().to_string_lossy().into_owned()).filter(|s| !s.is_empty()),
        uptime_secs: Uptime::current()
            .map_err(|e| log::debug!("reading /proc/uptime: {e}"))
            .ok()
            .map(|u| u.uptime as u64),
        cpu_model: cpu
            .as_ref()
            .and_then(|c| c.model_name(0))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
        cpu_cores: cpu
            .as_ref()
            .map(|c| c.num_cores())
            .filter(|&n| n > 0)
            .and_then(|n| u32::try_from(n).ok()),
        memory_total_bytes: super::system::read_meminfo()
            .map_err(|e| log::debug!("{e}"))
            .ok()
            .map(|m| m.mem_total),
    })
}

/// What an id file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum HostIdFile {
    /// Nothing usable and nothing to lose: mint a new id.
    Empty,
    Valid(Uuid),
    /// Something that is not an id; never overwritten.
    Corrupt(String),
}

/// Classify an id file's contents (see the module docs for the policy).
pub fn parse_host_id(text: &str) -> HostIdFile {
    let t = text.trim();
    if t.is_empty() {
        return HostIdFile::Empty;
    }
    match Uuid::parse_str(t) {
        Ok(id) if !id.is_nil() => HostIdFile::Valid(id),
        _ => HostIdFile::Corrupt(t.chars().take(64).collect()),
    }
}

/// Read the host id at `path`, or create and persist one.
pub fn load_or_create_host_id(path: &Path) -> anyhow::Result<Uuid> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::files::ensure_dir(dir, "host id directory")?;
    if let Some(mut file) = crate::files::open_own(path, "host id file")? {
        let meta = file
            .metadata()
            .with_context(|| format!("reading host id file {}", path.display()))?;
        if let Some(why) = crate::files::foreign(&meta) {
            bail!(
                "host id file {} ({why}): refused, since another user could have chosen this \
                 host's id; check its content, then chown it to the agent's user and chmod 600 it",
                path.display()
            );
        }
        let mut bytes = Vec::new();
        // An id is 36 characters: a larger file is not one.
        file.by_ref()
            .take(4096)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading host id file {}", path.display()))?;
        match parse_host_id(&String::from_utf8_lossy(&bytes)) {
            HostIdFile::Valid(id) => return Ok(id),
            HostIdFile::Empty => {}
            HostIdFile::Corrupt(head) => bail!(
                "host id file {} does not hold a UUID (it starts {head:?}); restore the \
                 host's id into it, or delete it to register this host under a new id",
                path.display()
            ),
        }
    }
    crate::files::remove_leftovers(path);
    let id = Uuid::new_v4();
    // Durable: a lost id makes the cloud see a new host (the history splits).
    crate::files::write_atomically(
        path,
        format!("{id}\n").as_bytes(),
        crate::files::Durability::Durable,
    )
    .with_context(|| format!("persisting a new host id to {}", path.display()))?;
    log::info!("created host id {id} in {}", path.display());
    Ok(id)
}

/// `PRETTY_NAME` from os-release(5): `/etc/os-release`, else `/usr/lib/os-release`.
fn os_pretty_name() -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .and_then(|text| pretty_name(&text))
}

/// The `PRETTY_NAME` value of os-release text: shell-style `KEY=value`
/// lines, the value optionally in double or single quotes, with `\`
/// escapes inside double quotes. `None` when absent or empty.
pub fn pretty_name(text: &str) -> Option<String> {
    let raw = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?;
    let value = unquote(raw.trim());
    (!value.is_empty()).then_some(value)
}

fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return inner.to_string();
    }
    let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_forms() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(
            pretty_name(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME='Alpine Linux v3.19'\n").as_deref(),
            Some("Alpine Linux v3.19")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME=Fedora\n").as_deref(),
            Some("Fedora")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME=\"A \\\"quoted\\\" \\$name\"\n").as_deref(),
            Some("A \"quoted\" $name")
        );
        assert_eq!(pretty_name("NAME=x\nPRETTY_NAME=\"\"\n"), None);
        assert_eq!(pretty_name("NAME=x\n"), None);
        assert_eq!(pretty_name("# PRETTY_NAME=\"commented\"\n"), None);
    }

    #[test]
    fn host_id_file_classification() {
        let id = Uuid::new_v4();
        assert_eq!(parse_host_id(&format!("{id}\n")), HostIdFile::Valid(id));
        assert_eq!(parse_host_id(&format!("  {id}  ")), HostIdFile::Valid(id));
        assert_eq!(parse_host_id(""), HostIdFile::Empty);
        assert_eq!(parse_host_id(" \n\t"), HostIdFile::Empty);
        assert_eq!(
            parse_host_id("not-a-uuid"),
            HostIdFile::Corrupt("not-a-uuid".into())
        );
        assert!(matches!(
            parse_host_id(&Uuid::nil().to_string()),
            HostIdFile::Corrupt(_)
        ));
    }

    #[test]
    fn host_id_is_created_then_reused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a/b/host_id");
        let first = load_or_create_host_id(&path)?;
        assert_eq!(fs::read_to_string(&path)?, format!("{first}\n"));
        assert_eq!(load_or_create_host_id(&path)?, first);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path().join("a/b"))?.count(), 1);
        Ok(())
    }

    #[test]
    fn empty_host_id_file_gets_an_id() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("host_id");
        fs::write(&path, "\n")?;
        let id = load_or_create_host_id(&path)?;
        assert_eq!(
            parse_host_id(&fs::read_to_string(&path)?),
            HostIdFile::Valid(id)
        );
        Ok(())
    }

    #[test]
    fn corrupt_host_id_file_is_an_error_and_left_untouched() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("host_id");
        fs::write(&path, "garbage\n")?;
        let err = match load_or_create_host_id(&path) {
            Ok(id) => panic!("corrupt file accepted as {id}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("does not hold a UUID"), "{err}");
        assert!(err.contains("delete it"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::read_to_string(&path)?, "garbage\n");
        Ok(())
    }

    /// Symlinks planted at the names the id is written through (the
    /// temporary name main used, `<name>.tmp.<pid>`, and a leftover of
    /// ours) are never followed: what they point at stays untouched; a
    /// symlink at the id's own name is refused, not read. Modes are 0600
    /// and 0700 (under umask 000: tests/file_safety.rs, the agent).
    #[test]
    fn planted_symlinks_are_never_followed_and_modes_are_exact() -> anyhow::Result<()> {
        use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir()?;
        let victim = dir.path().join("victim");
        fs::write(&victim, "the test's own\n")?;
        let state = dir.path().join("state");
        let path = state.join("host-id");
        fs::create_dir(&state)?;
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700))?;
        symlink(
            &victim,
            state.join(format!("host-id.tmp.{}", std::process::id())),
        )?;
        let id = load_or_create_host_id(&path)?;
        assert_eq!(fs::read_to_string(&victim)?, "the test's own\n");
        assert_eq!(fs::read_to_string(&path)?, format!("{id}\n"));
        assert_eq!(fs::metadata(&path)?.mode() & 0o7777, 0o600);

        // A symlink at the id's own name: refused, nothing written through it.
        let linked = state.join("linked-id");
        symlink(&victim, &linked)?;
        let e = format!("{:#}", load_or_create_host_id(&linked).unwrap_err());
        assert!(e.contains("is a symbolic link"), "{e}");
        assert_eq!(fs::read_to_string(&victim)?, "the test's own\n");

        // A directory created for it: 0700.
        load_or_create_host_id(&dir.path().join("new/host-id"))?;
        assert_eq!(fs::metadata(dir.path().join("new"))?.mode() & 0o7777, 0o700);
        assert_eq!(
            fs::metadata(dir.path().join("new/host-id"))?.mode() & 0o7777,
            0o600
        );
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn prop_os_release_and_host_id_parsers_never_panic(s in "(.{0,80}\n){0,5}") {
            let _ = pretty_name(&s);
            let _ = parse_host_id(&s);
        }

        #[test]
        fn prop_cpuinfo_and_uptime_parsers_never_panic(s in "(.{0,60}\n){0,6}|(([a-z ]{1,12}|processor)\t*: ?[0-9A-Za-zé ]{0,12}\n{1,2}){0,12}") {
            use procfs::{FromBufRead, FromRead};
            if let Ok(c) = CpuInfo::from_buf_read(s.as_bytes()) {
                let _ = (c.model_name(0), c.num_cores());
            }
            let _ = Uptime::from_read(s.as_bytes()).map(|u| u.uptime as u64);
        }

        #[test]
        fn prop_pretty_name_roundtrips_plain_values(v in "[A-Za-z0-9 ./()-]{1,40}") {
            let v = v.trim().to_string();
            proptest::prop_assume!(!v.is_empty());
            proptest::prop_assert_eq!(pretty_name(&format!("PRETTY_NAME=\"{v}\"\n")), Some(v));
        }
    }
}
