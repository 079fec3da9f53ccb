//! A small walker over `serde_json::Value` that remembers where it is, so every error about an
//! OCI `config.json` or a seccomp profile names the field by its JSON path
//! (`linux.resources.memory.limit`, `syscalls[3].args[0].op`). A key nobody asked for is an
//! error (seccomp profile files), or, in a tree read with [`Field::root_ignoring_unknown`] (an
//! OCI `config.json`: the runtime spec has runtimes ignore unknown properties), collected by its
//! path so the caller can say what it ignored.
use std::{cell::RefCell, rc::Rc};

use serde_json::{Map, Value};

/// An error about one field, named by its JSON path, with the value found there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    /// What is wrong with it (the parsers' sentence).
    pub message: String,
    /// The offending value as JSON (shortened), when the error is about one.
    pub value: Option<String>,
}

/// Longest value kept in a [`FieldError`].
const VALUE_MAX: usize = 80;

fn shortened(value: &Value) -> String {
    let mut s = value.to_string();
    if s.len() > VALUE_MAX {
        let mut end = VALUE_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

pub type Result<T> = std::result::Result<T, FieldError>;

/// Parses JSON text; syntax errors carry `line:column`.
pub fn parse(text: &str) -> std::result::Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

/// Where the paths of ignored unknown keys go (see [`Field::root_ignoring_unknown`]).
#[derive(Debug, Clone, Default)]
pub struct Ignored(Rc<RefCell<Vec<String>>>);

impl Ignored {
    /// The JSON paths ignored so far, in the order met.
    pub fn paths(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

/// A value and its path.
#[derive(Debug, Clone)]
pub struct Field {
    pub path: String,
    pub value: Value,
    /// Set in trees whose unknown keys are ignored: where their paths go.
    ignored: Option<Ignored>,
}

impl Field {
    pub fn root(value: Value) -> Self {
        Self {
            path: String::new(),
            value,
            ignored: None,
        }
    }

    /// The root of a tree whose unknown keys, at any depth, are not errors: [`Obj::finish`]
    /// records their paths in `ignored` instead. Known keys that are not supported still fail
    /// ([`Obj::unsupported`]).
    pub fn root_ignoring_unknown(value: Value, ignored: &Ignored) -> Self {
        Self {
            path: String::new(),
            value,
            ignored: Some(ignored.clone()),
        }
    }

    /// The path shown in messages (`(top level)` for the root).
    pub fn shown(&self) -> &str {
        if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        }
    }

    pub fn err(&self, message: impl Into<String>) -> FieldError {
        FieldError {
            path: self.shown().to_owned(),
            message: message.into(),
            value: Some(shortened(&self.value)),
        }
    }

    fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    fn expected(&self, what: &str) -> FieldError {
        self.err(format!("expected {what}, found {}", self.kind()))
    }

    pub fn obj(self) -> Result<Obj> {
        match self.value {
            Value::Object(map) => Ok(Obj {
                path: self.path,
                map,
                ignored: self.ignored,
            }),
            _ => Err(self.expected("an object")),
        }
    }

    pub fn str(&self) -> Result<String> {
        self.value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.expected("a string"))
    }

    pub fn bool(&self) -> Result<bool> {
        self.value
            .as_bool()
            .ok_or_else(|| self.expected("true or false"))
    }

    pub fn u64(&self) -> Result<u64> {
        self.value
            .as_u64()
            .ok_or_else(|| self.expected("a non-negative integer"))
    }

    pub fn i64(&self) -> Result<i64> {
        self.value
            .as_i64()
            .ok_or_else(|| self.expected("an integer"))
    }

    pub fn u32(&self) -> Result<u32> {
        u32::try_from(self.u64()?).map_err(|_| self.err("out of range (at most 4294967295)"))
    }

    /// The elements of an array, each with its indexed path.
    pub fn array(self) -> Result<Vec<Field>> {
        match self.value {
            Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, value)| Field {
                    path: format!("{}[{i}]", self.path),
                    value,
                    ignored: self.ignored.clone(),
                })
                .collect()),
            _ => Err(self.expected("an array")),
        }
    }

    pub fn strings(self) -> Result<Vec<String>> {
        self.array()?.iter().map(Field::str).collect()
    }
}

/// An object whose keys are taken one by one; [`Obj::finish`] rejects what is left.
#[derive(Debug)]
pub struct Obj {
    path: String,
    map: Map<String, Value>,
    ignored: Option<Ignored>,
}

