//! A backend's options: the `[backends.<name>]` table, with the values the
//! environment overrides kept as text until the backend says what type
//! each option has.

use std::collections::BTreeMap;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor,
};
use serde_json::{Map, Value};

use crate::BackendError;

/// The backend's options: the `[backends.<name>]` table of the host's
/// configuration.
///
/// Values set in the config file keep their TOML types. Values set by an
/// environment variable (`STATEHOST__BACKENDS__<NAME>__<KEY>=text`) arrive
/// as text and are parsed into whatever type the backend's options struct
/// declares for that key: `"123"` becomes a number for a `u64` option and
/// stays `"123"` for a `String` one. Lists and tables from the environment
/// are written as JSON (`["a","b"]`).
///
/// ```
/// use serde::Deserialize;
/// use statehost_plugin_api::Options;
///
/// #[derive(Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Config {
///     endpoint: String,
///     #[serde(default)]
///     timeout_ms: u64,
///     #[serde(default)]
///     key_prefix: String,
/// }
///
/// let options = Options::new(serde_json::json!({"endpoint": "kv://10.0.0.5"}))
///     .with_env("timeout_ms", "STATEHOST__BACKENDS__KV__TIMEOUT_MS", "250")
///     .with_env("key_prefix", "STATEHOST__BACKENDS__KV__KEY_PREFIX", "123");
/// let config: Config = options.parse("kv").unwrap();
/// assert_eq!(config.timeout_ms, 250);
/// assert_eq!(config.key_prefix, "123");
///
/// // Errors name the section, the key and the type it takes.
/// let bad = Options::new(serde_json::json!({"endpoint": "kv://x", "timeout_ms": "soon"}));
/// let err = bad.parse::<Config>("kv").err().unwrap();
/// assert!(err.message().starts_with("[backends.kv] timeout_ms: "), "{err}");
/// assert!(err.message().contains("u64"), "{err}");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    value: Value,
    /// Keys whose value is text from the environment, with the variable
    /// that set it.
    env: BTreeMap<String, String>,
    /// Keys whose values are secret (the backend's
    /// [`SECRET_OPTIONS`](crate::BackendPlugin::SECRET_OPTIONS)).
    secret: Vec<String>,
}

/// Whether an option (or connection parameter) holds a secret by its name
/// alone: `password`, `aws_secret_access_key`, `token`, `azure_storage_sas_key`,
/// ... The host treats such options as secret whatever the plugin declares.
pub fn secret_by_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "private_key",
        "account_key",
        "sas",
    ]
    .iter()
    .any(|word| name.contains(word))
}

impl Options {
    /// Options from a JSON value (`null` means no options).
    pub fn new(value: Value) -> Self {
        Options {
            value,
            env: BTreeMap::new(),
            secret: Vec::new(),
        }
    }

    /// Marks options as secret (keys, or dotted paths into tables, like
    /// `options.account_key`): their values never appear in
    /// [`parse`](Options::parse)'s errors. (Plugins get their
    /// [`SECRET_OPTIONS`](crate::BackendPlugin::SECRET_OPTIONS) marked
    /// before their constructor runs.)
    pub fn with_secret(mut self, keys: &[&str]) -> Self {
        self.secret.extend(keys.iter().map(|k| k.to_string()));
        self
    }

    /// Whether the option at `path` (`key`, or `table.key` inside a table)
    /// is secret, or inside one that is.
    fn is_secret(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split(['.', '[']).collect();
        segments.iter().any(|s| secret_by_name(s))
            || (1..=segments.len()).any(|n| self.secret.contains(&segments[..n].join(".")))
    }

