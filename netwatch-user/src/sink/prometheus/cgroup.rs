//! The cgroup of a process, for the `cgroup` label of its series:
//! [`parse_cgroup`] reads the text of `/proc/<pid>/cgroup` (pure), and
//! `read_cgroup` does the one read of that file. An unreadable file (the
//! process is gone) or a text of another shape gives an empty path, never
//! an error or a panic.

/// The cgroup path of `pid`: the cgroup v2 entry of `/proc/<pid>/cgroup`,
/// else the first v1 entry's path; empty if the process is gone.
#[cfg(target_os = "linux")]
pub(super) fn read_cgroup(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| parse_cgroup(&t))
        .unwrap_or_default()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn read_cgroup(_pid: u32) -> String {
    String::new()
}

/// The path of a `/proc/<pid>/cgroup` text: the `0::` (v2) line's, else
/// the first line's third field.
pub fn parse_cgroup(text: &str) -> String {
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
    let path = v2.or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)));
    path.unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_read_from_v2_then_v1() {
        assert_eq!(
            parse_cgroup("0::/system.slice/sshd.service\n"),
            "/system.slice/sshd.service"
        );
        assert_eq!(
            parse_cgroup("12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/x\n"),
            "/x"
        );
        assert_eq!(parse_cgroup("12:cpu,cpuacct:/docker/abc\n"), "/docker/abc");
        assert_eq!(parse_cgroup(""), "");
    }
}
