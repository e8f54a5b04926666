//! The `[ingest]` and `[spool]` sections and their flags: where snapshots
//! are delivered (the endpoint's URL, checked), with which key (from a key
//! file or `NETWATCH_API_KEY`, never argv), and the spool and batch bounds.
//! It must never print the key ([`ApiKey`] redacts it) nor a password
//! given in the endpoint's URL ([`redact_url`]).

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::{int_in, secs};
use super::file::{refused, IngestFile, SpoolFile};
use super::{invalid, limits, Args, ConfigError, API_KEY_ENV};

/// The on-disk spool of snapshots not yet accepted by the cloud.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/netwatch-agent/spool";
/// The persisted host id (the cloud's primary key for this host).
pub const DEFAULT_HOST_ID_FILE: &str = "/var/lib/netwatch-agent/host-id";
/// Spool bound when none is configured.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// At most this many snapshots per ingest request (the cloud's limit).
pub const MAX_BATCH_SNAPSHOTS: usize = 100;
/// At most this many bytes of JSON per ingest request (the cloud's 5 MB).
pub const MAX_BATCH_BYTES: usize = 5_000_000;
/// The first retry delay after a failed delivery, seconds.
pub const DEFAULT_RETRY_INITIAL_SECS: f64 = 1.0;
/// The longest retry delay, seconds (also its upper bound).
pub const DEFAULT_RETRY_MAX_SECS: f64 = 300.0;
/// How long one ingest request may take, seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: f64 = 30.0;
/// How long SIGTERM waits for the spool to drain, seconds.
pub const DEFAULT_FLUSH_TIMEOUT_SECS: f64 = 10.0;
/// After a 402, how long until one batch is sent again, seconds (an hour).
pub const DEFAULT_PAYMENT_RECHECK_SECS: f64 = 3600.0;

/// The NetWatch Cloud API key. Its `Debug` and `Display` print
/// `<redacted>`; only [`ApiKey::expose`] gives the text, for the one header
/// that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key from its text (surrounding whitespace removed). Refuses an
    /// empty key and one that cannot be sent in an HTTP header, without
    /// repeating the key in the error.
    pub fn new(text: &str) -> Result<Self, ConfigError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ConfigError::ApiKey("it is empty".into()));
        }
        if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ConfigError::ApiKey(
                "it holds spaces, control or non-ASCII characters, which an HTTP header cannot carry"
                    .into(),
            ));
        }
        Ok(Self(t.to_string()))
    }

    /// The key's text. Use it for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the ingest sink and its spool need.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The full ingest URL (`…/api/v1/ingest`).
    pub url: String,
    pub api_key: ApiKey,
    /// A private CA (PEM) trusted besides the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    pub host_id_file: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub batch_max_snapshots: usize,
    pub batch_max_bytes: usize,
    /// First retry delay after a failure; doubles per failure.
    pub retry_initial: Duration,
    /// Retry delay cap (5 minutes at most).
    pub retry_max: Duration,
    pub request_timeout: Duration,
    /// How long SIGTERM waits for the spool to drain before exiting.
    pub flush_timeout: Duration,
    /// After a 402, one batch is sent again this long after (default 1 h).
    pub payment_recheck: Duration,
}

/// Read the API key from `path` (one line; surrounding whitespace ignored).
/// Opened once and checked on the open descriptor
/// ([`crate::files::open_trusted`]): no symlink swap between the check and
/// the read.
pub fn read_api_key_file(path: &Path) -> Result<ApiKey, ConfigError> {
    let (file, meta) = crate::files::open_trusted(path, "API key file").map_err(|e| match e {
        crate::files::FileError::Io { error: source, .. } => ConfigError::File {
            path: path.to_path_buf(),
            what: format!("API key file cannot be read: {source}"),
        },
        other => refused(path, other),
    })?;
    if meta.mode() & 0o044 != 0 {
        log::warn!(
            "API key file {} is readable by other users (mode {:04o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    let mut bytes = Vec::new();
    // A key is a line; 64 KiB is not one.
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 64 << 10), &mut bytes).map_err(
        |e| ConfigError::File {
            path: path.to_path_buf(),
            what: format!("API key file cannot be read: {e}"),
        },
    )?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ConfigError::ApiKey(format!("{} is not UTF-8 text", path.display())))?;
    ApiKey::new(text).map_err(|e| match e {
        ConfigError::ApiKey(why) => ConfigError::ApiKey(format!("{} ({why})", path.display())),
        other => other,
    })
}

