//! Finds the guest kernel: a Debian stock cloud kernel, downloaded once with
//! `apt-get download` and kept under `target/vm/kernels/<package>/`, or an
//! image the caller names. Which package a Debian meta-package (the 6.1
//! `linux-image-cloud-amd64`, the 6.12 `linux-image-6.12-cloud-amd64`) stands
//! for is asked of apt each run, so the newest one apt offers is used. The
//! package's modules are unpacked (and indexed with `depmod`) only when a
//! run asks for modules, once, beside the image. Never installs the kernel
//! package on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::modules::ModuleTree;
use crate::host;

/// Debian 12's meta-package that depends on the current 6.1 cloud kernel.
pub const DEBIAN_CLOUD_META: &str = "linux-image-cloud-amd64";

/// Debian 12's meta-package (bookworm-security) that depends on the current
/// 6.12 cloud kernel, `linux-image-6.12.*+deb12-cloud-amd64`.
pub const DEBIAN_612_CLOUD_META: &str = "linux-image-6.12-cloud-amd64";

/// Where the guest kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KernelSource {
    /// The `linux-image-6.1.0-NN-cloud-amd64` that `linux-image-cloud-amd64`
    /// currently depends on.
    #[default]
    DebianCloud,
    /// The kernel package a Debian meta-package currently depends on, e.g.
    /// [`DEBIAN_612_CLOUD_META`] for the newest 6.12 cloud kernel.
    DebianMeta(String),
    /// An exact Debian kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    DebianPackage(String),
    /// A bzImage on disk.
    Image(PathBuf),
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage (`vmlinuz-*`).
    pub image: PathBuf,
    /// The Debian package it came from, if any.
    pub package: Option<String>,
}

/// Resolves `source` to a bootable image, downloading into `cache_dir` when needed.
pub fn resolve(source: &KernelSource, cache_dir: &Path) -> Result<Kernel> {
    match source {
        KernelSource::Image(image) => {
            if !image.is_file() {
                bail!("kernel image {} does not exist", image.display());
            }
            Ok(Kernel {
                image: image.clone(),
                package: None,
            })
        }
        KernelSource::DebianPackage(package) => fetch(package, cache_dir),
        KernelSource::DebianCloud => resolve_meta(DEBIAN_CLOUD_META, cache_dir),
        KernelSource::DebianMeta(meta) => resolve_meta(meta, cache_dir),
    }
}

/// The kernel package `meta` depends on, fetched. When apt cannot be asked,
/// the package `meta` last resolved to, if it is cached.
fn resolve_meta(meta: &str, cache_dir: &Path) -> Result<Kernel> {
    let package = match current_package(meta) {
        Ok(package) => package,
        Err(e) => {
            let Some(cached) = last_resolved(meta, cache_dir) else {
                return Err(e);
            };
            eprintln!(
                "xtask vm: could not ask apt which kernel {meta} stands for ({e:#}); using the cached {}",
                cached.image.display()
            );
            return Ok(cached);
        }
    };
    let kernel = match fetch(&package, cache_dir) {
        Ok(kernel) => kernel,
        // Stale package lists can name a package the mirror has dropped:
        // refresh them (at most once per process) and ask again.
        Err(e) => {
            if let Err(u) = host::apt_get_update_once() {
                return Err(e.context(u));
            }
            let fresh = current_package(meta)?;
            if fresh == package {
                return Err(e);
            }
            fetch(&fresh, cache_dir)?
        }
    };
    if let Some(package) = &kernel.package {
        // Best effort: only the offline fallback reads it.
        let _ = std::fs::write(resolved_record(meta, cache_dir), format!("{package}\n"));
    }
    Ok(kernel)
}

/// Asks apt which kernel package `meta` depends on, refreshing the package
/// lists once if they do not know it.
fn current_package(meta: &str) -> Result<String> {
    let ask = || -> Result<Option<String>> {
        let out = host::run_captured(
            Command::new("apt-cache").args(["depends", meta]),
            "asking apt for the current guest kernel",
        )?;
        Ok(parse_depends(&String::from_utf8_lossy(&out.stdout)))
    };
    if let Ok(Some(package)) = ask() {
        return Ok(package);
    }
    host::apt_get_update_once()?;
    ask()?.with_context(|| {
        format!("apt-cache depends {meta} names no linux-image-* package even after apt-get update; is this a Debian 12 host with the main and security archives configured?")
    })
}

/// The file that records which package `meta` last resolved to.
fn resolved_record(meta: &str, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("{meta}.resolved"))
}

