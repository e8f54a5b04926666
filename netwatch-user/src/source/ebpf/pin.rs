//! Pinning, so counters survive agent restarts: the maps and the program
//! links live under a pin directory (`/sys/fs/bpf/netwatch/<abi tag>/`), the
//! programs keep counting while no agent runs, and a restarted agent opens
//! the pinned maps instead of loading anew. Also the baseline's entries
//! (stored by [`super::generation`]) and `--unpin`, which removes what a
//! pinned agent left.
//!
//! It must never reuse pins it cannot prove are its own layout (another
//! build, other sizes, an incomplete set): those are removed and logged,
//! never read. It never touches anything outside its pin directory, nor
//! anything inside it that is not of its own naming scheme ([`is_ours`]):
//! a pin directory that is a filesystem's root or holds anything else is
//! refused ([`check_dir`]).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapType};
use aya::programs::links::PinnedLink;
use log::{info, warn};
use netwatch_common::{counter, names, DestroyedKey, SockKey, SockStats, OWNERS};

use super::tier::{LoadOptions, Tier};
use super::BPF_OBJECT;
use crate::source::{CountOrigin, Protocol, SocketId, SocketSample};

/// Where the maps and links are pinned by default.
pub const DEFAULT_DIR: &str = crate::source::DEFAULT_PIN_DIR;
/// Where the last delivered baseline is kept by default.
pub const DEFAULT_STATE_FILE: &str = crate::source::DEFAULT_PIN_STATE_FILE;

/// The maps that carry state userspace reads, pinned and reopened by name.
/// (`SEND_ARGS`/`RECV_ARGS`/`SCRATCH` are only the programs' own scratch:
/// the pinned links keep the programs, and the programs keep them.)
pub const PINNED_MAPS: [&str; 9] = [
    names::SOCKETS,
    names::CLAIMS,
    names::CLOSED,
    names::DESTROYED,
    names::COUNTERS,
    names::TCP_EVENTS,
    names::EPOCH,
    names::ACTIVE[0],
    names::ACTIVE[1],
];

/// Where to pin, and where the baseline lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinOptions {
    pub dir: PathBuf,
    pub state_file: PathBuf,
}

