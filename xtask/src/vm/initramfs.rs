//! Builds the guest's initramfs: a gzip'd `cpio -H newc` archive holding
//! busybox and its applet links, the caller's binaries under `/bin`, every
//! shared library `ldd` names for them (at the same paths), a few `/etc`
//! files and the generated `/init`. The archive is written by hand (newc is a
//! 110-byte text header per entry), so device nodes need no root and no
//! staging directory; `gzip` compresses it. Never reads outside the files
//! it was given and the libraries they link.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::host;

/// One file in the guest's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    /// Contents of a host file (symlinks followed), with this mode.
    HostFile {
        source: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    CharDevice {
        major: u32,
        minor: u32,
        mode: u32,
    },
}

/// The guest's files by absolute guest path, before they are written.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

/// Sizes of a written initramfs, for the report.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub entries: usize,
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
}

impl Initramfs {
    /// The skeleton: directories, `/dev/console` (the kernel opens it for
    /// `/init` before devtmpfs is mounted), busybox with its applet links,
    /// and small `/etc` files so that `localhost` resolves.
    pub fn with_busybox(busybox: &Path) -> Result<Self> {
        let mut fs = Self::default();
        for dir in ["/proc", "/sys", "/dev", "/tmp", "/root", "/run", "/etc"] {
            fs.insert(dir, Entry::Dir);
        }
        fs.insert(
            "/dev/console",
            Entry::CharDevice {
                major: 5,
                minor: 1,
                mode: 0o600,
            },
        );
        fs.insert(
            "/dev/null",
            Entry::CharDevice {
                major: 1,
                minor: 3,
                mode: 0o666,
            },
        );
        fs.add_text("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
        fs.add_text("/etc/group", "root:x:0:\n", 0o644);
        fs.add_text("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
        fs.add_text("/etc/nsswitch.conf", "hosts: files\n", 0o644);
        // Protocol and service names for tools that print or parse them
        // (`nft`, `ss`), when the host has them (Debian's netbase).
        for file in ["/etc/protocols", "/etc/services"] {
            if Path::new(file).is_file() {
                fs.insert(
                    file,
                    Entry::HostFile {
                        source: PathBuf::from(file),
                        mode: 0o644,
                    },
                );
            }
        }

        fs.add_binary_at(busybox, "/bin/busybox")?;
        let list = host::run_captured(
            Command::new(busybox).arg("--list-full"),
            "listing busybox applets",
        )?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim().trim_start_matches('/');
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            fs.insert(
                &format!("/{applet}"),
                Entry::Symlink {
                    target: "/bin/busybox".into(),
                },
            );
        }
        Ok(fs)
    }

    /// Adds `binary` as `/bin/<file name>` with every library it links.
    /// Returns the guest path.
    pub fn add_binary(&mut self, binary: &Path) -> Result<String> {
        let name = binary
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| {
                format!("{}: binary path has no usable file name", binary.display())
            })?;
        let guest = format!("/bin/{name}");
        if matches!(self.entries.get(&guest), Some(Entry::HostFile { .. })) {
            bail!(
                "two binaries would both be {guest} in the guest ({} is the second); rename one",
                binary.display()
            );
        }
        // One program per name on PATH: a host binary replaces BusyBox's
        // applet of that name wherever the applet's link is (`ip` is in
        // /sbin). BusyBox's own shell still runs its applet for a bare
        // `ip` in a script; a program's exec of `ip` gets this binary.
        let applets: Vec<String> = self
            .entries
            .iter()
            .filter(|(path, entry)| {
                matches!(entry, Entry::Symlink { target } if target == "/bin/busybox")
                    && path.rsplit('/').next() == Some(name)
            })
            .map(|(path, _)| path.clone())
            .collect();
        for applet in applets {
            self.entries.remove(&applet);
            eprintln!("xtask vm: {guest} replaces the busybox applet {applet}");
        }
        let stripped = without_debug_info(binary)?;
        self.add_binary_at(&stripped, &guest)?;
        Ok(guest)
    }

    fn add_binary_at(&mut self, binary: &Path, guest: &str) -> Result<()> {
        let meta = std::fs::metadata(binary).with_context(|| {
            format!(
                "{}: cannot read the binary to put in the guest (build it first?)",
                binary.display()
            )
        })?;
        if !meta.is_file() {
            bail!("{}: not a regular file", binary.display());
        }
        self.insert(
            guest,
            Entry::HostFile {
                source: binary.to_path_buf(),
                mode: 0o755,
            },
        );
        for lib in shared_libraries(binary)? {
            let guest_lib = lib
                .to_str()
                .with_context(|| format!("library path {} is not UTF-8", lib.display()))?
                .to_string();
            self.insert(
                &guest_lib,
                Entry::HostFile {
                    source: lib,
                    mode: 0o755,
                },
            );
        }
        Ok(())
    }

