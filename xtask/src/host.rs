//! Host helpers shared by xtask commands: finding tools on `PATH`, installing
//! the Debian packages that provide them, and running commands with errors that
//! say what was run and what it printed. Never installs anything without saying
//! so first.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Returns the first executable called `name` on `PATH` (or `name` itself when
/// it contains a slash and exists).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Returns the path of `tool`, installing the Debian package `package` with
/// `apt-get install -y` first when the tool is missing.
///
/// ```no_run
/// let qemu = xtask::host::ensure_tool("qemu-system-x86_64", "qemu-system-x86")?;
/// # anyhow::Ok(())
/// ```
pub fn ensure_tool(tool: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_in_path(tool) {
        return Ok(path);
    }
    eprintln!("xtask: `{tool}` not found on PATH; installing Debian package `{package}` (apt-get install -y {package})");
    apt_install(&[package])?;
    find_in_path(tool).with_context(|| {
        format!("`{tool}` is still not on PATH after installing `{package}`; check the package provides it (dpkg -L {package})")
    })
}

/// `apt-get install -y` the given packages, running `apt-get update` first
/// when the package lists do not know them yet.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_captured(&mut cmd, "apt-get install")
    };
    if install().is_ok() {
        return Ok(());
    }
    apt_get_update_once()?;
    install().with_context(|| {
        format!(
            "installing {} failed; install it by hand (as root: apt-get install -y {})",
            packages.join(", "),
            packages.join(" ")
        )
    })?;
    Ok(())
}

/// Runs `apt-get update` at most once per process (later calls return the
/// first call's outcome).
pub fn apt_get_update_once() -> Result<()> {
    static DONE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if done.is_none() {
        eprintln!("xtask: refreshing Debian package lists (apt-get update)");
        let outcome = run_captured(Command::new("apt-get").arg("update"), "apt-get update")
            .map(|_| ())
            .map_err(|e| format!("{e:#}"));
        *done = Some(outcome);
    }
    match done.as_ref() {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => bail!("{e} (apt-get update needs root and access to the Debian mirror)"),
        None => bail!("apt-get update did not record an outcome"),
    }
}

/// Runs `cmd` with its output captured; fails with the command line, exit
/// status and stderr when it cannot be started or exits non-zero.
pub fn run_captured(cmd: &mut Command, what: &str) -> Result<Output> {
    let line = command_line(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not start `{line}`"))?;
    if !output.status.success() {
        bail!(
            "{what}: `{line}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The command as one line, for messages and logs.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `cargo <args> --message-format=json` from the workspace root and
/// return the path of the executable it built for target `name`.
pub fn cargo_executable(args: &[&str], name: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::vm::workspace_root())
        .args(args)
        .arg("--message-format=json")
        .output()
        .with_context(|| format!("building {name}"))?;
    if !out.status.success() {
        bail!(
            "building {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo reported no {name} executable"))
}
