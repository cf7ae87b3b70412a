//! Names that leave the configuration and end up in other formats: the instance name goes into
//! JSON (alert records, `/health`), Prometheus labels, RFC 5424 structured data and the lock
//! file; a feed name names its ring file and goes into the same JSON and labels; an output name
//! is its ring cursor's name and a label. So none of them may hold a quote, a backslash, a
//! space, a control character or a line break, and each fits in a fixed buffer.
//!
//! The rules:
//! - `instance`: 1 to [`NAME_MAX`] bytes of `A-Z a-z 0-9 . - _`.
//! - a feed's `name`: 1 to [`FEED_NAME_MAX`] bytes of `a-z 0-9 - _`, starting with a letter or
//!   digit (lower case only and no dot: it is a file name, on file systems that may ignore case).
//! - an output's `name`: 1 to [`OUTPUT_NAME_MAX`] bytes of `a-z 0-9 - _`.
//!
//! Feed and output names keep the rule they have always had; `instance` had none.

use super::table::{Ctx, Tbl};

/// The longest name the configuration accepts, in bytes, of any kind: every name (instance,
/// feed, output) fits in a `heapless::String<NAME_MAX>`.
pub const NAME_MAX: usize = 64;
/// The longest feed name, in bytes (the ring's superblock has room for 64, `buffer-spec.md` §3).
pub const FEED_NAME_MAX: usize = 32;
/// The longest output name, in bytes: the ring keeps it in its cursor entry, 32 bytes
/// (`buffer-spec.md` §4).
pub const OUTPUT_NAME_MAX: usize = 32;

const _: () = assert!(FEED_NAME_MAX <= NAME_MAX && OUTPUT_NAME_MAX <= NAME_MAX);

/// The instance name when `instance` is not set.
const DEFAULT_INSTANCE: &str = "ringrelay";

/// `instance`, checked; the default when unset, or when it is invalid (the error is reported,
/// and the rest of the file is still checked).
pub(super) fn instance_name(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> String {
    match t.str("instance", "a name", cx) {
        None => DEFAULT_INSTANCE.to_string(),
        Some((s, _)) if valid_instance(s) => s.to_string(),
        Some((s, span)) => {
            cx.err(
                span,
                format!("instance = {s:?}: use 1 to {NAME_MAX} characters of A-Z, a-z, 0-9, '.', '-' and '_' (the name goes into JSON, metric labels and the lock file)"),
            );
            DEFAULT_INSTANCE.to_string()
        }
    }
}

/// A feed's `name`, checked.
pub(super) fn feed_name(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<String> {
    let (s, span) = t.req_str("name", "a feed name", cx)?;
    if valid_name(s, FEED_NAME_MAX) {
        return Some(s.to_string());
    }
    cx.err(span, format!("feed name {s:?}: use 1 to {FEED_NAME_MAX} characters of a-z, 0-9, '-' and '_', starting with a letter or digit"));
    None
}

/// An output's `name`, checked.
pub(super) fn output_name(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<String> {
    let (s, span) = t.req_str("name", "an output name", cx)?;
    if valid_name(s, OUTPUT_NAME_MAX) {
        return Some(s.to_string());
    }
    cx.err(
        span,
        format!(
            "output name {s:?}: use 1 to {OUTPUT_NAME_MAX} characters of a-z, 0-9, '-' and '_'"
        ),
    );
    None
}

fn valid_instance(s: &str) -> bool {
    (1..=NAME_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn valid_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_take_letters_digits_dots_dashes_and_underscores_up_to_name_max() {
        for ok in [
            "ringrelay",
            "relay-a",
            "Relay_A.eu-west-1",
            &"x".repeat(NAME_MAX),
        ] {
            assert!(valid_instance(ok), "{ok:?}");
        }
        let long = "x".repeat(NAME_MAX + 1);
        for bad in [
            "",
            "relay \"a\"",
            "a\\b",
            "a\nb",
            "a b",
            "a\tb",
            "é",
            "a]",
            &long,
        ] {
            assert!(!valid_instance(bad), "{bad:?}");
        }
    }

    #[test]
    fn feed_and_output_names_keep_their_rule() {
        assert!(valid_name("zia-web", FEED_NAME_MAX));
        assert!(valid_name(&"a".repeat(OUTPUT_NAME_MAX), OUTPUT_NAME_MAX));
        assert!(!valid_name(
            &"a".repeat(OUTPUT_NAME_MAX + 1),
            OUTPUT_NAME_MAX
        ));
        for bad in ["", "-x", "Zia", "zia web", "zia.web", "zia\"", "zia\n"] {
            assert!(!valid_name(bad, FEED_NAME_MAX), "{bad:?}");
        }
    }
}
