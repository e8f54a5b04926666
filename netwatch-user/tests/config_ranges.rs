//! Out-of-range settings through the real binary: the agent exits with
//! status 2 (a usage error, as for a flag clap refuses) and one line that
//! names the setting, the value and the allowed range, before it loads or
//! opens anything; never a panic. No root needed.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");

/// Run the agent with `args` and `env`; (exit status, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    // An empty config file of our own, so the host's
    // /etc/netwatch-agent/config.toml never takes part.
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").expect("writing the config file");
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NETWATCH_INTERVAL")
        .output()
        .expect("running netwatch-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_interval_of_1e300_is_refused_with_status_2_and_the_range() {
    let (code, err) = run(&["--once", "--interval", "1e300"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: interval 1e300: must be between 0.05 and 86400 seconds"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn environment_and_command_line_values_out_of_range_are_refused() {
    // NETWATCH_INTERVAL is read by clap; set it after the removal above.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").expect("writing the config file");
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .arg("--once")
        .env("NETWATCH_INTERVAL", "inf")
        .output()
        .expect("running netwatch-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: interval inf: must be between 0.05 and 86400 seconds"
    );

    let (code, err) = run(&["--once", "--max-sockets", "4294967295"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: max_sockets 4294967295: must be between 1 and 16777216"
    );
}

#[test]
fn a_config_file_value_out_of_range_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[alerts]\nactive_secs = nan\n").expect("writing the config file");
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .arg("--once")
        .env_remove("NETWATCH_INTERVAL")
        .output()
        .expect("running netwatch-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: [alerts] active_secs NaN: must be between 1 and 86400 seconds"
    );
}
