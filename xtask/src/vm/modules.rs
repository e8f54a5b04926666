//! Kernel modules for the guest: which files to load, in which order, for
//! the modules a run asks for by name. Reads a kernel's `modules.dep` (made
//! by `depmod` when the kernel package is unpacked, see `kernel.rs`) and
//! `modules.builtin`; resolves each wanted module and everything it depends
//! on, dependencies first, each once, built-in ones skipped. Then reads each
//! file from the host, decompressed (`xz`, `zstd`, `gzip`), for the
//! initramfs. The resolution is pure; it never guesses a module the index
//! does not name, and never follows soft dependencies (`modules.softdep`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::host;

/// A module name as the kernel spells it: `nf-tables` and `nf_tables` are
/// one module (`modprobe` treats `-` and `_` alike).
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The module name of a path in `modules.dep`/`modules.builtin`:
/// `kernel/net/netfilter/nf_tables.ko.xz` is `nf_tables`.
fn name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (stem, _) = file.split_once(".ko")?;
    (!stem.is_empty()).then(|| normalize(stem))
}

/// One kernel's module index.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// Module name → (path relative to `lib/modules/<release>`, the paths
    /// of every module it needs, as `modules.dep` lists them).
    modules: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

/// A module file to load, relative to `lib/modules/<release>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    pub name: String,
    /// As in `modules.dep`, possibly compressed (`.ko.xz`).
    pub path: String,
}

impl ModuleFile {
    /// The path the file has in the guest, uncompressed:
    /// `kernel/net/netfilter/nf_tables.ko`.
    pub fn uncompressed_path(&self) -> &str {
        match self.path.find(".ko") {
            Some(at) => &self.path[..at + 3],
            None => &self.path,
        }
    }
}

/// What [`ModuleIndex::resolve`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Files to load, each after every module it needs; no duplicates.
    pub load: Vec<ModuleFile>,
    /// Modules asked for that the kernel has built in (nothing to load).
    pub builtin: Vec<String>,
    /// Optional modules (asked for as `name?`) this kernel does not have.
    pub absent: Vec<String>,
}

impl ModuleIndex {
    /// Parses `modules.dep` (`path: dep-path dep-path ...` per line) and
    /// `modules.builtin` (one path per line).
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<Self> {
        let mut index = Self::default();
        for (n, line) in modules_dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                bail!("modules.dep line {}: no ':' in {line:?}", n + 1);
            };
            let name = name_of(path)
                .with_context(|| format!("modules.dep line {}: {path:?} is not a .ko", n + 1))?;
            let deps = deps.split_whitespace().map(str::to_string).collect();
            index.modules.insert(name, (path.trim().to_string(), deps));
        }
        index.builtin = modules_builtin
            .lines()
            .filter_map(|l| name_of(l.trim()))
            .collect();
        Ok(index)
    }

    /// The files to load for `wanted` (module names), dependencies first.
    /// A module the kernel has built in is listed in
    /// [`Resolution::builtin`] and loads nothing; a name neither in
    /// `modules.dep` nor built in is an error naming it, unless it is
    /// asked for as optional, `name?` (for a module some kernels fold into
    /// another, as 6.12 does `nft_objref` into `nf_tables`): then it is
    /// listed in [`Resolution::absent`].
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Resolution> {
        let mut out = Resolution::default();
        let mut done = BTreeSet::new();
        for name in wanted {
            let (name, optional) = match name.as_ref().trim().strip_suffix('?') {
                Some(name) => (normalize(name), true),
                None => (normalize(name.as_ref()), false),
            };
            if self.builtin.contains(&name) {
                if !out.builtin.contains(&name) {
                    out.builtin.push(name);
                }
                continue;
            }
            if optional && !self.modules.contains_key(&name) {
                if !out.absent.contains(&name) {
                    out.absent.push(name);
                }
                continue;
            }
            if !self.modules.contains_key(&name) {
                bail!(
                    "kernel module {name:?} is neither in this kernel's modules.dep nor built in \
                     (modules.builtin); check the name (`find <cache>/modules -name '{name}.ko*'`) \
                     and the kernel's config (CONFIG_*=m)"
                );
            }
            self.visit(&name, &mut Vec::new(), &mut done, &mut out.load)?;
        }
        Ok(out)
    }

    /// Depth-first: every dependency of `name` is pushed before it. `stack`
    /// holds the chain being visited, to name a cycle.
    fn visit(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        load: &mut Vec<ModuleFile>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!(
                "modules.dep has a dependency cycle: {} -> {name}",
                stack.join(" -> ")
            );
        }
        let Some((path, deps)) = self.modules.get(name) else {
            let needed_by = stack.last().map_or("?", String::as_str);
            bail!(
                "kernel module {name:?} (needed by {needed_by:?}) is not in this kernel's modules.dep"
            );
        };
        stack.push(name.to_string());
        // `modules.dep` lists a module's needs so that modprobe loads them
        // from the last to the first; keep that order.
        for dep in deps.iter().rev() {
            let dep_name =
                name_of(dep).with_context(|| format!("modules.dep: {dep:?} is not a .ko"))?;
            if self.builtin.contains(&dep_name) {
                continue;
            }
            self.visit(&dep_name, stack, done, load)?;
        }
        stack.pop();
        done.insert(name.to_string());
        load.push(ModuleFile {
            name: name.to_string(),
            path: path.clone(),
        });
        Ok(())
    }
}

