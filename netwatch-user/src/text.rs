//! Text from outside, made safe to show: process names, cgroup paths, DNS
//! names, server answers and error texts go through [`visible`] before a
//! terminal (live view, plain table) or a log line sees them.
//!
//! Any local user can name a process `"\e[2J\e[31mroot\a"`; printed raw, that
//! clears the operator's screen and fakes rows. [`visible`] shows every
//! control character, every terminal escape and every invisible formatting
//! character (bidi overrides, zero-width characters) as a visible escape
//! (`\x1b`, `\r`, `\u{202e}`), escapes the backslash itself so the result is
//! unambiguous, and caps the length. It must never be applied to JSON (serde
//! escapes it) or to Prometheus label values (the exposition format has its
//! own escaping): those carry the bytes as they are.

use std::borrow::Cow;
use std::fmt;

/// The longest text [`visible`] shows by default (in characters), e.g. for a
/// server's response body in a log line. Longer text ends with `…`.
pub const DEFAULT_MAX_CHARS: usize = 256;

/// `s` as a terminal or a log may show it: control characters, escapes and
/// invisible formatting characters escaped visibly, backslashes doubled, at
/// most `max_chars` characters of the original kept (then `…`).
///
/// Borrows when nothing needs changing, the common case.
///
/// ```
/// use netwatch::text::visible;
/// assert_eq!(visible("nginx", 16), "nginx");
/// assert_eq!(visible("\x1b[2Jroot\x07", 16), "\\x1b[2Jroot\\x07");
/// assert_eq!(visible("a\\b", 16), "a\\\\b");
/// assert_eq!(visible("abcdef", 3), "abc…");
/// ```
pub fn visible(s: &str, max_chars: usize) -> Cow<'_, str> {
    let clean = s.chars().take(max_chars + 1).all(|c| !needs_escape(c));
    let fits = s.chars().nth(max_chars).is_none();
    if clean && fits {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max_chars * 4) + 4);
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// A [`fmt::Display`] wrapper that writes its text through [`visible`] with
/// [`DEFAULT_MAX_CHARS`]: `log::warn!("... {}", Visible(&body))`.
pub struct Visible<'a>(pub &'a str);

impl fmt::Display for Visible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&visible(self.0, DEFAULT_MAX_CHARS))
    }
}

/// One formatted log record as the log may show it: the safety net under
/// every log line, whatever its call site did. Control characters,
/// terminal escapes and invisible formatting characters are escaped as in
/// [`visible`]; backslashes are left alone (text a call site already passed
/// through [`visible`] comes out unchanged) and nothing is cut. A newline
/// inside the record is kept but the line after it is indented by two
/// spaces, so a record's own lines (a verifier log) stay readable while no
/// text can start a line that looks like a record of its own; the record's
/// final newline is kept as it is.
///
/// ```
/// use netwatch::text::log_record;
/// assert_eq!(log_record("[INFO] ok\n"), "[INFO] ok\n");
/// assert_eq!(log_record("[WARN] a\x1b[2J\\b\n"), "[WARN] a\\x1b[2J\\b\n");
/// assert_eq!(log_record("[WARN] a\n[ERROR] forged\n"), "[WARN] a\n  [ERROR] forged\n");
/// ```
pub fn log_record(s: &str) -> Cow<'_, str> {
    let body = s.strip_suffix('\n').unwrap_or(s);
    let clean = body
        .chars()
        .all(|c| c == '\t' || c == '\\' || !needs_escape(c));
    if clean {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\n  "),
            '\t' | '\\' => out.push(c),
            c => push_escaped(&mut out, c),
        }
    }
    if body.len() < s.len() {
        out.push('\n');
    }
    Cow::Owned(out)
}

/// Whether `c` cannot be shown as itself.
fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_invisible_format(c)
}

/// Unicode format characters (category Cf) and separators that change how
/// the text around them is drawn without being seen: bidi embeddings,
/// overrides and isolates, zero-width characters, line and paragraph
/// separators, the byte-order mark, and the tag characters (invisible
/// copies of ASCII, a way to smuggle text past a reader).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00ad}'
        | '\u{061c}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write;
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 && needs_escape(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_character_is_shown_escaped() {
        for b in (0u32..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(b).unwrap();
            let name = format!("a{c}b");
            let shown = visible(&name, 16);
            assert!(
                shown.chars().all(|c| !c.is_control()),
                "U+{b:04x} came through as {shown:?}"
            );
        }
    }

    #[test]
    fn the_attack_name_is_shown_as_text() {
        let name = "\x1b[2J\x1b[31mroot\x07\r\x08";
        assert_eq!(visible(name, 64), "\\x1b[2J\\x1b[31mroot\\x07\\r\\x08");
    }

    #[test]
    fn bidi_overrides_and_zero_width_characters_are_escaped() {
        assert_eq!(visible("evil\u{202e}gpj.exe", 64), "evil\\u{202e}gpj.exe");
        assert_eq!(visible("a\u{200b}b", 64), "a\\u{200b}b");
        // Tag characters: invisible ASCII ("hi" here).
        assert_eq!(
            visible("ok\u{e0068}\u{e0069}", 64),
            "ok\\u{e0068}\\u{e0069}"
        );
    }

    #[test]
    fn printable_unicode_is_kept_and_borrowed() {
        assert!(matches!(
            visible("café-日本", 64),
            Cow::Borrowed("café-日本")
        ));
    }

    #[test]
    fn length_is_capped_in_characters_not_bytes() {
        assert_eq!(visible("日本語です", 2), "日本…");
        assert_eq!(visible("abc", 3), "abc");
        assert_eq!(
            visible(&"x".repeat(10_000), DEFAULT_MAX_CHARS)
                .chars()
                .count(),
            257
        );
    }

    #[test]
    fn a_log_record_keeps_its_lines_but_none_can_pass_for_a_record() {
        let rec = "[2026-12-07T13:00:00Z WARN  netwatch] body: \x1b[2J\r\x08\x07\n[2026-12-07T13:00:01Z ERROR netwatch] forged\n";
        assert_eq!(
            log_record(rec),
            "[2026-12-07T13:00:00Z WARN  netwatch] body: \\x1b[2J\\r\\x08\\x07\n  \
             [2026-12-07T13:00:01Z ERROR netwatch] forged\n"
        );
        // What `visible` made safe passes unchanged (no double escaping).
        let shown = format!("[WARN] {}\n", Visible("a\x1b\\b\u{202e}"));
        assert!(matches!(log_record(&shown), Cow::Borrowed(_)), "{shown:?}");
        // Tabs and a record without a final newline.
        assert_eq!(log_record("a\tb"), "a\tb");
        assert_eq!(log_record("a\x07"), "a\\x07");
    }

    #[test]
    fn a_backslash_cannot_fake_an_escape() {
        // A name that is literally `\x1b` must not look like an escaped ESC.
        assert_eq!(visible("\\x1b", 16), "\\\\x1b");
    }
}