impl Obj {
    /// An empty object at `path` (for optional sections that are absent).
    pub fn empty(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            map: Map::new(),
            ignored: None,
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Removes `key`; a JSON `null` counts as absent.
    pub fn take(&mut self, key: &str) -> Option<Field> {
        match self.map.remove(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Field {
                path: self.child_path(key),
                value,
                ignored: self.ignored.clone(),
            }),
        }
    }

    pub fn require(&mut self, key: &str) -> Result<Field> {
        self.take(key).ok_or_else(|| FieldError {
            path: self.child_path(key),
            message: "required field missing".into(),
            value: None,
        })
    }

    pub fn take_str(&mut self, key: &str) -> Result<Option<String>> {
        self.take(key).map(|f| f.str()).transpose()
    }

    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key).map(|f| f.bool()).transpose()
    }

    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        self.take(key).map(|f| f.u64()).transpose()
    }

    pub fn take_strings(&mut self, key: &str) -> Result<Vec<String>> {
        self.take(key)
            .map(Field::strings)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn take_array(&mut self, key: &str) -> Result<Vec<Field>> {
        self.take(key)
            .map(Field::array)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn take_obj(&mut self, key: &str) -> Result<Option<Obj>> {
        self.take(key).map(Field::obj).transpose()
    }

    /// Drops a key whose value changes nothing for palisade (documentation, annotations).
    pub fn ignore(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// A field palisade does not implement: an error when it holds anything (an empty array,
    /// object or string means "nothing asked" and is accepted).
    pub fn unsupported(&mut self, key: &str, why: &str) -> Result<()> {
        match self.take(key) {
            Some(f) if !is_empty(&f.value) => Err(f.err(format!("not supported: {why}"))),
            _ => Ok(()),
        }
    }

    /// Every key not taken is an error (nothing in the input is silently ignored), or, in a
    /// tree read with [`Field::root_ignoring_unknown`], recorded as ignored.
    pub fn finish(self) -> Result<()> {
        if let Some(ignored) = &self.ignored {
            let mut paths = ignored.0.borrow_mut();
            paths.extend(self.map.keys().map(|k| self.child_path(k)));
            return Ok(());
        }
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(FieldError {
                path: self.child_path(key),
                message:
                    "unknown field (not part of the format palisade reads; check the spelling)"
                        .into(),
                value: self.map.get(key).map(shortened),
            }),
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_leftovers() {
        let v = parse(r#"{"a":{"b":[1,{"c":"x"}],"n":null},"z":true}"#).unwrap();
        let mut top = Field::root(v).obj().unwrap();
        let mut a = top.take_obj("a").unwrap().unwrap();
        assert!(a.take("n").is_none(), "null is absent");
        let items = a.take_array("b").unwrap();
        assert_eq!(items[0].u64().unwrap(), 1);
        let e = items[0].str().unwrap_err();
        assert_eq!(e.to_string(), "a.b[0]: expected a string, found a number");
        assert_eq!(e.value.as_deref(), Some("1"));
        let mut c = items[1].clone().obj().unwrap();
        assert_eq!(c.take_str("c").unwrap().as_deref(), Some("x"));
        c.finish().unwrap();
        a.finish().unwrap();
        let e = top.finish().unwrap_err();
        assert_eq!(e.path, "z");
    }

    #[test]
    fn unsupported_fields_are_errors_unless_empty() {
        let v = parse(r#"{"x":[],"y":{"k":1},"w":""}"#).unwrap();
        let mut o = Field::root(v).obj().unwrap();
        o.unsupported("x", "nope").unwrap();
        o.unsupported("w", "nope").unwrap();
        let e = o.unsupported("y", "use runc").unwrap_err();
        assert_eq!(e.to_string(), "y: not supported: use runc");
    }

    #[test]
    fn unknown_keys_are_collected_where_asked_and_unsupported_ones_still_fail() {
        let v = parse(r#"{"a":{"b":[{"x":1,"y":2}],"k":3},"z":true,"u":{"q":1}}"#).unwrap();
        let ignored = Ignored::default();
        let mut top = Field::root_ignoring_unknown(v, &ignored).obj().unwrap();
        let mut a = top.take_obj("a").unwrap().unwrap();
        let mut item = a.take_array("b").unwrap().remove(0).obj().unwrap();
        assert_eq!(item.take_u64("x").unwrap(), Some(1));
        item.finish().unwrap();
        a.finish().unwrap();
        let e = top.unsupported("u", "not here").unwrap_err();
        assert_eq!(e.to_string(), "u: not supported: not here");
        top.finish().unwrap();
        assert_eq!(ignored.paths(), ["a.b[0].y", "a.k", "z"]);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("{\n  \"a\": 1,\n  oops\n}").unwrap_err();
        assert_eq!((e.line(), e.column()), (3, 3));
    }
}