    /// Adds `/init`.
    pub fn add_init(&mut self, script: &str) {
        self.insert(
            "/init",
            Entry::Bytes {
                data: script.as_bytes().to_vec(),
                mode: 0o755,
            },
        );
    }

    /// Adds a file with these contents at the absolute guest `path`.
    pub fn add_bytes(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.insert(path, Entry::Bytes { data, mode });
    }

    fn add_text(&mut self, path: &str, text: &str, mode: u32) {
        self.insert(
            path,
            Entry::Bytes {
                data: text.as_bytes().to_vec(),
                mode,
            },
        );
    }

    /// Inserts `entry` at `path` and a directory for each missing ancestor.
    fn insert(&mut self, path: &str, entry: Entry) {
        let mut ancestor = Path::new(path).parent();
        while let Some(dir) = ancestor {
            let dir_str = dir.to_string_lossy();
            if dir_str != "/" && !dir_str.is_empty() {
                self.entries
                    .entry(dir_str.into_owned())
                    .or_insert(Entry::Dir);
            }
            ancestor = dir.parent();
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// Writes the archive through `gzip -n` to `out`.
    pub fn write_gzipped(&self, out: &Path) -> Result<Written> {
        let gzip = host::ensure_tool("gzip", "gzip")?;
        let out_file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut child = Command::new(&gzip)
            .args(["-n", "-6", "-c"])
            .stdin(Stdio::piped())
            .stdout(out_file)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", gzip.display()))?;
        let stdin = child.stdin.take().context("gzip's stdin was not piped")?;
        let mut writer = CountingWriter {
            inner: BufWriter::with_capacity(1 << 20, stdin),
            written: 0,
        };
        let written = self.write_cpio(&mut writer);
        let flushed = writer.inner.flush();
        let uncompressed_bytes = writer.written;
        drop(writer);
        let status = child.wait().context("waiting for gzip")?;
        written.context("writing the cpio archive")?;
        flushed.context("flushing the cpio archive to gzip")?;
        if !status.success() {
            bail!("gzip failed ({status}) writing {}", out.display());
        }
        let compressed_bytes = std::fs::metadata(out)
            .with_context(|| format!("reading {}", out.display()))?
            .len();
        Ok(Written {
            entries: self.entries.len(),
            uncompressed_bytes,
            compressed_bytes,
        })
    }

    /// Writes the uncompressed newc archive.
    fn write_cpio(&self, w: &mut impl Write) -> Result<()> {
        let mut cpio = CpioWriter { w, next_ino: 1 };
        let none = Rdev::default();
        for (path, entry) in &self.entries {
            let name = path.trim_start_matches('/');
            match entry {
                Entry::Dir => cpio.entry(name, 0o040_755, 2, none, 0, &[])?,
                Entry::Bytes { data, mode } => {
                    cpio.entry(name, 0o100_000 | mode, 1, none, data.len() as u64, data)?
                }
                Entry::Symlink { target } => cpio.entry(
                    name,
                    0o120_777,
                    1,
                    none,
                    target.len() as u64,
                    target.as_bytes(),
                )?,
                Entry::CharDevice { major, minor, mode } => {
                    let rdev = Rdev {
                        major: *major,
                        minor: *minor,
                    };
                    cpio.entry(name, 0o020_000 | mode, 1, rdev, 0, &[])?
                }
                Entry::HostFile { source, mode } => {
                    let mut file = File::open(source)
                        .with_context(|| format!("opening {}", source.display()))?;
                    let size = file
                        .metadata()
                        .with_context(|| format!("reading {}", source.display()))?
                        .len();
                    cpio.header(name, 0o100_000 | mode, 1, none, size)?;
                    let copied = io::copy(&mut (&mut file).take(size), cpio.w)
                        .with_context(|| format!("copying {}", source.display()))?;
                    if copied != size {
                        bail!("{} changed size while being archived", source.display());
                    }
                    cpio.pad(size)?;
                }
            }
        }
        cpio.entry("TRAILER!!!", 0, 1, none, 0, &[])?;
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Rdev {
    major: u32,
    minor: u32,
}

/// Writes `newc` entries: header, NUL-terminated name, data, each padded to
/// four bytes. All files are owned by root with mtime 0, so the archive is
/// reproducible.
struct CpioWriter<'a, W: Write> {
    w: &'a mut W,
    next_ino: u32,
}

impl<W: Write> CpioWriter<'_, W> {
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: Rdev,
        size: u64,
        data: &[u8],
    ) -> Result<()> {
        self.header(name, mode, nlink, rdev, size)?;
        self.w.write_all(data)?;
        self.pad(size)
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, rdev: Rdev, size: u64) -> Result<()> {
        let size32 = u32::try_from(size)
            .with_context(|| format!("{name}: {size} bytes is too large for a newc cpio entry"))?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        self.next_ino += 1;
        let name_size = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size32,
            0,
            0,
            rdev.major,
            rdev.minor,
            name_size as u32,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        self.w.write_all(header.as_bytes())?;
        self.w.write_all(name.as_bytes())?;
        self.w.write_all(&[0])?;
        self.pad((110 + name_size) as u64)
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let pad = (4 - (len % 4) as usize) % 4;
        self.w.write_all(&[0u8; 3][..pad])?;
        Ok(())
    }
}

struct CountingWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The shared libraries (and dynamic loader) `ldd` lists for `binary`;
/// empty for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let ldd = host::ensure_tool("ldd", "libc-bin")?;
    let output = Command::new(&ldd)
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ldd on {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        bail!(
            "ldd {} failed ({}): {stderr}(is it an x86-64 Linux executable?)",
            binary.display(),
            output.status
        );
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

/// Parses `ldd` output into the library paths it names.
fn parse_ldd(stdout: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, resolved)) => {
                let resolved = resolved.trim();
                if resolved.starts_with("not found") {
                    bail!(
                        "library {} not found on the host; install it, or the binary cannot run in the guest either",
                        name.trim()
                    );
                }
                resolved.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        // `linux-vdso.so.1` has no path: the kernel provides it.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A copy of `binary` without its debug sections (symbols kept, so a
/// panic's backtrace still names functions), cached in `target/vm/stripped`
/// and made again when the binary is newer. Debug test binaries are
/// 100-200 MiB with their DWARF and 10-20 without: a guest with 1 GiB of
/// memory holds the initramfs in RAM, so only stripped copies of several
/// test binaries fit.
fn without_debug_info(binary: &Path) -> Result<PathBuf> {
    let name = binary
        .file_name()
        .with_context(|| format!("{}: no file name", binary.display()))?;
    let dir = crate::vm::workspace_root().join("target/vm/stripped");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(name);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(src), Some(copy)) = (modified(binary), modified(&out)) {
        if copy >= src {
            return Ok(out);
        }
    }
    let objcopy = host::ensure_tool("objcopy", "binutils")?;
    // Unique per call: the guests' initramfs are built side by side.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let status = Command::new(objcopy)
        .arg("--strip-debug")
        .arg(binary)
        .arg(&tmp)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running objcopy --strip-debug on {}", binary.display()))?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "objcopy --strip-debug {} failed ({status})",
            binary.display()
        );
    }
    std::fs::rename(&tmp, &out)
        .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ldd_keeps_libraries_and_the_loader_but_not_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd6b5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(out).expect("valid ldd output");
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn parse_ldd_fails_on_a_missing_library() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("must fail");
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn insert_adds_parent_directories() {
        let mut fs = Initramfs::default();
        fs.add_text("/a/b/c", "x", 0o644);
        let paths: Vec<_> = fs.entries.keys().cloned().collect();
        assert_eq!(paths, ["/a", "/a/b", "/a/b/c"]);
        assert_eq!(fs.entries["/a"], Entry::Dir);
    }

    /// Reads back a newc archive: (name, mode, rdev major, data) per entry.
    fn read_newc(mut bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let field = |h: &[u8], i: usize| {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).expect("ascii");
            u32::from_str_radix(s, 16).expect("hex")
        };
        let padded = |n: usize| n.div_ceil(4) * 4;
        let mut out = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, major, name_size) = (
                field(bytes, 1),
                field(bytes, 6),
                field(bytes, 9),
                field(bytes, 11),
            );
            let name = String::from_utf8(bytes[110..110 + name_size as usize - 1].to_vec())
                .expect("utf8 name");
            bytes = &bytes[padded(110 + name_size as usize)..];
            let data = bytes[..size as usize].to_vec();
            bytes = &bytes[padded(size as usize)..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty());
                return out;
            }
            out.push((name, mode, major, data));
        }
    }

    #[test]
    fn cpio_round_trips_files_links_devices_and_directories() {
        let mut fs = Initramfs::default();
        fs.add_text("/etc/hosts", "127.0.0.1 localhost\n", 0o644);
        fs.insert(
            "/bin/sh",
            Entry::Symlink {
                target: "/bin/busybox".into(),
            },
        );
        fs.insert(
            "/dev/console",
            Entry::CharDevice {
                major: 5,
                minor: 1,
                mode: 0o600,
            },
        );
        let mut buf = Vec::new();
        fs.write_cpio(&mut buf).expect("in-memory write");
        assert_eq!(buf.len() % 4, 0);
        let entries = read_newc(&buf);
        assert_eq!(
            entries,
            vec![
                ("bin".into(), 0o040_755, 0, vec![]),
                ("bin/sh".into(), 0o120_777, 0, b"/bin/busybox".to_vec()),
                ("dev".into(), 0o040_755, 0, vec![]),
                ("dev/console".into(), 0o020_600, 5, vec![]),
                ("etc".into(), 0o040_755, 0, vec![]),
                (
                    "etc/hosts".into(),
                    0o100_644,
                    0,
                    b"127.0.0.1 localhost\n".to_vec()
                ),
            ]
        );
    }
}