/// `url` with any user information (`user:password@`) of its authority
/// replaced by `<redacted>`: the form in which a URL from the
/// configuration may appear in an error or a log line. Works on text that
/// is not a valid URL too (an error about a malformed URL must not echo a
/// password either).
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => {
            std::borrow::Cow::Owned(format!("{}<redacted>{}", &url[..after_scheme], &rest[at..]))
        }
        None => std::borrow::Cow::Borrowed(url),
    }
}

/// The ingest URL for an endpoint: `<endpoint>/api/v1/ingest` (an endpoint
/// that already ends so is kept). Plain http only to a loopback host unless
/// `allow_insecure_http`. An endpoint with user information
/// (`https://user:password@host`) is refused: the key belongs in the key
/// file, and a URL is logged. Errors show the endpoint through
/// [`redact_url`].
pub fn ingest_url(endpoint: &str, allow_insecure_http: bool) -> Result<String, ConfigError> {
    let shown = redact_url(endpoint);
    if shown != endpoint {
        return Err(invalid(format!(
            "endpoint {shown:?} holds a user name or password: credentials in the URL are \
             refused (they would be logged); give the base URL and put the API key in \
             --api-key-file or [ingest] api_key_file"
        )));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| invalid(format!("endpoint {endpoint:?} is not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("endpoint {endpoint:?} has no host")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback && !allow_insecure_http {
                return Err(invalid(format!(
                    "endpoint {endpoint:?} is plain http to a non-loopback host: the API key \
                     would travel in clear; use https, or pass --allow-insecure-http"
                )));
            }
        }
        other => {
            return Err(invalid(format!(
                "endpoint {endpoint:?}: scheme {:?} is not http or https",
                other.unwrap_or("")
            )))
        }
    }
    if uri.query().is_some() {
        return Err(invalid(format!(
            "endpoint {endpoint:?} has a query string; give the base URL"
        )));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/api/v1/ingest") {
        base.to_string()
    } else {
        format!("{base}/api/v1/ingest")
    })
}

/// The ingest settings when `delivering` (output ingest is selected), else
/// `None` (an endpoint configured anyway is logged, not an error).
/// Precedence: command line (and `NETWATCH_ENDPOINT`, read by clap into
/// `args`), then `env_api_key` for the key, then the file, then defaults.
pub fn resolve_ingest(
    args: &Args,
    env_api_key: Option<&str>,
    f: &IngestFile,
    spool: &SpoolFile,
    delivering: bool,
) -> Result<Option<IngestConfig>, ConfigError> {
    let endpoint = args.endpoint.clone().or(f.endpoint.clone());
    if !delivering {
        if endpoint.is_some() {
            log::info!(
                "an endpoint is configured but output ingest is not selected: not delivering"
            );
        }
        return Ok(None);
    }
    let endpoint = endpoint.ok_or_else(|| {
        invalid(
            "output ingest needs an endpoint: --endpoint, NETWATCH_ENDPOINT or [ingest] endpoint",
        )
    })?;
    let allow_insecure = args.allow_insecure_http || f.allow_insecure_http.unwrap_or(false);
    let url = ingest_url(&endpoint, allow_insecure)?;
    let api_key = resolve_api_key(args.api_key_file.as_deref(), env_api_key, f)?;
    let batch_max_snapshots = f.batch_max_snapshots.unwrap_or(MAX_BATCH_SNAPSHOTS);
    if !(1..=MAX_BATCH_SNAPSHOTS).contains(&batch_max_snapshots) {
        return Err(invalid(format!(
            "batch_max_snapshots {batch_max_snapshots}: must be 1 to {MAX_BATCH_SNAPSHOTS}"
        )));
    }
    let batch_max_bytes = f.batch_max_bytes.unwrap_or(MAX_BATCH_BYTES);
    if !(limits::BATCH_MIN_BYTES..=MAX_BATCH_BYTES).contains(&batch_max_bytes) {
        return Err(invalid(format!(
            "batch_max_bytes {batch_max_bytes}: must be {} to {MAX_BATCH_BYTES}",
            limits::BATCH_MIN_BYTES
        )));
    }
    let (lo, hi) = limits::RETRY_SECS;
    let retry_initial = secs(
        "retry_initial_secs",
        f.retry_initial_secs.unwrap_or(DEFAULT_RETRY_INITIAL_SECS),
        lo,
        hi,
    )?;
    // The cap is at least the first delay.
    let retry_max = secs(
        "retry_max_secs",
        f.retry_max_secs.unwrap_or(DEFAULT_RETRY_MAX_SECS),
        retry_initial.as_secs_f64(),
        hi,
    )?;
    let (lo, hi) = limits::REQUEST_TIMEOUT_SECS;
    let request_timeout = secs(
        "request_timeout_secs",
        f.request_timeout_secs
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS),
        lo,
        hi,
    )?;
    let (lo, hi) = limits::FLUSH_TIMEOUT_SECS;
    let flush_timeout = secs(
        "flush_timeout_secs",
        f.flush_timeout_secs.unwrap_or(DEFAULT_FLUSH_TIMEOUT_SECS),
        lo,
        hi,
    )?;
    let (lo, hi) = limits::PAYMENT_RECHECK_SECS;
    let payment_recheck = secs(
        "payment_recheck_secs",
        f.payment_recheck_secs
            .unwrap_or(DEFAULT_PAYMENT_RECHECK_SECS),
        lo,
        hi,
    )?;
    let spool_max_bytes = int_in(
        "spool max_bytes",
        args.spool_max_bytes
            .or(spool.max_bytes)
            .unwrap_or(DEFAULT_SPOOL_MAX_BYTES),
        limits::SPOOL_MAX_BYTES,
    )?;
    Ok(Some(IngestConfig {
        url,
        api_key,
        ca_file: args.ingest_ca_file.clone().or(f.ca_file.clone()),
        host_id_file: args
            .host_id_file
            .clone()
            .or(f.host_id_file.clone())
            .unwrap_or_else(|| DEFAULT_HOST_ID_FILE.into()),
        spool_dir: args
            .spool_dir
            .clone()
            .or(spool.dir.clone())
            .unwrap_or_else(|| DEFAULT_SPOOL_DIR.into()),
        spool_max_bytes,
        batch_max_snapshots,
        batch_max_bytes,
        retry_initial,
        retry_max,
        request_timeout,
        flush_timeout,
        payment_recheck,
    }))
}

