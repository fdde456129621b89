//! How an option is declared, and the two loops that use the declarations:
//! reading a section into its typed struct and printing it back for
//! `mxspool check`. Each section's options are one table (`main_options`,
//! `domain_options`), so the parser, `check`'s output and the README's
//! reference (compared by a test) come from one place.

use super::{ConfigError, uci};
use std::fmt;
use std::path::Path;

/// One option of a section whose typed struct is `T`.
pub(super) struct OptionSpec<T: 'static> {
    pub name: &'static str,
    pub form: Form,
    /// The README's "meaning" column, word for word (a test compares them).
    /// Empty outside tests: see `doc`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc: &'static str,
    /// Sets the field from one value as written in UCI (once per `list`
    /// entry); returns the "what is wrong" part of the error.
    pub parse: fn(&mut T, &str) -> Result<(), String>,
    /// The values `check` prints: one for an option (none to leave it
    /// out), each entry for a list.
    pub print: fn(&T) -> Vec<String>,
}

/// `option` or `list`, and what happens when the file does not give it.
pub(super) enum Form {
    /// `option NAME` the section cannot do without (what it is, for the error).
    Required(&'static str),
    /// `option NAME`; its default as written in UCI, parsed like a value.
    Single(&'static str),
    /// `list NAME`; the default entries, replaced by any entry in the file.
    List(&'static [&'static str]),
}

impl<T> OptionSpec<T> {
    pub fn is_list(&self) -> bool {
        matches!(self.form, Form::List(_))
    }
}

/// The documentation is only read by the README test; the router build
/// does not carry its few kilobytes.
pub(super) const fn doc(text: &'static str) -> &'static str {
    if cfg!(test) { text } else { "" }
}

/// Parses a section: defaults for what the file leaves out, in table
/// order, so an option's parser can rely on the options before it (a
/// domain's `user` on its `name`).
pub(super) fn parse_section<T>(
    o: &Options,
    table: &[OptionSpec<T>],
    mut t: T,
) -> Result<T, ConfigError> {
    for spec in table {
        let mut given = o.all(spec.name).peekable();
        if given.peek().is_none() {
            let defaults = match &spec.form {
                Form::Required(what) => return Err(o.missing(spec.name, what)),
                Form::Single(d) => std::slice::from_ref(d),
                Form::List(d) => *d,
            };
            for d in defaults {
                // A unit test parses every default; this cannot happen.
                (spec.parse)(&mut t, d).map_err(|m| {
                    o.err(
                        o.section.line,
                        format!("the default of option '{}' {m}", spec.name),
                    )
                })?;
            }
        }
        for item in given {
            (spec.parse)(&mut t, &item.value).map_err(|m| o.bad(item, &m))?;
        }
    }
    Ok(t)
}

/// The section's lines of `check`'s output, in table order.
pub(super) fn print_section<T>(
    f: &mut fmt::Formatter<'_>,
    table: &[OptionSpec<T>],
    t: &T,
) -> fmt::Result {
    for spec in table {
        let keyword = if spec.is_list() { "list" } else { "option" };
        for v in (spec.print)(t) {
            writeln!(f, "\t{keyword} {} {}", spec.name, quote(&v))?;
        }
    }
    Ok(())
}

/// A UCI single-quoted value; `'` is written as uci export does: `'\''`.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

// Short forms for the tables' parse and print functions.

pub(super) fn set<V>(field: &mut V, v: Result<V, String>) -> Result<(), String> {
    *field = v?;
    Ok(())
}

pub(super) fn push<V>(list: &mut Vec<V>, v: Result<V, String>) -> Result<(), String> {
    list.push(v?);
    Ok(())
}

pub(super) fn one(v: impl fmt::Display) -> Vec<String> {
    vec![v.to_string()]
}

pub(super) fn each<V: fmt::Display>(list: &[V]) -> Vec<String> {
    list.iter().map(V::to_string).collect()
}

/// Empty is how UCI leaves an option unset.
pub(super) fn unset<V: fmt::Display>(v: Option<V>) -> Vec<String> {
    one(v.map(|v| v.to_string()).unwrap_or_default())
}

pub(super) fn flag(b: bool) -> Vec<String> {
    one(if b { "1" } else { "0" })
}

pub(super) fn dur(d: std::time::Duration) -> Vec<String> {
    one(super::fmt_duration(d))
}

pub(super) fn size(n: u64) -> Vec<String> {
    one(super::value::fmt_size(n))
}

/// One section's items, checked against the options its table declares.
pub(super) struct Options<'a> {
    path: &'a Path,
    pub section: &'a uci::Section,
}

impl<'a> Options<'a> {
    /// Refuses unknown keys, `list` for a single-value key, a single-value
    /// key given twice (uci would keep the last one silently), and values
    /// with line breaks or control characters (none of ours takes them).
    /// `option` for a list key is one entry of that list.
    pub fn new<T>(
        path: &'a Path,
        section: &'a uci::Section,
        table: &[OptionSpec<T>],
    ) -> Result<Options<'a>, ConfigError> {
        let o = Options { path, section };
        for (i, item) in section.items.iter().enumerate() {
            let Some(spec) = table.iter().find(|s| s.name == item.name) else {
                return Err(o.err(
                    item.line,
                    format!(
                        "unknown option '{}' in section '{}'",
                        item.name, section.kind
                    ),
                ));
            };
            let is_single = !spec.is_list();
            if is_single && item.is_list {
                return Err(o.err(
                    item.line,
                    format!(
                        "option '{0}' takes one value: write 'option {0}', not 'list {0}'",
                        item.name
                    ),
                ));
            }
            if is_single
                && let Some(first) = section.items[..i].iter().find(|p| p.name == item.name)
            {
                return Err(o.err(
                    item.line,
                    format!(
                        "option '{}' is set twice (first at line {})",
                        item.name, first.line
                    ),
                ));
            }
            if item.value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(o.bad(item, "contains a line break or a control character"));
            }
        }
        Ok(o)
    }

    pub fn err(&self, line: usize, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    /// The value error form: `option 'x': what is wrong (got 'value')`.
    pub fn bad(&self, item: &uci::Item, what: &str) -> ConfigError {
        // Escape control characters so the error stays one line.
        let got: String = item
            .value
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        self.err(
            item.line,
            format!("option '{}': {} (got '{}')", item.name, what, got),
        )
    }

    pub fn get(&self, key: &str) -> Option<&'a uci::Item> {
        self.section.items.iter().find(|i| i.name == key)
    }

    fn all(&self, key: &'a str) -> impl Iterator<Item = &'a uci::Item> + 'a {
        self.section.items.iter().filter(move |i| i.name == key)
    }

    /// A missing required option names the line of its section.
    fn missing(&self, key: &str, what: &str) -> ConfigError {
        self.err(
            self.section.line,
            format!(
                "section '{}' needs 'option {key}' ({what})",
                self.section.kind
            ),
        )
    }
}