    /// Options from JSON text (empty text means no options).
    pub fn from_json(text: &str) -> Result<Self, BackendError> {
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text)
                .map_err(|e| BackendError::config(format!("options are not valid JSON: {e}")))?
        };
        Ok(Options::new(value))
    }

    /// Sets `key` to `text` as the environment variable `var` gave it: the
    /// text is parsed into the type the options struct declares for `key`.
    pub fn with_env(mut self, key: &str, var: &str, text: &str) -> Self {
        if !self.value.is_object() {
            self.value = Value::Object(Map::new());
        }
        if let Value::Object(table) = &mut self.value {
            table.insert(key.to_string(), Value::String(text.to_string()));
        }
        self.env.insert(key.to_string(), var.to_string());
        self
    }

    /// Marks keys whose (text) values came from environment variables, as
    /// the host reports them: `key -> variable`.
    pub(crate) fn mark_env(&mut self, keys: BTreeMap<String, String>) {
        let table = self.value.as_object();
        self.env = keys
            .into_iter()
            .filter(|(key, _)| table.and_then(|t| t.get(key)).is_some_and(Value::is_string))
            .collect();
    }

    /// The options as JSON; values from the environment appear as strings.
    pub fn as_json(&self) -> &Value {
        &self.value
    }

    /// The environment variable that set `key`, if one did.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// Deserializes the options into the backend's own options struct.
    ///
    /// Mark the struct `#[serde(deny_unknown_fields)]` so an unknown key is
    /// rejected by name. Every error is one line that names the section
    /// (`[backends.<backend>]`), the key, the type the key takes and, for a
    /// value from the environment, the variable. Missing options
    /// deserialize from an empty table, so `#[serde(default)]` fields work
    /// when the section is absent.
    pub fn parse<T: DeserializeOwned>(&self, backend: &str) -> Result<T, BackendError> {
        let empty = Map::new();
        let table = match &self.value {
            Value::Null => &empty,
            Value::Object(table) => table,
            other => {
                return Err(BackendError::config(format!(
                    "[backends.{backend}] must be a table of options, not {other}"
                )));
            }
        };
        let deserializer = TableDeserializer {
            table,
            env: &self.env,
        };
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let key = path.split(['.', '[']).next().unwrap_or_default();
            let from = match self.env.get(key) {
                Some(var) => format!(" (set by {var})"),
                None => String::new(),
            };
            let message = if self.is_secret(&path) {
                // Serde quotes the value it could not take: not this one.
                "not a valid value (not shown: the option is secret)".to_string()
            } else {
                crate::error::one_line(&e.into_inner().to_string())
            };
            if path == "." {
                BackendError::config(format!("[backends.{backend}]: {message}"))
            } else {
                BackendError::config(format!("[backends.{backend}] {path}{from}: {message}"))
            }
        })
    }
}

/// The options table, with each key's value coming from the file (a JSON
/// value) or from the environment (text parsed on demand).
struct TableDeserializer<'a> {
    table: &'a Map<String, Value>,
    env: &'a BTreeMap<String, String>,
}

impl<'de> Deserializer<'de> for TableDeserializer<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(Entries {
            entries: self.table.iter(),
            env: self.env,
            pending: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct Entries<'a> {
    entries: serde_json::map::Iter<'a>,
    env: &'a BTreeMap<String, String>,
    pending: Option<(&'a str, &'a Value)>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key.as_str(), value));
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a value was asked for before its key"))?;
        match (self.env.get(key), value) {
            (Some(_), Value::String(text)) => seed.deserialize(EnvText(text)),
            _ => seed.deserialize(value),
        }
    }
}

/// A value from the environment: text, parsed into the type asked for.
struct EnvText<'a>(&'a str);

impl EnvText<'_> {
    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, serde_json::Error> {
        self.0
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format_args!("{:?} is not {what}", self.0)))
    }

    /// Lists, tables and the like come as JSON text.
    fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.0).map_err(|e| {
            de::Error::custom(format_args!(
                "{:?} is not JSON ({e}); write lists and tables from the environment as JSON",
                self.0
            ))
        })
    }
}

macro_rules! parse_number {
    ($($method:ident => $visit:ident: $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.$visit(self.parse::<$ty>($what)?)
        }
    )*};
}

