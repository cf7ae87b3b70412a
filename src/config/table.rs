//! Reading TOML as written: [`Tbl`] reads one table's keys (and remembers where it is), [`Ctx`]
//! collects every error and warning with its line and column. This is the only part of the
//! configuration that knows TOML's value types; the section files ask for strings, sizes,
//! counts, durations, booleans and choices by key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::units::{parse_count, parse_duration, parse_size};
use super::ConfigError;

/// Collects errors with their positions.
pub(super) struct Ctx<'t> {
    pub(super) path: PathBuf,
    pub(super) text: &'t str,
    pub(super) base: PathBuf,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// Something that works but should not be left so (`check` prints it, `run` logs it).
    pub(super) fn warn(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let (line, col) = self.at(span.start);
        self.warnings.push(ConfigError {
            path: self.path.clone(),
            line,
            col,
            msg: msg.into(),
        });
    }

    pub(super) fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let (line, col) = self.at(span.start);
        self.errors.push(ConfigError {
            path: self.path.clone(),
            line,
            col,
            msg: msg.into(),
        });
    }

    /// The 1-based line and column of a byte offset.
    pub(super) fn at(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// A table being read: remembers which keys were used and where it is.
pub(super) struct Tbl<'a, 'i> {
    pub(super) t: &'a DeTable<'i>,
    pub(super) span: Range<usize>,
    pub(super) what: String,
}

/// Warns about a secret or token that looks like an example's placeholder.
pub(super) fn warn_placeholder(key: &str, value: &str, span: Range<usize>, cx: &mut Ctx<'_>) {
    let v = value.to_ascii_lowercase();
    let placeholder = [
        "change-me",
        "changeme",
        "change_me",
        "replace-me",
        "example",
        "placeholder",
        "todo",
        "xxxx",
    ]
    .iter()
    .any(|p| v.contains(p))
        || matches!(v.as_str(), "secret" | "password" | "token")
        || (!v.is_empty() && v.chars().all(|c| matches!(c, '0' | '-')));
    if placeholder {
        cx.warn(
            span,
            format!("{key} = {value:?} looks like a placeholder: set the real value before this goes live"),
        );
    }
}

/// How errors name the `i`-th table of `kind`: by its `name` when it has one.
pub(super) fn named(kind: &str, v: &Value<'_>, i: usize) -> String {
    let name = match v.get_ref() {
        DeValue::Table(t) => t.get("name").and_then(|n| match n.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => None,
        }),
        _ => None,
    };
    match name {
        Some(n) => format!("{kind} {n:?}"),
        None => format!("{kind} #{}", i + 1),
    }
}

pub(super) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "float",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "datetime",
        DeValue::Array(_) => "array",
        DeValue::Table(_) => "table",
    }
}

impl<'a, 'i> Tbl<'a, 'i> {
    pub(super) fn new(v: &'a Value<'i>, what: String, cx: &mut Ctx<'_>) -> Option<Tbl<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Tbl {
                t,
                span: v.span(),
                what,
            }),
            other => {
                cx.err(
                    v.span(),
                    format!("{what} must be a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn check_keys(&self, allowed: &[&str], cx: &mut Ctx<'_>) {
        for k in self.t.keys() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                cx.err(
                    k.span(),
                    format!(
                        "unknown key {:?} in {} (allowed: {})",
                        k.get_ref(),
                        self.what,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.t.get(key)
    }

    pub(super) fn missing(&self, key: &str, cx: &mut Ctx<'_>) {
        cx.err(self.span.clone(), format!("{} needs {key:?}", self.what));
    }

    pub(super) fn str(
        &self,
        key: &str,
        hint: &str,
        cx: &mut Ctx<'_>,
    ) -> Option<(&'a str, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            other => {
                cx.err(
                    v.span(),
                    format!("{key}: expected {hint}, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn req_str(
        &self,
        key: &str,
        hint: &str,
        cx: &mut Ctx<'_>,
    ) -> Option<(&'a str, Range<usize>)> {
        if self.get(key).is_none() {
            self.missing(key, cx);
        }
        self.str(key, hint, cx)
    }

    /// A string or integer parsed by `parse` (sizes, counts), checked against `range`.
    pub(super) fn number(
        &self,
        key: &str,
        parse: fn(&str) -> Result<u64, String>,
        range: std::ops::RangeInclusive<u64>,
        cx: &mut Ctx<'_>,
    ) -> Option<u64> {
        let v = self.get(key)?;
        let n = match v.get_ref() {
            DeValue::String(s) => parse(s),
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("{} is not a non-negative integer", i.as_str())),
            other => Err(format!(
                "expected a size or number, found {}",
                type_name(other)
            )),
        };
        match n {
            Ok(n) if range.contains(&n) => Some(n),
            Ok(n) => {
                cx.err(
                    v.span(),
                    format!(
                        "{key} = {n} is out of range ({}..={})",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
            Err(e) => {
                cx.err(v.span(), format!("{key}: {e}"));
                None
            }
        }
    }

    pub(super) fn size(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        cx: &mut Ctx<'_>,
    ) -> Option<u64> {
        self.number(key, parse_size, range, cx)
    }

    pub(super) fn count(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        cx: &mut Ctx<'_>,
    ) -> Option<u64> {
        self.number(key, parse_count, range, cx)
    }

    pub(super) fn bool(&self, key: &str, cx: &mut Ctx<'_>) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                cx.err(
                    v.span(),
                    format!("{key}: expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(super) fn duration(&self, key: &str, cx: &mut Ctx<'_>) -> Option<Duration> {
        let (s, span) = self.str(key, "a duration string like \"15m\"", cx)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.err(span, format!("{key}: {e}"));
                None
            }
        }
    }

    pub(super) fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
        cx: &mut Ctx<'_>,
    ) -> Option<T> {
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let hint = format!("one of {}", names.join(" | "));
        let (s, span) = self.str(key, &hint, cx)?;
        match choices.iter().find(|c| c.0 == s) {
            Some(c) => Some(c.1),
            None => {
                cx.err(span, format!("{key} = {s:?}: expected {hint}"));
                None
            }
        }
    }

    /// The array of tables under `key` (`[[feed]]` or an inline array).
    pub(super) fn tables(&self, key: &str, cx: &mut Ctx<'_>) -> Vec<&'a Value<'i>> {
        match self.get(key).map(|v| (v, v.get_ref())) {
            None => Vec::new(),
            Some((_, DeValue::Array(a))) => a.iter().collect(),
            Some((v, other)) => {
                cx.err(
                    v.span(),
                    format!(
                        "{key} must be an array of tables ([[{key}]]), found {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }
}