/// The cached kernel `meta` last resolved to, for when apt cannot be asked.
fn last_resolved(meta: &str, cache_dir: &Path) -> Option<Kernel> {
    let record = std::fs::read_to_string(resolved_record(meta, cache_dir)).ok()?;
    let package = record.trim();
    if package.is_empty() || package.contains(['/', ' ']) {
        return None;
    }
    let image = find_vmlinuz(&cache_dir.join(package))?;
    Some(Kernel {
        image,
        package: Some(package.to_string()),
    })
}

/// The `linux-image-*` package in `apt-cache depends` output.
fn parse_depends(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let dep = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        (dep.starts_with("linux-image-") && !dep.starts_with('<')).then(|| dep.to_string())
    })
}

/// Returns the cached kernel of `package`, downloading and unpacking it first
/// when it is not cached.
fn fetch(package: &str, cache_dir: &Path) -> Result<Kernel> {
    if !package.starts_with("linux-image-") || package.contains(['/', ' ']) {
        bail!("{package:?} is not a Debian kernel package name (linux-image-...)");
    }
    let dir = cache_dir.join(package);
    if let Some(image) = find_vmlinuz(&dir) {
        return Ok(Kernel {
            image,
            package: Some(package.to_string()),
        });
    }
    let dpkg = host::ensure_tool("dpkg", "dpkg")?;
    let started = Instant::now();
    let tmp = cache_dir.join(format!(".{package}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    eprintln!(
        "xtask vm: downloading {package} (apt-get download) into {}",
        dir.display()
    );
    let (deb_name, deb_bytes) = match download_and_unpack(package, &tmp, &dpkg) {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!(
                "fetching guest kernel {package} (check the name with `apt-cache policy {package}`)"
            )));
        }
    };
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another run cached it first; use theirs.
        Err(_) if find_vmlinuz(&dir).is_some() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))
        }
    }
    let image =
        find_vmlinuz(&dir).with_context(|| format!("{} lost its vmlinuz", dir.display()))?;
    eprintln!(
        "xtask vm: downloaded {} ({:.1} MiB) in {:.1} s; cached {}",
        deb_name,
        deb_bytes as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64(),
        image.display()
    );
    Ok(Kernel {
        image,
        package: Some(package.to_string()),
    })
}

/// Downloads `package` into `tmp` and leaves there its `vmlinuz-*` and
/// `config-*` (the modules are dropped) and the `.deb`. Returns the `.deb`'s
/// file name and size.
fn download_and_unpack(package: &str, tmp: &Path, dpkg: &Path) -> Result<(String, u64)> {
    let download = || {
        host::run_captured(
            Command::new("apt-get")
                .args(["-o", "APT::Sandbox::User=root", "download", package])
                .current_dir(tmp),
            "downloading the guest kernel",
        )
    };
    if download().is_err() {
        host::apt_get_update_once()?;
        download().with_context(|| {
            format!("apt-get download {package} failed even after apt-get update")
        })?;
    }
    let deb = std::fs::read_dir(tmp)
        .with_context(|| format!("listing {}", tmp.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                tmp.display()
            )
        })?;
    let deb_bytes = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    let root = tmp.join("root");
    host::run_captured(
        Command::new(dpkg).arg("-x").arg(&deb).arg(&root),
        "unpacking the guest kernel",
    )?;
    let boot = root.join("boot");
    find_vmlinuz(&boot).with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    // Keep the image and its config (handy for checking CONFIG_*); drop the modules.
    for entry in std::fs::read_dir(&boot).with_context(|| format!("listing {}", boot.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("vmlinuz-") || name.starts_with("config-") {
            std::fs::rename(&path, tmp.join(&name))
                .with_context(|| format!("moving {} into the cache", path.display()))?;
        }
    }
    std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((deb_name, deb_bytes))
}

/// The directory under a kernel's cache directory that holds its unpacked
/// modules (`lib/modules/<release>/...`).
const MODULES_DIR: &str = "modules";

