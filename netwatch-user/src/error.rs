//! The library's error: what failed, and what the caller can do about it.
//! Built at the API's edge ([`crate::Collector`]) from the internal errors
//! (the privilege check, the BPF loader, the sources' own), which stay
//! reachable as the [`std::error::Error::source`] chain; each cause is
//! shown once (the message never repeats its source).

use std::fmt;

/// Why a [`crate::Collector`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process lacks what the source needs; run as root or grant
    /// `needs` (systemd `AmbientCapabilities=`, Kubernetes
    /// `securityContext.capabilities.add`).
    #[error("the {mode} source is not permitted: this process lacks {missing}")]
    PermissionDenied {
        /// The source that was refused (`ebpf`, `ss`, `pcap`, ...).
        mode: &'static str,
        /// Everything the source needs, e.g. `CAP_BPF + CAP_PERFMON + ...`.
        needs: String,
        /// What of it this process does not have.
        missing: String,
        /// The check's own words: what to grant and where.
        #[source]
        cause: Cause,
    },
    /// The source cannot run on this system (an OS without it, a kernel
    /// without the hooks, a build without the BPF object, a missing tool).
    #[error("the {mode} source is not available here")]
    Unsupported {
        /// The source asked for.
        mode: &'static str,
        /// What the attempt ran into.
        #[source]
        cause: Cause,
    },
    /// `Mode::Auto` found no source that starts; `tried` says why each
    /// was passed over, in the order tried.
    #[error("no source could start: {}", Tried(.tried))]
    NoSource {
        /// `(source, why)` for each source tried.
        tried: Vec<(&'static str, String)>,
    },
    /// A setting was refused before anything was loaded: a pin directory
    /// that is not on the BPF filesystem, is its root, or holds other
    /// software's pins; a baseline directory another user could write.
    #[error("refused the {what}")]
    Refused {
        /// The setting, e.g. `pin directory`.
        what: &'static str,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// A part beside the source (the health probe thread) could not start.
    #[error("{what}")]
    Start {
        /// What failed, e.g. `starting the health probe thread`.
        what: &'static str,
        /// Why.
        #[source]
        cause: Cause,
    },
}

/// An underlying cause, kept typed behind a box (the loader's, the
/// operating system's, a source's).
pub struct Cause(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub(crate) fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(e.into())
    }

    pub(crate) fn from_anyhow(e: anyhow::Error) -> Self {
        Self(e.into())
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

struct Tried<'a>(&'a [(&'static str, String)]);

impl fmt::Display for Tried<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (mode, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{mode}: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cause appears once in the `{:#}` rendering an application
    /// prints (anyhow's alternate form walks the chain).
    #[test]
    fn every_cause_shows_once() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let text = io.to_string();
        let e = Error::Unsupported {
            mode: "ebpf",
            cause: Cause::new(io),
        };
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            shown,
            format!("the ebpf source is not available here: {text}")
        );
        assert_eq!(shown.matches(&text).count(), 1);
    }

    #[test]
    fn no_source_lists_every_attempt_in_order() {
        let e = Error::NoSource {
            tried: vec![("ebpf", "EPERM".into()), ("ss", "no ss".into())],
        };
        assert_eq!(
            e.to_string(),
            "no source could start: ebpf: EPERM; ss: no ss"
        );
    }
}