impl<'de> Deserializer<'de> for EnvText<'de> {
    type Error = serde_json::Error;

    /// Nothing says which type: it is text.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0.trim() {
            "true" | "1" => visitor.visit_bool(true),
            "false" | "0" => visitor.visit_bool(false),
            _ => Err(de::Error::custom(format_args!(
                "{:?} is not a boolean: write true or false",
                self.0
            ))),
        }
    }

    parse_number! {
        deserialize_i8 => visit_i8: i8, "a whole number (i8)";
        deserialize_i16 => visit_i16: i16, "a whole number (i16)";
        deserialize_i32 => visit_i32: i32, "a whole number (i32)";
        deserialize_i64 => visit_i64: i64, "a whole number (i64)";
        deserialize_i128 => visit_i128: i128, "a whole number (i128)";
        deserialize_u8 => visit_u8: u8, "a whole number from 0 (u8)";
        deserialize_u16 => visit_u16: u16, "a whole number from 0 (u16)";
        deserialize_u32 => visit_u32: u32, "a whole number from 0 (u32)";
        deserialize_u64 => visit_u64: u64, "a whole number from 0 (u64)";
        deserialize_u128 => visit_u128: u128, "a whole number from 0 (u128)";
        deserialize_f32 => visit_f32: f32, "a number (f32)";
        deserialize_f64 => visit_f64: f64, "a number (f64)";
        deserialize_char => visit_char: char, "a single character";
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        if self.0.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        if self.0.is_empty() {
            visitor.visit_unit()
        } else {
            Err(de::Error::custom(format_args!(
                "{:?} is not empty, and this option takes no value",
                self.0
            )))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // A plain word names a unit variant; anything else is JSON.
        let text = self.0.trim();
        if text.starts_with('{') || text.starts_with('"') {
            return self.json()?.deserialize_enum(name, variants, visitor);
        }
        let word: de::value::BorrowedStrDeserializer<'de, serde_json::Error> =
            de::value::BorrowedStrDeserializer::new(text);
        word.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.json()?.deserialize_seq(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json()?.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json()?.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.json()?.deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json()?.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        str string bytes byte_buf identifier
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for EnvText<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Codec {
        Plain,
        Zstd,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        root: PathBuf,
        #[serde(default)]
        key_prefix: String,
        #[serde(default)]
        threshold: usize,
        #[serde(default)]
        fsync: bool,
        #[serde(default)]
        ratio: Option<f64>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default = "plain")]
        codec: Codec,
    }

    fn plain() -> Codec {
        Codec::Plain
    }

    fn env(key: &str, text: &str) -> Options {
        Options::new(json!({"root": "/r"})).with_env(
            key,
            &format!("STATEHOST__BACKENDS__X__{}", key.to_uppercase()),
            text,
        )
    }

    #[test]
    fn environment_text_takes_the_declared_type() {
        let c: Config = env("key_prefix", "123").parse("x").unwrap();
        assert_eq!(c.key_prefix, "123");
        let c: Config = env("threshold", " 64 ").parse("x").unwrap();
        assert_eq!(c.threshold, 64);
        let c: Config = env("fsync", "true").parse("x").unwrap();
        assert!(c.fsync);
        let c: Config = env("ratio", "0.5").parse("x").unwrap();
        assert_eq!(c.ratio, Some(0.5));
        let c: Config = env("ratio", "").parse("x").unwrap();
        assert_eq!(c.ratio, None);
        let c: Config = env("tags", r#"["a","b"]"#).parse("x").unwrap();
        assert_eq!(c.tags, ["a", "b"]);
        let c: Config = env("codec", "zstd").parse("x").unwrap();
        assert_eq!(c.codec, Codec::Zstd);
        let c: Config = env("root", "true").parse("x").unwrap();
        assert_eq!(c.root, PathBuf::from("true"));
    }

    #[test]
    fn file_values_keep_their_types() {
        // The same text from the file is a string, and a string is not a
        // number: only the environment's text is parsed.
        let err = Options::new(json!({"root": "/r", "threshold": "64"}))
            .parse::<Config>("x")
            .unwrap_err();
        assert_eq!(
            err.message(),
            "[backends.x] threshold: invalid type: string \"64\", expected usize"
        );
    }

    #[test]
    fn errors_name_section_key_type_and_variable() {
        let err = env("threshold", "lots").parse::<Config>("x").unwrap_err();
        assert_eq!(
            err.message(),
            "[backends.x] threshold (set by STATEHOST__BACKENDS__X__THRESHOLD): \"lots\" is not a whole number from 0 (u64)"
        );
        let err = env("fsync", "yes").parse::<Config>("x").unwrap_err();
        assert!(err.message().contains("is not a boolean"), "{err}");
        let err = env("codec", "lz4").parse::<Config>("x").unwrap_err();
        assert!(err.message().contains("unknown variant `lz4`"), "{err}");
        let err = Options::new(json!({"root": "/r", "rooot": 1}))
            .parse::<Config>("x")
            .unwrap_err();
        assert!(
            err.message().starts_with("[backends.x]") && err.message().contains("`rooot`"),
            "{err}"
        );
        let err = Options::default().parse::<Config>("x").unwrap_err();
        assert_eq!(err.message(), "[backends.x]: missing field `root`");
        let err = Options::new(json!(5)).parse::<Config>("x").unwrap_err();
        assert!(err.message().contains("must be a table"), "{err}");
    }

    #[test]
    fn secret_values_stay_out_of_errors() {
        #[derive(Debug, Deserialize)]
        struct Secretive {
            #[allow(dead_code)]
            pin: u32,
            #[allow(dead_code)]
            api_token: u32,
        }
        let options =
            Options::new(json!({"pin": "s3cr3t-pin", "api_token": 1})).with_secret(&["pin"]);
        let err = options.parse::<Secretive>("x").unwrap_err();
        assert_eq!(
            err.message(),
            "[backends.x] pin: not a valid value (not shown: the option is secret)"
        );
        let options = Options::new(json!({"pin": 1})).with_env("api_token", "V", "s3cr3t-tok");
        let err = options.parse::<Secretive>("x").unwrap_err();
        assert!(!err.message().contains("s3cr3t"), "{err}");
        assert!(err.message().contains("api_token (set by V)"), "{err}");
    }

    #[test]
    fn marks_from_the_wire_apply_to_text_values_only() {
        let mut options = Options::new(json!({"root": "/r", "threshold": 3}));
        options.mark_env(
            [
                ("threshold".to_string(), "V1".to_string()),
                ("missing".to_string(), "V2".to_string()),
            ]
            .into(),
        );
        assert_eq!(options.env_var("threshold"), None);
        assert_eq!(options.env_var("missing"), None);
        let c: Config = options.parse("x").unwrap();
        assert_eq!(c.threshold, 3);
    }
}