/// The API key: `--api-key-file`, then the environment's key
/// (`NETWATCH_API_KEY`, already taken out of the environment), then
/// `[ingest] api_key_file`; none of them is refused.
fn resolve_api_key(
    flag_file: Option<&Path>,
    env_api_key: Option<&str>,
    f: &IngestFile,
) -> Result<ApiKey, ConfigError> {
    match (flag_file, env_api_key, &f.api_key_file) {
        (Some(p), _, _) => read_api_key_file(p),
        (None, Some(k), _) => ApiKey::new(k).map_err(|e| match e {
            ConfigError::ApiKey(why) => ConfigError::ApiKey(format!("{API_KEY_ENV} ({why})")),
            other => other,
        }),
        (None, None, Some(p)) => read_api_key_file(p),
        (None, None, None) => Err(invalid(format!(
            "output ingest needs an API key: --api-key-file, {API_KEY_ENV} or [ingest] api_key_file"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_input::args;
    use std::os::unix::fs::PermissionsExt;

    const BASE: [&str; 4] = ["--output", "ingest", "--endpoint", "https://c.example"];

    fn sections(text: &str) -> (IngestFile, SpoolFile) {
        let f = super::super::parse_file(text).unwrap();
        (f.ingest, f.spool)
    }

    fn ingest(argv: &[&str], key: Option<&str>, text: &str) -> Result<IngestConfig, String> {
        let (i, s) = sections(text);
        let argv = [&BASE[..], argv].concat();
        resolve_ingest(&args(&argv), key, &i, &s, true)
            .map(|c| c.unwrap())
            .map_err(|e| e.to_string())
    }

    /// A key file of the test's own, mode 0600.
    fn key_file(dir: &Path, name: &str, key: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn not_delivering_is_none_whatever_is_configured() {
        let (i, s) = sections("[ingest]\nendpoint = \"ftp://bad\"\nbatch_max_snapshots = 0\n");
        assert!(resolve_ingest(&args(&[]), None, &i, &s, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn defaults() {
        let c = ingest(&[], Some("k3y"), "").unwrap();
        assert_eq!(c.url, "https://c.example/api/v1/ingest");
        assert_eq!(c.api_key.expose(), "k3y");
        assert_eq!(c.ca_file, None);
        assert_eq!(
            c.host_id_file,
            PathBuf::from("/var/lib/netwatch-agent/host-id")
        );
        assert_eq!(c.spool_dir, PathBuf::from("/var/lib/netwatch-agent/spool"));
        assert_eq!(c.spool_max_bytes, 268_435_456);
        assert_eq!(c.batch_max_snapshots, 100);
        assert_eq!(c.batch_max_bytes, 5_000_000);
        assert_eq!(c.retry_initial, Duration::from_secs(1));
        assert_eq!(c.retry_max, Duration::from_secs(300));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.flush_timeout, Duration::from_secs(10));
        assert_eq!(c.payment_recheck, Duration::from_secs(3600));
    }

    #[test]
    fn command_line_beats_file() {
        let text = "[ingest]\nendpoint = \"https://file.example\"\nca_file = \"/f/ca.pem\"\n\
                    host_id_file = \"/f/host-id\"\n[spool]\ndir = \"/f/spool\"\nmax_bytes = 65536\n";
        let (i, s) = sections(text);
        let c = resolve_ingest(&args(&["--output", "ingest"]), Some("k"), &i, &s, true)
            .unwrap()
            .unwrap();
        assert_eq!(c.url, "https://file.example/api/v1/ingest");
        assert_eq!(c.ca_file, Some(PathBuf::from("/f/ca.pem")));
        assert_eq!(c.host_id_file, PathBuf::from("/f/host-id"));
        assert_eq!(c.spool_dir, PathBuf::from("/f/spool"));
        assert_eq!(c.spool_max_bytes, 65_536);
        let c = ingest(
            &[
                "--ingest-ca-file",
                "/a/ca.pem",
                "--host-id-file",
                "/a/host-id",
                "--spool-dir",
                "/a/spool",
                "--spool-max-bytes",
                "1099511627776",
            ],
            Some("k"),
            text,
        )
        .unwrap();
        assert_eq!(c.url, "https://c.example/api/v1/ingest");
        assert_eq!(c.ca_file, Some(PathBuf::from("/a/ca.pem")));
        assert_eq!(c.host_id_file, PathBuf::from("/a/host-id"));
        assert_eq!(c.spool_dir, PathBuf::from("/a/spool"));
        assert_eq!(c.spool_max_bytes, 1 << 40);
    }

    #[test]
    fn the_key_flag_file_beats_the_environment_beats_the_files_key_file() {
        let d = tempfile::tempdir().unwrap();
        let flag = key_file(d.path(), "flag.key", "from-flag");
        let filed = key_file(d.path(), "file.key", "from-file");
        let text = format!("[ingest]\napi_key_file = \"{}\"\n", filed.display());
        let flag_arg = ["--api-key-file", flag.to_str().unwrap()];
        let key = |argv: &[&str], env: Option<&str>, text: &str| {
            ingest(argv, env, text).map(|c| c.api_key.expose().to_string())
        };
        assert_eq!(
            key(&flag_arg, Some("from-env"), &text).unwrap(),
            "from-flag"
        );
        assert_eq!(key(&[], Some("from-env"), &text).unwrap(), "from-env");
        assert_eq!(key(&[], None, &text).unwrap(), "from-file");
        assert_eq!(
            key(&[], None, "").unwrap_err(),
            "output ingest needs an API key: --api-key-file, NETWATCH_API_KEY or \
             [ingest] api_key_file"
        );
        assert_eq!(
            key(&[], Some("two words"), "").unwrap_err(),
            "the API key is not usable: NETWATCH_API_KEY (it holds spaces, control or \
             non-ASCII characters, which an HTTP header cannot carry)"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            ingest(&[], Some("k"), "[ingest]\nbatch_max_snapshots = 101\n").unwrap_err(),
            "batch_max_snapshots 101: must be 1 to 100"
        );
        assert_eq!(
            ingest(&[], Some("k"), "[ingest]\nbatch_max_bytes = 65535\n").unwrap_err(),
            "batch_max_bytes 65535: must be 65536 to 5000000"
        );
        assert_eq!(
            ingest(
                &[],
                Some("k"),
                "[ingest]\nretry_initial_secs = 2\nretry_max_secs = 1\n"
            )
            .unwrap_err(),
            "retry_max_secs 1: must be between 2 and 300 seconds"
        );
        assert_eq!(
            ingest(&[], Some("k"), "[ingest]\nflush_timeout_secs = -1\n").unwrap_err(),
            "flush_timeout_secs -1: must be between 0 and 600 seconds"
        );
        assert_eq!(
            ingest(&["--spool-max-bytes", "65535"], Some("k"), "").unwrap_err(),
            "spool max_bytes 65535: must be between 65536 and 1099511627776"
        );
        let (i, s) = sections("");
        assert_eq!(
            resolve_ingest(&args(&["--output", "ingest"]), Some("k"), &i, &s, true)
                .unwrap_err()
                .to_string(),
            "output ingest needs an endpoint: --endpoint, NETWATCH_ENDPOINT or [ingest] endpoint"
        );
    }
}