impl Default for PinOptions {
    fn default() -> Self {
        Self {
            dir: DEFAULT_DIR.into(),
            state_file: DEFAULT_STATE_FILE.into(),
        }
    }
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The layout tag: the BPF object itself, the map sizes and the tier asked
/// for. Any change gives another directory name, so old pins are never read
/// as the new layout.
pub fn abi_tag(opts: &LoadOptions) -> String {
    let mut h = fnv(0xcbf2_9ce4_8422_2325, BPF_OBJECT);
    h = fnv(h, &opts.max_sockets.to_le_bytes());
    h = fnv(h, &opts.ringbuf_bytes.to_le_bytes());
    h = fnv(h, format!("{:?}", opts.tier).as_bytes());
    for (size, _) in [
        (std::mem::size_of::<SockKey>(), 0),
        (std::mem::size_of::<SockStats>(), 0),
        (std::mem::size_of::<DestroyedKey>(), 0),
    ] {
        h = fnv(h, &(size as u64).to_le_bytes());
    }
    format!("v1-{h:016x}")
}

/// What a pinned map must look like: (type, key size, value size, max entries).
fn expected(name: &str, opts: &LoadOptions) -> Option<(MapType, u32, u32, u32)> {
    let sz = |n: usize| n as u32;
    Some(match name {
        names::SOCKETS => (
            MapType::LruHash,
            sz(std::mem::size_of::<SockKey>()),
            sz(std::mem::size_of::<SockStats>()),
            opts.max_sockets,
        ),
        names::CLAIMS => (
            MapType::LruHash,
            0,
            4,
            opts.max_sockets.saturating_mul(OWNERS as u32),
        ),
        names::CLOSED => (MapType::RingBuf, 0, 0, opts.ringbuf_bytes),
        names::DESTROYED => (
            MapType::Hash,
            sz(std::mem::size_of::<DestroyedKey>()),
            sz(std::mem::size_of::<SockStats>()),
            0,
        ),
        names::COUNTERS => (MapType::PerCpuArray, 4, 8, counter::LEN),
        names::TCP_EVENTS => (MapType::RingBuf, 0, 0, super::TCP_EVENTS_BYTES),
        names::EPOCH => (MapType::Array, 4, 4, 1),
        n if names::ACTIVE.contains(&n) => (
            MapType::Hash,
            sz(std::mem::size_of::<SockKey>()),
            4,
            opts.max_sockets,
        ),
        _ => return None,
    })
}

/// Check one pinned map against its expected layout (0: not checked).
fn check_map(name: &str, path: &Path, opts: &LoadOptions) -> Result<MapData, String> {
    let data = MapData::from_pin(path).map_err(|e| format!("{name}: opening the pin: {e}"))?;
    let info = data
        .info()
        .map_err(|e| format!("{name}: reading its info: {e}"))?;
    let Some((ty, key, value, max)) = expected(name, opts) else {
        return Err(format!("{name}: not a map netwatch pins"));
    };
    let got_ty = info.map_type().map_err(|e| format!("{name}: {e}"))?;
    let checks = [
        ("key size", key, info.key_size()),
        ("value size", value, info.value_size()),
        ("max_entries", max, info.max_entries()),
    ];
    if got_ty != ty {
        return Err(format!("{name}: map type {got_ty:?}, expected {ty:?}"));
    }
    for (what, want, got) in checks {
        if want != 0 && want != got {
            return Err(format!("{name}: {what} {got}, expected {want}"));
        }
    }
    Ok(data)
}

/// Pins found at start and proven to be this build's layout.
pub struct Pinned {
    pub tier: Tier,
    pub maps: HashMap<&'static str, Map>,
    /// The TCP state iterator (`super::states`), if it was pinned.
    pub states: Option<aya::programs::Iter>,
    /// A tag naming this set of pins (layout, boot and map id), which a
    /// baseline file must carry to be used.
    pub instance: String,
    /// The set's directory (`<pin dir>/<abi tag>`).
    pub root: PathBuf,
    /// The generation of the last delivered baseline ([`super::generation`]).
    pub generation: aya::maps::Array<MapData, u64>,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The tag of one set of pins: layout, boot and the `SOCKETS` map id.
fn instance_tag(abi: &str, sockets: &MapData) -> String {
    let id = sockets.info().map(|i| i.id()).unwrap_or(0);
    format!("{abi}:{}:{id}", boot_id())
}

fn wrap(name: &str, data: MapData) -> Result<Map, String> {
    let map = match name {
        names::SOCKETS | names::CLAIMS => Map::LruHashMap(data),
        names::DESTROYED => Map::HashMap(data),
        n if names::ACTIVE.contains(&n) => Map::HashMap(data),
        names::EPOCH => Map::Array(data),
        names::CLOSED | names::TCP_EVENTS => Map::RingBuf(data),
        names::COUNTERS => Map::PerCpuArray(data),
        _ => return Err(format!("{name}: not a map netwatch pins")),
    };
    Ok(map)
}

/// Where the BPF filesystem is mounted when the system has not mounted it.
const BPFFS: &str = "/sys/fs/bpf";

/// Pins need the BPF filesystem under the pin directory: if no `bpf` mount
/// holds it, mount one at [`BPFFS`] (what systemd does at boot) and say so.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("bpf") {
            continue;
        }
        if let Some(mp) = left.split_whitespace().nth(4) {
            if dir.starts_with(mp) {
                return Ok(());
            }
        }
    }
    if !dir.starts_with(BPFFS) {
        return Err(io::Error::other(format!(
            "{} is not on a BPF filesystem (mount one there, or pin under {BPFFS})",
            dir.display()
        )));
    }
    rustix::mount::mount(
        "bpf",
        BPFFS,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None,
    )?;
    info!("mounted the BPF filesystem at {BPFFS} (needed to pin maps and links)");
    Ok(())
}

