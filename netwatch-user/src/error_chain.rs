//! Renders an error with its causes on one line, each cause once. Used where
//! a foreign error repeats its own cause in its message (aya's
//! `ProgramError::LoadError` prints its `io_error` and also chains it;
//! btf-rs's `Error::IO` does the same), so that our message can carry it
//! typed without the text appearing twice. It never allocates more than the
//! one string it builds and never drops a cause whose text is new.

use std::error::Error;
use std::fmt;

/// `error: cause: cause's cause ...` (the layout of anyhow's `{:#}`), with a
/// cause left out when the text before it already contains its text.
///
/// ```
/// use netwatch::error_chain::Once;
/// let e = std::io::Error::other("disk full");
/// assert_eq!(Once(&e).to_string(), "disk full");
/// ```
pub struct Once<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Once<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let c_text = c.to_string();
            if !text.contains(&c_text) {
                text.push_str(": ");
                text.push_str(&c_text);
            }
            cause = c.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outer repeats its cause in its message and chains it, as aya does.
    #[derive(Debug, thiserror::Error)]
    #[error("the syscall returned {0}")]
    struct Repeats(#[source] std::io::Error);

    /// Outer names only what it tried and chains the cause.
    #[derive(Debug, thiserror::Error)]
    #[error("opening the map")]
    struct Chains(#[source] Repeats);

    #[test]
    fn each_cause_appears_once() {
        let e = Chains(Repeats(std::io::Error::other("EPERM")));
        assert_eq!(
            Once(&e).to_string(),
            "opening the map: the syscall returned EPERM"
        );
        let leaf = std::io::Error::other("no space left");
        assert_eq!(Once(&leaf).to_string(), "no space left");
    }
}
