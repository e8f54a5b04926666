//! Out-of-range settings through the real binary: the agent exits with
//! status 2 (a usage error, as for a flag clap refuses) and one line that
//! names the setting, the value and the allowed range, before it loads or
//! opens anything; never a panic. No root needed.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");

/// Run the agent with a config file of our own holding `config` (so the
/// host's /etc/netwatch-agent/config.toml never takes part), `args` and
/// `env` (NETWATCH_INTERVAL only if `env` sets it); (exit status, stderr).
fn run(config: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config).expect("writing the config file");
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&file)
        .args(args)
        .env_remove("NETWATCH_INTERVAL")
        .envs(env.iter().copied())
        .output()
        .expect("running netwatch-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_interval_of_1e300_is_refused_with_status_2_and_the_range() {
    let (code, err) = run("", &["--once", "--interval", "1e300"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: interval 1e300: must be between 0.05 and 86400 seconds"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn environment_and_command_line_values_out_of_range_are_refused() {
    // NETWATCH_INTERVAL is read by clap.
    let (code, err) = run("", &["--once"], &[("NETWATCH_INTERVAL", "inf")]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: interval inf: must be between 0.05 and 86400 seconds"
    );

    let (code, err) = run("", &["--once", "--max-sockets", "4294967295"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: max_sockets 4294967295: must be between 1 and 16777216"
    );
}

#[test]
fn a_config_file_value_out_of_range_is_refused_naming_it() {
    let (code, err) = run("[alerts]\nactive_secs = nan\n", &["--once"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: [alerts] active_secs NaN: must be between 1 and 86400 seconds"
    );
}

#[test]
fn max_processes_out_of_range_is_refused_from_the_command_line_and_the_file() {
    let (code, err) = run("", &["--once", "--max-processes", "1000001"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: max_processes 1000001: must be between 0 and 1000000"
    );
    let (code, err) = run("max_processes = 2000000\n", &["--once"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "netwatch-agent: max_processes 2000000: must be between 0 and 1000000"
    );
}