/// Open the pins of this build if a complete, matching set is there.
/// `Ok(None)`: nothing pinned yet. Anything else under the pin directory
/// (other builds, half-made sets, wrong sizes) is removed and logged.
pub fn open_existing(pin: &PinOptions, opts: &LoadOptions) -> io::Result<Option<Pinned>> {
    let abi = abi_tag(opts);
    check_dir(&pin.dir).map_err(io::Error::other)?;
    ensure_bpffs(&pin.dir)?;
    if !pin.dir.exists() {
        // The agent's user alone, whatever the umask: what is pinned below
        // is reached through it.
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::files::DIR_MODE)
            .create(&pin.dir)?;
        std::fs::set_permissions(
            &pin.dir,
            std::fs::Permissions::from_mode(crate::files::DIR_MODE),
        )?;
    }
    for entry in std::fs::read_dir(&pin.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        // `check_dir` found only our own; one made since is left alone.
        if !is_ours(&path) {
            continue;
        }
        if name.to_string_lossy().starts_with("staging-") {
            warn!(
                "removing {}, left half-made by an agent that stopped while pinning",
                path.display()
            );
            remove(&path)?;
        } else if name.to_str() != Some(abi.as_str()) {
            warn!(
                "removing pins of another netwatch build or layout at {} (not {abi}); counters restart",
                path.display()
            );
            remove(&path)?;
        }
    }
    let root = pin.dir.join(&abi);
    if !root.exists() {
        return Ok(None);
    }
    match open_set(&root, &abi, opts) {
        Ok(p) => Ok(Some(p)),
        Err(reason) => {
            warn!(
                "replacing incompatible pins at {}: {reason}; counters restart",
                root.display()
            );
            remove(&root)?;
            Ok(None)
        }
    }
}

fn open_set(root: &Path, abi: &str, opts: &LoadOptions) -> Result<Pinned, String> {
    let mut maps = HashMap::new();
    let mut instance = String::new();
    for name in PINNED_MAPS {
        let data = check_map(name, &root.join("maps").join(name), opts)?;
        if name == names::SOCKETS {
            instance = instance_tag(abi, &data);
        }
        maps.insert(name, wrap(name, data)?);
    }
    let links = root.join("links");
    let mut tiers = std::fs::read_dir(&links)
        .map_err(|e| format!("{}: {e}", links.display()))?
        .filter_map(Result::ok)
        .collect::<Vec<_>>();
    let [one] = tiers.as_mut_slice() else {
        return Err(format!("{} tier link directories, expected 1", tiers.len()));
    };
    let name = one.file_name().to_string_lossy().into_owned();
    let tier = Tier::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("unknown tier {name}"))?;
    let offsets = super::btf::SockOffsets::from_kernel().map_err(|e| e.to_string())?;
    for hook in tier.hooks(&offsets) {
        let path = one.path().join(hook.program);
        PinnedLink::from_pin(&path).map_err(|e| format!("link {}: {e}", path.display()))?;
    }
    // Made by the agent, not the object: pins of a build before it had
    // none, and get one now (generation 0, which no baseline names).
    let gen_path = root.join("maps").join(super::generation::MAP);
    if !gen_path.exists() {
        info!(
            "{} has no baseline generation map: making one (the previous baseline is not used)",
            root.display()
        );
        super::generation::create(&gen_path).map_err(|e| e.to_string())?;
    }
    let generation = super::generation::open(&gen_path)?;
    // Optional: without it, TCP states come from sock_diag.
    let states_pin = root.join("progs").join(super::states::PROGRAM);
    let states = match aya::programs::Iter::from_pin(&states_pin) {
        Ok(p) => Some(p),
        Err(e) => {
            log::debug!(
                "{}: {e}; TCP states come from sock_diag",
                states_pin.display()
            );
            None
        }
    };
    Ok(Pinned {
        tier,
        maps,
        states,
        instance,
        root: root.to_path_buf(),
        generation,
    })
}

