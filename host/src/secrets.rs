//! Secrets the process knows (database passwords, backend options marked
//! secret) and their removal from anything printed.
//!
//! Every place that prints avoids secrets on its own (messages name keys,
//! not values; URLs are shown without their password). This is the last
//! line: the configuration registers each secret value as it is read, and
//! the command line passes every error and log line through [`redact`], so
//! a secret that reaches a message anyway (a plugin that echoes its
//! options, a driver that quotes a URL) is printed as `***`.

use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Secrets shorter than this are not registered: replacing every `1` or
/// `on` in every message would destroy the messages and protect nothing.
const MIN_SECRET_CHARS: usize = 4;

/// Remembers `secret`, so that [`redact`] removes it from text.
pub fn register(secret: &str) {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
        // Longest first, so a secret containing another is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers every string in `value` (a secret option may be a table of
/// secrets, like an object store's credentials).
pub fn register_json(value: &serde_json::Value) {
    match value {
        serde_json::Value::String(s) => register(s),
        serde_json::Value::Array(items) => items.iter().for_each(register_json),
        serde_json::Value::Object(map) => map.values().for_each(register_json),
        _ => {}
    }
}

/// Registers the secret values of a backend's options: the options the
/// plugin declares secret (`declared`: keys, or dotted paths into tables
/// like `options.azure_storage_account_key`) and, at any depth, keys whose
/// names say so.
pub fn register_options(table: &serde_json::Value, declared: &[String]) {
    fn walk(value: &serde_json::Value, declared: &[String], path: &str) {
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if declared.contains(&path) || is_secret_name(key) {
                    register_json(value);
                } else {
                    walk(value, declared, &path);
                }
            }
        }
    }
    walk(table, declared, "");
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), "***"));
        }
    }
    out
}

pub use statehost_plugin_api::secret_by_name as is_secret_name;

/// A database URL (or `key=value` connection string) with its password
/// replaced, and the password registered.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && parsed.has_host()
    {
        if let Some(password) = parsed.password() {
            let password = percent_decode(password);
            register(&password);
            let _ = parsed.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.iter().any(|(k, _)| is_secret_name(k)) {
            let mut query = parsed.query_pairs_mut();
            query.clear();
            for (k, v) in &pairs {
                if is_secret_name(k) {
                    register(v);
                    query.append_pair(k, "***");
                } else {
                    query.append_pair(k, v);
                }
            }
        }
        return parsed.to_string();
    }
    // key=value form: `host=db password=... dbname=x`.
    url.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some((key, value)) if is_secret_name(key) => {
                register(value.trim_matches('\''));
                format!("{key}=***")
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_removed_from_any_text() {
        register("hunter2-the-secret");
        register("ab"); // too short to register
        assert_eq!(
            redact("auth failed for hunter2-the-secret at ab"),
            "auth failed for *** at ab"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn options_register_declared_and_named_secrets_at_any_depth() {
        let table = serde_json::json!({
            "url": "s3://bucket",
            "api_key": "declared-secret-1",
            "options": {
                "aws_secret_access_key": "named-secret-2",
                "region": "eu-west-1",
                "odd_name": "declared-secret-4",
            },
            "password": ["named-secret-3"],
        });
        register_options(
            &table,
            &["api_key".to_string(), "options.odd_name".to_string()],
        );
        assert_eq!(
            redact(
                "declared-secret-1 named-secret-2 named-secret-3 declared-secret-4 eu-west-1 s3://bucket"
            ),
            "*** *** *** *** eu-west-1 s3://bucket"
        );
    }

    #[test]
    fn urls_lose_their_passwords_wherever_they_are() {
        assert_eq!(
            redact_url("postgresql://u:p%40ss-word@db:5432/x?sslmode=require"),
            "postgresql://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact("p@ss-word"), "***");
        assert_eq!(
            redact_url("postgresql://u@db/x?password=qu3ry-pass&sslmode=verify-full"),
            "postgresql://u@db/x?password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact_url("host=db password=kv-pass dbname=x"),
            "host=db password=*** dbname=x"
        );
        assert_eq!(redact("kv-pass and qu3ry-pass"), "*** and ***");
        assert_eq!(redact_url("sqlite://state.db"), "sqlite://state.db");
    }
}
