//! Just enough JSON writing for `doctor --json` and `stat --json`: objects, arrays,
//! strings, numbers, booleans. Writing it by hand keeps serde out of an operator binary
//! whose output has a handful of flat fields.

use std::fmt::Write;

/// A JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number for a finite float (`null` otherwise: JSON has no NaN).
pub fn float(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}

pub fn array(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

/// Builds one object; values are already-encoded JSON.
#[derive(Default)]
pub struct Object {
    fields: Vec<String>,
}

impl Object {
    pub fn new() -> Object {
        Object::default()
    }

    pub fn raw(mut self, key: &str, json: impl Into<String>) -> Object {
        self.fields.push(format!("{}:{}", string(key), json.into()));
        self
    }

    pub fn str(self, key: &str, value: &str) -> Object {
        self.raw(key, string(value))
    }

    pub fn opt_str(self, key: &str, value: Option<&str>) -> Object {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn num(self, key: &str, value: impl std::fmt::Display) -> Object {
        self.raw(key, value.to_string())
    }

    pub fn bool(self, key: &str, value: bool) -> Object {
        self.raw(key, if value { "true" } else { "false" })
    }

    pub fn finish(self) -> String {
        format!("{{{}}}", self.fields.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn objects_and_arrays_nest() {
        let o = Object::new()
            .str("s", "x")
            .num("n", 3)
            .bool("b", false)
            .opt_str("none", None)
            .raw("a", array(["1".to_string(), "2".to_string()]))
            .finish();
        assert_eq!(o, r#"{"s":"x","n":3,"b":false,"none":null,"a":[1,2]}"#);
        assert_eq!(Object::new().finish(), "{}");
        assert_eq!(float(f64::NAN), "null");
        assert_eq!(float(1.5), "1.5");
    }
}