/// Unpin everything under `path` (a pinned link goes when its pin does).
pub fn remove(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Whether `name` is a layout tag: `v1-` and 16 lowercase hex digits.
fn is_tag(name: &str) -> bool {
    name.strip_prefix("v1-").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `name` names a staging directory: `staging-<tag>-<pid>`.
fn is_staging(name: &str) -> bool {
    name.strip_prefix("staging-")
        .and_then(|rest| rest.rsplit_once('-'))
        .is_some_and(|(tag, pid)| {
            is_tag(tag) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// A program's name as our programs spell theirs (lowercase, digits, `_`).
fn is_program_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The names under `dir`, or `None` if it is not a readable directory.
fn names_in(dir: &Path) -> Option<Vec<(String, bool)>> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .map(|e| {
            let e = e.ok()?;
            let is_dir = e.file_type().ok()?.is_dir();
            Some((e.file_name().to_str()?.to_string(), is_dir))
        })
        .collect()
}

/// Whether `path` (an entry of a pin directory) is a set of pins of this
/// agent's naming scheme: a directory named `v1-<16 hex>` (or
/// `staging-v1-<16 hex>-<pid>`, one being made) that holds only `maps/`
/// (pins named like netwatch's maps), `links/<tier>/` (pins named like
/// programs, under a tier's name) and `progs/` (pins named like programs).
/// Anything else under the pin directory is someone else's.
pub fn is_ours(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if !(is_tag(name) || is_staging(name)) {
        return false;
    }
    let Some(top) = names_in(path) else {
        return false;
    };
    top.iter().all(|(name, is_dir)| {
        let sub = path.join(name);
        *is_dir
            && match name.as_str() {
                "maps" => names_in(&sub).is_some_and(|m| {
                    m.iter().all(|(n, d)| {
                        !d && (PINNED_MAPS.contains(&n.as_str()) || n == super::generation::MAP)
                    })
                }),
                "links" => names_in(&sub).is_some_and(|tiers| {
                    tiers.iter().all(|(tier, d)| {
                        *d && Tier::ALL.iter().any(|t| t.name() == tier.as_str())
                            && names_in(&sub.join(tier))
                                .is_some_and(|l| l.iter().all(|(n, d)| !d && is_program_name(n)))
                    })
                }),
                "progs" => {
                    names_in(&sub).is_some_and(|p| p.iter().all(|(n, d)| !d && is_program_name(n)))
                }
                _ => false,
            }
    })
}

/// Whether `dir` is the root of a mounted filesystem (its device differs
/// from its parent's), or is where the BPF filesystem would be mounted.
fn is_mount_root(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(dir == Path::new(BPFFS)),
        Err(e) => return Err(e),
    };
    let Some(parent) = dir.parent() else {
        return Ok(true);
    };
    // Mounted there now, or by `ensure_bpffs` once an agent pins.
    if dir == Path::new(BPFFS) {
        return Ok(true);
    }
    Ok(std::fs::metadata(&dir)?.dev() != std::fs::metadata(parent)?.dev())
}

/// Why a pin directory is refused (`Err`), or `Ok` when it is one netwatch
/// may pin in and clean up: not a filesystem's root (a BPF filesystem is
/// shared with systemd, Cilium and other agents, whose pins clean-up would
/// remove), and holding nothing but pin sets of this naming scheme
/// ([`is_ours`]). A directory that does not exist yet is fine.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err(format!(
            "pin_dir {}: not an absolute path; name a directory on the BPF filesystem such as {DEFAULT_DIR}",
            dir.display()
        ));
    }
    let advice = format!(
        "pin under a directory of netwatch's own such as {}",
        dir.join("netwatch").display()
    );
    match is_mount_root(dir) {
        Ok(true) => {
            return Err(format!(
                "pin_dir {} is the root of a mounted filesystem, shared with other software (systemd, Cilium, other agents) whose pins netwatch's clean-up could remove: refusing to pin there; {advice}",
                dir.display()
            ))
        }
        Ok(false) => {}
        Err(e) => return Err(format!("pin_dir {}: {e}", dir.display())),
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("pin_dir {}: reading it: {e}", dir.display())),
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("pin_dir {}: reading it: {e}", dir.display()))?;
        if !is_ours(&entry.path()) {
            foreign.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown = foreign.len().min(5);
    Err(format!(
        "pin_dir {} holds {} entr{} netwatch did not make ({}{}): refusing to pin there, since cleaning up old pins could remove them; {advice}, or move them away",
        dir.display(),
        foreign.len(),
        if foreign.len() == 1 { "y" } else { "ies" },
        foreign[..shown].join(", "),
        if foreign.len() > shown { ", …" } else { "" }
    ))
}

/// What [`crate::unpin`] did.
#[derive(Debug, Default)]
pub struct Unpinned {
    /// The pin sets removed (their programs detach unless an agent runs).
    pub removed: Vec<PathBuf>,
    /// Entries left alone: not of this naming scheme.
    pub left: Vec<PathBuf>,
}

/// Why [`crate::unpin`] did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpinError {
    /// A running agent (or collector) holds the pins' lock.
    #[error("an agent is running on these pins (it holds {lock}): stop it first (systemctl stop netwatch-agent), since a running agent pins them again")]
    AgentRunning {
        /// The lock file beside the baseline.
        lock: PathBuf,
    },
    /// Reading the pin directory or removing a pin failed.
    #[error("{what} {path}: {error}")]
    Io {
        /// What was being done, e.g. `removing`.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
}