/// The unpacked, indexed modules of `kernel`: the first call unpacks
/// `lib/modules` from the cached `.deb` into `<package>/modules/` and runs
/// `depmod` on it (Debian's package ships no `modules.dep`: its postinst
/// makes one); later calls reuse it.
pub fn module_tree(kernel: &Kernel, cache_dir: &Path) -> Result<ModuleTree> {
    let Some(package) = &kernel.package else {
        bail!(
            "kernel modules were asked for, but the kernel {} is not a Debian package: \
             only a packaged kernel's modules can be put in the guest",
            kernel.image.display()
        );
    };
    let package_dir = cache_dir.join(package);
    let modules_dir = package_dir.join(MODULES_DIR);
    if let Some(tree) = find_module_tree(&modules_dir) {
        return Ok(tree);
    }
    let deb = std::fs::read_dir(&package_dir)
        .with_context(|| format!("listing {}", package_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| {
            format!(
                "{} holds no .deb to take the modules from; remove that directory so the next run downloads the kernel again",
                package_dir.display()
            )
        })?;
    let dpkg = host::ensure_tool("dpkg", "dpkg")?;
    let depmod = host::ensure_tool("depmod", "kmod")?;
    let started = Instant::now();
    let tmp = package_dir.join(format!(".{MODULES_DIR}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let unpacked = (|| -> Result<ModuleTree> {
        host::run_captured(
            Command::new(&dpkg).arg("-x").arg(&deb).arg(&tmp),
            "unpacking the guest kernel's modules",
        )?;
        // Only lib/modules is kept.
        for entry in
            std::fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))?
        {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != "lib") {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        let release = only_release(&tmp.join("lib").join("modules"))
            .with_context(|| format!("{} has no lib/modules/<release>", deb.display()))?;
        host::run_captured(
            Command::new(&depmod).arg("-b").arg(&tmp).arg(&release),
            "indexing the guest kernel's modules",
        )?;
        find_module_tree(&tmp)
            .with_context(|| format!("depmod wrote no modules.dep under {}", tmp.display()))
    })();
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("unpacking the modules of {package}")));
    }
    match std::fs::rename(&tmp, &modules_dir) {
        Ok(()) => {}
        // Another run unpacked them first; use theirs.
        Err(_) if find_module_tree(&modules_dir).is_some() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e)
                .with_context(|| format!("moving {} to {}", tmp.display(), modules_dir.display()));
        }
    }
    let tree = find_module_tree(&modules_dir)
        .with_context(|| format!("{} lost its modules.dep", modules_dir.display()))?;
    eprintln!(
        "xtask vm: unpacked and indexed the modules of {package} in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        tree.dir.display()
    );
    Ok(tree)
}

/// The single directory in `dir` (a `lib/modules`), by name.
fn only_release(dir: &Path) -> Option<String> {
    let mut releases = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let release = releases.next()?;
    releases.next().is_none().then_some(release)
}

/// The indexed module tree under `root` (`root/lib/modules/<release>` with
/// a `modules.dep`), if any.
fn find_module_tree(root: &Path) -> Option<ModuleTree> {
    let release = only_release(&root.join("lib").join("modules"))?;
    let dir = root.join("lib").join("modules").join(&release);
    dir.join("modules.dep")
        .is_file()
        .then_some(ModuleTree { release, dir })
}

/// The single `vmlinuz-*` in `dir`, if any.
fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_depends_finds_the_kernel_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
        assert_eq!(
            parse_depends("x\n |Depends: linux-image-6.1.0-9-cloud-amd64\n").as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
    }

    #[test]
    fn parse_depends_finds_the_612_kernel_package() {
        let out =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
    }

    #[test]
    fn offline_fallback_uses_the_package_this_meta_last_resolved_to() {
        let dir = std::env::temp_dir().join(format!("xtask-kernel-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (package, image) in [
            (
                "linux-image-6.1.0-57-cloud-amd64",
                "vmlinuz-6.1.0-57-cloud-amd64",
            ),
            (
                "linux-image-6.12.117+deb12-cloud-amd64",
                "vmlinuz-6.12.117+deb12-cloud-amd64",
            ),
        ] {
            std::fs::create_dir_all(dir.join(package)).expect("temp dir");
            std::fs::write(dir.join(package).join(image), b"x").expect("temp file");
        }
        assert!(last_resolved(DEBIAN_612_CLOUD_META, &dir).is_none());
        std::fs::write(
            resolved_record(DEBIAN_CLOUD_META, &dir),
            "linux-image-6.1.0-57-cloud-amd64\n",
        )
        .expect("record");
        std::fs::write(
            resolved_record(DEBIAN_612_CLOUD_META, &dir),
            "linux-image-6.12.117+deb12-cloud-amd64\n",
        )
        .expect("record");
        let old = last_resolved(DEBIAN_CLOUD_META, &dir).expect("6.1 cached");
        let new = last_resolved(DEBIAN_612_CLOUD_META, &dir).expect("6.12 cached");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            old.package.as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert!(old.image.ends_with("vmlinuz-6.1.0-57-cloud-amd64"));
        assert_eq!(
            new.package.as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
    }
}
