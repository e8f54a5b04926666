//! Finds the guest kernel: Debian's stock cloud kernel, downloaded once with
//! `apt-get download` and kept under `target/vm/kernels/<package>/`, or an
//! image the caller names. Never installs the kernel package on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::host;

/// Debian's meta-package that depends on the current cloud kernel.
pub const DEBIAN_CLOUD_META: &str = "linux-image-cloud-amd64";

/// Where the guest kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KernelSource {
    /// The `linux-image-6.1.0-NN-cloud-amd64` that `linux-image-cloud-amd64`
    /// currently depends on.
    #[default]
    DebianCloud,
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
        KernelSource::DebianCloud => match current_cloud_package() {
            Ok(package) => fetch(&package, cache_dir),
            Err(e) => {
                let Some(cached) = newest_cached(cache_dir) else {
                    return Err(e);
                };
                eprintln!(
                    "xtask vm: could not ask apt which cloud kernel is current ({e:#}); using the cached {}",
                    cached.image.display()
                );
                Ok(cached)
            }
        },
    }
}

/// Asks apt which kernel package `linux-image-cloud-amd64` depends on,
/// refreshing the package lists once if they do not know it.
fn current_cloud_package() -> Result<String> {
    let ask = || -> Result<Option<String>> {
        let out = host::run_captured(
            Command::new("apt-cache").args(["depends", DEBIAN_CLOUD_META]),
            "asking apt for the current cloud kernel",
        )?;
        Ok(parse_depends(&String::from_utf8_lossy(&out.stdout)))
    };
    if let Ok(Some(package)) = ask() {
        return Ok(package);
    }
    host::apt_get_update_once()?;
    ask()?.with_context(|| {
        format!("apt-cache depends {DEBIAN_CLOUD_META} names no linux-image-* package even after apt-get update; is this a Debian host with the main archive configured?")
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

/// The most recently cached kernel, for when apt cannot be asked.
fn newest_cached(cache_dir: &Path) -> Option<Kernel> {
    std::fs::read_dir(cache_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-image-"))
        .filter_map(|e| {
            let image = find_vmlinuz(&e.path())?;
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((
                modified,
                e.file_name().to_string_lossy().into_owned(),
                image,
            ))
        })
        .max_by_key(|(modified, _, _)| *modified)
        .map(|(_, package, image)| Kernel {
            image,
            package: Some(package),
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
}