/// Remove every set of pins of this naming scheme under `pin.dir` (what a
/// pinned agent leaves when it stops): their programs detach. Entries not
/// of the scheme are left and reported. Refused while an agent holds the
/// pins' lock. A missing directory is nothing to remove.
pub fn unpin(pin: &PinOptions) -> Result<Unpinned, UnpinError> {
    use std::os::fd::AsRawFd;
    let lock_path = pin.state_file.with_extension("lock");
    // Held while removing: no agent starts on the pins meanwhile.
    let _lock = match std::fs::OpenOptions::new().write(true).open(&lock_path) {
        Ok(file) => {
            // SAFETY: flock(2) on an fd we own; no memory is passed.
            let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if ret != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(UnpinError::AgentRunning { lock: lock_path });
            }
            Some(file)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(UnpinError::Io {
                what: "opening the pins' lock",
                path: lock_path,
                error: source,
            })
        }
    };
    let mut done = Unpinned::default();
    let entries = match std::fs::read_dir(&pin.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
        Err(source) => {
            return Err(UnpinError::Io {
                what: "reading",
                path: pin.dir.clone(),
                error: source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| UnpinError::Io {
            what: "reading",
            path: pin.dir.clone(),
            error: source,
        })?;
        let path = entry.path();
        if is_ours(&path) {
            remove(&path).map_err(|source| UnpinError::Io {
                what: "removing",
                path: path.clone(),
                error: source,
            })?;
            done.removed.push(path);
        } else {
            done.left.push(path);
        }
    }
    done.removed.sort();
    done.left.sort();
    Ok(done)
}

/// Where a freshly attached tier pins its links, built beside the final
/// directory and renamed into place when complete (no dots: the BPF
/// filesystem refuses names with one).
pub fn staging(pin: &PinOptions, opts: &LoadOptions) -> PathBuf {
    pin.dir
        .join(format!("staging-{}-{}", abi_tag(opts), std::process::id()))
}

/// Publish a complete staging directory: maps pinned into it, then renamed
/// to its final name (one rename: a crash leaves no half-made set there).
pub fn publish(
    ebpf: &mut aya::Ebpf,
    stage: &Path,
    pin: &PinOptions,
    opts: &LoadOptions,
) -> Result<Published, String> {
    let abi = abi_tag(opts);
    let maps_dir = stage.join("maps");
    std::fs::create_dir_all(&maps_dir).map_err(|e| format!("{}: {e}", maps_dir.display()))?;
    let mut instance = String::new();
    for name in PINNED_MAPS {
        let map = ebpf
            .map(name)
            .ok_or_else(|| format!("{name} missing from the object"))?;
        map.pin(maps_dir.join(name))
            .map_err(|e| format!("pinning {name}: {e}"))?;
        if name == names::SOCKETS {
            let data = MapData::from_pin(maps_dir.join(name)).map_err(|e| e.to_string())?;
            instance = instance_tag(&abi, &data);
        }
    }
    let gen_path = maps_dir.join(super::generation::MAP);
    super::generation::create(&gen_path).map_err(|e| e.to_string())?;
    // The TCP state iterator, when it loaded: a restarted agent counts
    // states with it too. A program has no link to keep it; its pin does.
    if let Some(prog) = ebpf
        .program_mut(super::states::PROGRAM)
        .filter(|p| p.fd().is_ok())
    {
        let dir = stage.join("progs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        prog.pin(dir.join(super::states::PROGRAM))
            .map_err(|e| format!("pinning {}: {e}", super::states::PROGRAM))?;
    }
    let root = pin.dir.join(&abi);
    std::fs::rename(stage, &root)
        .map_err(|e| format!("renaming {} to {}: {e}", stage.display(), root.display()))?;
    info!("maps and links pinned at {}", root.display());
    let generation = super::generation::open(&root.join("maps").join(super::generation::MAP))?;
    Ok(Published {
        instance,
        root,
        generation,
    })
}

/// A set of pins just made by [`publish`].
pub struct Published {
    /// Its instance tag (see [`Pinned::instance`]).
    pub instance: String,
    /// Its directory.
    pub root: PathBuf,
    /// Its baseline generation map (generation 0).
    pub generation: aya::maps::Array<MapData, u64>,
}

/// The directory of the pin baseline `state_file`: created 0700, refused
/// if another user could write it ([`crate::files::ensure_dir`]). Nothing
/// to do for a bare file name (the working directory).
pub fn ensure_state_dir(state_file: &Path) -> Result<(), crate::files::FileError> {
    match state_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => crate::files::ensure_dir(dir, "pin baseline directory"),
        None => Ok(()),
    }
}

/// Take the pins for this agent alone: an exclusive lock on
/// `<state file>.lock`, held as long as the returned file is open.
/// `Ok(None)`: another agent holds them. The baseline's directory is
/// created 0700 and refused if another user could write it
/// ([`crate::files::ensure_dir`]); the lock is never opened through a
/// symlink ([`crate::files::open_lock`]).
pub fn lock(pin: &PinOptions) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let refused = |e: crate::files::FileError| io::Error::other(e.to_string());
    ensure_state_dir(&pin.state_file).map_err(refused)?;
    let path = pin.state_file.with_extension("lock");
    let file = crate::files::open_lock(&path).map_err(refused)?;
    // SAFETY: flock(2) on an fd we own; no memory is passed.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// One owner's counters as last delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineEntry {
    pub id: SocketId,
    pub pid: u32,
    pub udp: bool,
    pub rx: u64,
    pub tx: u64,
}