/// A kernel's unpacked modules: `dir` is `.../lib/modules/<release>`, with
/// `modules.dep` and `modules.builtin`.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    pub release: String,
    pub dir: PathBuf,
}

impl ModuleTree {
    /// Reads the tree's index.
    pub fn index(&self) -> Result<ModuleIndex> {
        let read = |file: &str| {
            let path = self.dir.join(file);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let builtin = match read("modules.builtin") {
            Ok(text) => text,
            // A kernel with no built-in modules may ship no list.
            Err(_) if !self.dir.join("modules.builtin").exists() => String::new(),
            Err(e) => return Err(e),
        };
        ModuleIndex::parse(&read("modules.dep")?, &builtin)
            .with_context(|| format!("parsing the module index in {}", self.dir.display()))
    }

    /// The contents of `module`, decompressed.
    pub fn read(&self, module: &ModuleFile) -> Result<Vec<u8>> {
        let path = self.dir.join(&module.path);
        read_decompressed(&path)
            .with_context(|| format!("reading kernel module {} ({})", module.name, path.display()))
    }
}

/// The tool (program, Debian package, arguments) that decompresses `path`,
/// or `None` for an uncompressed `.ko`.
fn decompressor(
    path: &Path,
) -> Result<Option<(&'static str, &'static str, &'static [&'static str])>> {
    let name = path.to_string_lossy();
    Ok(if name.ends_with(".ko") {
        None
    } else if name.ends_with(".ko.xz") {
        Some(("xz", "xz-utils", &["-dc"]))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", "zstd", &["-dcq"]))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", "gzip", &["-dc"]))
    } else {
        bail!("{name}: not a kernel module file (.ko, .ko.xz, .ko.zst or .ko.gz)");
    })
}

