//! A small cursor over subcommand arguments: long flags as `--flag VALUE` or
//! `--flag=VALUE`, and a way to stop at the first operand (so `run` never interprets the
//! child command's own flags).

use crate::Failure;
use std::collections::VecDeque;
use std::ffi::OsString;

pub struct Args {
    rest: VecDeque<OsString>,
}

/// One step of the cursor.
pub enum Arg {
    /// `--name` or `-n`; a value attached with `=` is kept for [`Args::value`].
    Flag(String, Option<String>),
    /// A word not starting with `-` (or anything after `--`).
    Operand(OsString),
    /// A bare `--`.
    EndOfFlags,
}

impl Args {
    pub fn new(argv: Vec<OsString>) -> Args {
        Args { rest: argv.into() }
    }

    pub fn next(&mut self) -> Option<Arg> {
        let word = self.rest.pop_front()?;
        let text = match word.to_str() {
            Some("--") => return Some(Arg::EndOfFlags),
            Some(t) if t.starts_with('-') && t.len() > 1 => t.to_string(),
            _ => return Some(Arg::Operand(word)),
        };
        Some(match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                Arg::Flag(name.to_string(), Some(value.to_string()))
            }
            _ => Arg::Flag(text, None),
        })
    }

    /// The value of `flag`: the attached `=VALUE`, else the next word.
    pub fn value(&mut self, flag: &str, attached: Option<String>) -> Result<String, Failure> {
        if let Some(v) = attached {
            return Ok(v);
        }
        match self.rest.pop_front() {
            Some(v) => v
                .into_string()
                .map_err(|v| Failure::usage(format!("{flag}: value {v:?} is not UTF-8"))),
            None => Err(Failure::usage(format!("{flag} needs a value"))),
        }
    }

    /// The next word if it is not a flag and `accept` likes it; for flags whose value
    /// is optional (`--watch [SECS]`).
    pub fn optional_value(&mut self, accept: impl Fn(&str) -> bool) -> Option<String> {
        let next = self.rest.front()?.to_str()?;
        if next.starts_with('-') || !accept(next) {
            return None;
        }
        let value = next.to_string();
        self.rest.pop_front();
        Some(value)
    }

    /// Everything not consumed yet, unparsed.
    pub fn remaining(&mut self) -> Vec<OsString> {
        self.rest.drain(..).collect()
    }
}

/// A flag that takes no value was given one (`--json=1`).
pub fn no_value(flag: &str, attached: Option<String>) -> Result<(), Failure> {
    match attached {
        None => Ok(()),
        Some(v) => Err(Failure::usage(format!("{flag} takes no value (got {v:?})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::new(words.iter().map(OsString::from).collect())
    }

    #[test]
    fn attached_and_separate_values() {
        let mut a = args(&["--profile=latency", "--backend", "uring", "cmd"]);
        let Some(Arg::Flag(name, attached)) = a.next() else {
            panic!()
        };
        assert_eq!(
            (
                name.as_str(),
                a.value("--profile", attached).unwrap().as_str()
            ),
            ("--profile", "latency")
        );
        let Some(Arg::Flag(name, attached)) = a.next() else {
            panic!()
        };
        assert_eq!(
            (
                name.as_str(),
                a.value("--backend", attached).unwrap().as_str()
            ),
            ("--backend", "uring")
        );
        assert!(matches!(a.next(), Some(Arg::Operand(w)) if w == "cmd"));
        assert!(a.next().is_none());
    }

    #[test]
    fn missing_value_is_a_usage_error() {
        let mut a = args(&["--dir"]);
        let Some(Arg::Flag(_, attached)) = a.next() else {
            panic!()
        };
        assert_eq!(a.value("--dir", attached).unwrap_err().code, 2);
    }

    #[test]
    fn optional_value_only_takes_matching_words() {
        let mut a = args(&["2", "--json"]);
        assert_eq!(
            a.optional_value(|w| w.parse::<f64>().is_ok()).as_deref(),
            Some("2")
        );
        assert_eq!(a.optional_value(|_| true), None);
        let mut b = args(&["1234"]);
        assert_eq!(b.optional_value(|w| w == "x"), None);
    }

    #[test]
    fn dash_alone_is_an_operand_and_double_dash_ends_flags() {
        let mut a = args(&["-", "--", "-x"]);
        assert!(matches!(a.next(), Some(Arg::Operand(w)) if w == "-"));
        assert!(matches!(a.next(), Some(Arg::EndOfFlags)));
        assert_eq!(a.remaining(), vec![OsString::from("-x")]);
    }
}