impl BaselineEntry {
    pub fn of(s: &SocketSample) -> Self {
        Self {
            id: s.id,
            pid: s.pid.unwrap_or(0),
            udp: s.protocol == Protocol::Udp,
            rx: s.rx_bytes,
            tx: s.tx_bytes,
        }
    }

    /// The sample a restarted agent primes its deltas with: it carries
    /// only what delta computation reads (id and counters).
    pub fn sample(&self) -> SocketSample {
        SocketSample {
            id: self.id,
            protocol: if self.udp {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            local: None,
            remote: None,
            state: crate::net::state::ESTABLISHED.into(),
            pid: (self.pid != 0).then_some(self.pid),
            comm: None,
            cgroup_id: None,
            rx_bytes: self.rx,
            tx_bytes: self.tx,
            rtt_us: None,
            tcp: None,
            closed: false,
            origin: CountOrigin::SinceAttach,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sets_of_this_naming_scheme_are_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mk = |rel: &str| {
            let p = d.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        };
        mk("v1-0123456789abcdef/maps/SOCKETS");
        mk("v1-0123456789abcdef/maps/GENERATION");
        mk("v1-0123456789abcdef/links/tracepoint/tp_sock_send_length");
        mk("v1-0123456789abcdef/progs/iter_tcp_states");
        std::fs::create_dir_all(d.join("staging-v1-0123456789abcdef-42/links")).unwrap();
        assert!(is_ours(&d.join("v1-0123456789abcdef")));
        assert!(is_ours(&d.join("staging-v1-0123456789abcdef-42")));
        assert_eq!(check_dir(d), Ok(()));
        // Someone else's map beside ours, in a set, or a look-alike name.
        mk("v1-fedcba9876543210/maps/foreign");
        mk("v0-0123456789abcdef/maps/SOCKETS");
        mk("cilium_calls");
        mk("v1-0123456789abcdeg/maps/SOCKETS");
        for name in [
            "v1-fedcba9876543210",
            "v0-0123456789abcdef",
            "cilium_calls",
            "v1-0123456789abcdeg",
        ] {
            assert!(!is_ours(&d.join(name)), "{name}");
        }
        let e = check_dir(d).unwrap_err();
        assert!(e.contains("holds 4 entries netwatch did not make"), "{e}");
        assert!(e.contains("cilium_calls"), "{e}");
        assert!(check_dir(Path::new("relative/dir")).is_err());
        // A filesystem's root, and where the BPF filesystem is mounted.
        assert!(check_dir(Path::new("/"))
            .unwrap_err()
            .contains("root of a mounted"));
        assert!(check_dir(Path::new("/proc"))
            .unwrap_err()
            .contains("root of a mounted"));
        assert!(check_dir(Path::new(BPFFS))
            .unwrap_err()
            .contains("root of a mounted"));
    }

    #[test]
    fn abi_tag_changes_with_the_layout() {
        let a = LoadOptions::default();
        let mut b = LoadOptions::default();
        b.max_sockets *= 2;
        assert_ne!(abi_tag(&a), abi_tag(&b));
        assert_eq!(abi_tag(&a), abi_tag(&LoadOptions::default()));
    }
}