fn read_decompressed(path: &Path) -> Result<Vec<u8>> {
    let Some((tool, package, args)) = decompressor(path)? else {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let program = host::ensure_tool(tool, package)?;
    let out = Command::new(&program)
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} on {}", program.display(), path.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} could not decompress {} ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/lib/libcrc32c.ko.xz:
kernel/net/netfilter/nfnetlink.ko.xz:
kernel/net/netfilter/nf_tables.ko.xz: kernel/net/netfilter/nfnetlink.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nft_numgen.ko.xz: kernel/net/netfilter/nf_tables.ko.xz kernel/net/netfilter/nfnetlink.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/ipv4/netfilter/nf_reject_ipv4.ko.xz:
kernel/net/ipv6/netfilter/nf_reject_ipv6.ko.xz:
kernel/net/netfilter/nft_reject.ko.xz: kernel/net/netfilter/nf_tables.ko.xz kernel/net/netfilter/nfnetlink.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nft_reject_inet.ko.xz: kernel/net/ipv4/netfilter/nf_reject_ipv4.ko.xz kernel/net/ipv6/netfilter/nf_reject_ipv6.ko.xz kernel/net/netfilter/nft_reject.ko.xz kernel/net/netfilter/nf_tables.ko.xz kernel/net/netfilter/nfnetlink.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/drivers/net/veth.ko.xz:
kernel/net/sched/sch-netem.ko.zst:
";
    const BUILTIN: &str = "kernel/net/ipv4/tcp_cubic.ko\nkernel/crypto/crc32c_generic.ko\n";

    fn names(r: &Resolution) -> Vec<&str> {
        r.load.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn dependencies_load_first_in_modprobe_order() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let r = index.resolve(&["nft_numgen"]).expect("resolves");
        assert_eq!(
            names(&r),
            ["libcrc32c", "nfnetlink", "nf_tables", "nft_numgen"]
        );
        assert_eq!(r.load[3].path, "kernel/net/netfilter/nft_numgen.ko.xz");
        assert!(r.builtin.is_empty());
    }

    #[test]
    fn a_module_shared_by_several_loads_once() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let r = index
            .resolve(&[
                "nft_reject_inet",
                "nft_numgen",
                "nf_tables",
                "veth",
                "nft_numgen",
            ])
            .expect("resolves");
        assert_eq!(
            names(&r),
            [
                "libcrc32c",
                "nfnetlink",
                "nf_tables",
                "nft_reject",
                "nf_reject_ipv6",
                "nf_reject_ipv4",
                "nft_reject_inet",
                "nft_numgen",
                "veth",
            ]
        );
    }

    #[test]
    fn every_module_comes_after_all_it_needs() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let r = index
            .resolve(&["nft_reject_inet", "veth", "nft_numgen"])
            .expect("resolves");
        for (i, m) in r.load.iter().enumerate() {
            for dep in &index.modules[&m.name].1 {
                let dep = name_of(dep).expect("a .ko");
                let at = r.load.iter().position(|l| l.name == dep).expect("loaded");
                assert!(at < i, "{dep} must load before {}", m.name);
            }
        }
    }

    #[test]
    fn built_in_modules_are_skipped_and_reported() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let r = index
            .resolve(&["tcp_cubic", "veth", "tcp-cubic"])
            .expect("resolves");
        assert_eq!(names(&r), ["veth"]);
        assert_eq!(r.builtin, ["tcp_cubic"]);
        // A dependency that is built in is not loaded either.
        let dep = "kernel/a.ko: kernel/crypto/crc32c_generic.ko\n";
        let index = ModuleIndex::parse(dep, BUILTIN).expect("valid index");
        assert_eq!(names(&index.resolve(&["a"]).expect("resolves")), ["a"]);
    }

    #[test]
    fn dashes_and_underscores_name_one_module() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let r = index
            .resolve(&["sch_netem", "nf-tables"])
            .expect("resolves");
        assert_eq!(
            names(&r),
            ["sch_netem", "libcrc32c", "nfnetlink", "nf_tables"]
        );
        assert_eq!(
            r.load[0].uncompressed_path(),
            "kernel/net/sched/sch-netem.ko"
        );
    }

    #[test]
    fn a_missing_module_is_an_error_naming_it() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let err = index
            .resolve(&["veth", "nft_fib_inet"])
            .expect_err("nft_fib_inet is not in the index");
        let msg = format!("{err:#}");
        assert!(msg.contains("\"nft_fib_inet\""), "{msg}");
        // A dependency missing from the index is named with who needs it.
        let dep = "kernel/a.ko: kernel/b.ko\n";
        let err = ModuleIndex::parse(dep, "")
            .expect("valid index")
            .resolve(&["a"])
            .expect_err("b is not in the index");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("\"b\"") && msg.contains("needed by \"a\""),
            "{msg}"
        );
    }

    #[test]
    fn an_optional_module_this_kernel_lacks_is_reported_not_an_error() {
        let index = ModuleIndex::parse(DEP, BUILTIN).expect("valid index");
        let r = index
            .resolve(&["nft_objref?", "nft_numgen?", "tcp_cubic?"])
            .expect("resolves");
        assert_eq!(
            names(&r),
            ["libcrc32c", "nfnetlink", "nf_tables", "nft_numgen"]
        );
        assert_eq!(r.absent, ["nft_objref"]);
        assert_eq!(r.builtin, ["tcp_cubic"]);
    }

    #[test]
    fn a_cycle_is_an_error_not_a_hang() {
        let dep = "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n";
        let err = ModuleIndex::parse(dep, "")
            .expect("valid index")
            .resolve(&["a"])
            .expect_err("a cycle");
        assert!(format!("{err:#}").contains("a -> b -> a"), "{err:#}");
    }

    #[test]
    fn a_malformed_index_is_an_error() {
        assert!(ModuleIndex::parse("kernel/a.ko kernel/b.ko\n", "").is_err());
        assert!(ModuleIndex::parse("kernel/readme.txt:\n", "").is_err());
    }

    #[test]
    fn decompressors_by_extension() {
        assert_eq!(decompressor(Path::new("a/b.ko")).expect("known"), None);
        assert_eq!(
            decompressor(Path::new("a/b.ko.xz"))
                .expect("known")
                .map(|d| d.0),
            Some("xz")
        );
        assert_eq!(
            decompressor(Path::new("a/b.ko.zst"))
                .expect("known")
                .map(|d| d.0),
            Some("zstd")
        );
        assert!(decompressor(Path::new("a/b.ko.bz2")).is_err());
    }
}
