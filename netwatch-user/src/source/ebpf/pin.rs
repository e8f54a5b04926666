//! Pinning, so counters survive agent restarts: the maps and the program
//! links live under a pin directory (`/sys/fs/bpf/netwatch/<abi tag>/`), the
//! programs keep counting while no agent runs, and a restarted agent opens
//! the pinned maps instead of loading anew. Also the baseline file: the
//! per-owner counters the last delivered snapshot was computed from, so the
//! next agent starts its deltas exactly there.
//!
//! It must never reuse pins it cannot prove are its own layout (another
//! build, other sizes, an incomplete set): those are removed and logged,
//! never read. It never touches anything outside its pin directory.

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
pub const DEFAULT_DIR: &str = crate::config::DEFAULT_PIN_DIR;
/// Where the last delivered baseline is kept by default.
pub const DEFAULT_STATE_FILE: &str = crate::config::DEFAULT_PIN_STATE_FILE;

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
    ensure_bpffs(&pin.dir)?;
    if !pin.dir.exists() {
        std::fs::create_dir_all(&pin.dir)?;
    }
    for entry in std::fs::read_dir(&pin.dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("staging-") {
            warn!(
                "removing {}, left half-made by an agent that stopped while pinning",
                entry.path().display()
            );
            remove(&entry.path())?;
        } else if name.to_str() != Some(abi.as_str()) {
            warn!(
                "removing pins of another netwatch build or layout at {} (not {abi}); counters restart",
                entry.path().display()
            );
            remove(&entry.path())?;
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
) -> Result<String, String> {
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
    Ok(instance)
}

/// Take the pins for this agent alone: an exclusive lock on
/// `<state file>.lock`, held as long as the returned file is open.
/// `Ok(None)`: another agent holds them.
pub fn lock(pin: &PinOptions) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = pin.state_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let path = pin.state_file.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
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
            closed: false,
            origin: CountOrigin::SinceAttach,
        }
    }
}

/// The baseline file's first bytes (format 2: binary; format 1 was text).
const STATE_MAGIC: &[u8; 8] = b"NWBASE02";
/// Bytes per entry: primary, secondary (u64), pid (u32), udp (u8), rx, tx (u64).
const ENTRY_LEN: usize = 8 + 8 + 4 + 1 + 8 + 8;

/// The baseline file's bytes: the magic, the pins' instance tag (u16
/// length, then its bytes), the entry count (u64), fixed-size entries, all
/// little-endian, and a CRC-32 of everything before it, so a torn or
/// altered file is refused. Binary: the agent writes it after every
/// delivered snapshot that changed it, and formatting thousands of lines
/// cost more than the rest of an idle tick.
pub fn encode(instance: &str, entries: &[BaselineEntry]) -> Vec<u8> {
    let tag = instance.as_bytes();
    let tag = &tag[..tag.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(8 + 2 + tag.len() + 8 + entries.len() * ENTRY_LEN + 4);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    out.extend_from_slice(tag);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.primary.to_le_bytes());
        out.extend_from_slice(&e.id.secondary.to_le_bytes());
        out.extend_from_slice(&e.pid.to_le_bytes());
        out.push(u8::from(e.udp));
        out.extend_from_slice(&e.rx.to_le_bytes());
        out.extend_from_slice(&e.tx.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Little-endian reader over a byte slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
}

/// Parse a baseline file written for `instance`; `Err` says why it is not used.
pub fn decode(bytes: &[u8], instance: &str) -> Result<Vec<BaselineEntry>, String> {
    if !bytes.starts_with(STATE_MAGIC) {
        return Err("not a baseline file of this version".into());
    }
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err("truncated".into());
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch (torn or altered)".into());
    }
    let mut r = Reader(body.get(STATE_MAGIC.len()..).unwrap_or_default());
    let torn = || "truncated".to_string();
    let tag_len = usize::from(r.u16().ok_or_else(torn)?);
    let tag = String::from_utf8_lossy(r.take(tag_len).ok_or_else(torn)?).into_owned();
    if tag != instance {
        return Err(format!("written for other pins ({tag})"));
    }
    let count = r.u64().ok_or_else(torn)?;
    if count.checked_mul(ENTRY_LEN as u64) != Some(r.0.len() as u64) {
        return Err("entry count does not match".into());
    }
    let mut out = Vec::with_capacity(r.0.len() / ENTRY_LEN);
    while !r.0.is_empty() {
        let primary = r.u64().ok_or_else(torn)?;
        let secondary = r.u64().ok_or_else(torn)?;
        let pid = r.u32().ok_or_else(torn)?;
        let udp = r.take(1).ok_or_else(torn)?.first().copied().unwrap_or(0) != 0;
        let rx = r.u64().ok_or_else(torn)?;
        let tx = r.u64().ok_or_else(torn)?;
        out.push(BaselineEntry {
            id: SocketId { primary, secondary },
            pid,
            udp,
            rx,
            tx,
        });
    }
    Ok(out)
}

/// Write the baseline: to a temporary file, then renamed over the old one.
pub fn store(path: &Path, instance: &str, entries: &[BaselineEntry]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, encode(instance, entries))?;
    std::fs::rename(&tmp, path)
}

/// Read the baseline for `instance`; a missing, foreign or torn file is
/// no baseline (logged).
pub fn load_baseline(path: &Path, instance: &str) -> Option<Vec<BaselineEntry>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) => {
            warn!(
                "no baseline at {} ({e}): counting starts from the kernel's counts now",
                path.display()
            );
            return None;
        }
    };
    match decode(&text, instance) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(
                "baseline {} not used: {e}; counting starts from the kernel's counts now",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_round_trips_and_refuses_foreign_or_torn_files() {
        let e = vec![
            BaselineEntry {
                id: SocketId {
                    primary: u64::MAX,
                    secondary: 7,
                },
                pid: 42,
                udp: true,
                rx: 1 << 40,
                tx: 3,
            },
            BaselineEntry {
                id: SocketId {
                    primary: 1,
                    secondary: 2,
                },
                pid: 0,
                udp: false,
                rx: 0,
                tx: 0,
            },
        ];
        let bytes = encode("tag:a", &e);
        assert_eq!(decode(&bytes, "tag:a").unwrap(), e);
        assert_eq!(decode(&encode("tag:a", &[]), "tag:a").unwrap(), vec![]);
        assert!(decode(&bytes, "tag:b").unwrap_err().contains("other pins"));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], "tag:a").is_err(), "torn at {cut}");
        }
        assert!(decode(b"garbage", "tag:a").is_err());
        assert!(decode(b"netwatch-ebpf-baseline 1 tag:a\nend 0\n", "tag:a").is_err());
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x10;
            assert!(decode(&altered, "tag:a").is_err(), "altered byte {i}");
        }
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
