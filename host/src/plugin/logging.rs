//! The log bridge: a plugin has its own copy of the `log` crate, so the host
//! hands it a callback at construction, and the plugin's records come out of
//! the host's logger under `statehost::plugin::<name>`.

use abi_stable::std_types::RStr;

/// Sends a plugin's log records to the host's logger, under the plugin's
/// name.
#[derive(Debug, Clone)]
pub(crate) struct PluginLogger {
    target: String,
}

impl PluginLogger {
    /// The bridge for plugin `name`.
    pub(crate) fn new(name: &str) -> Self {
        PluginLogger {
            target: format!("statehost::plugin::{name}"),
        }
    }

    fn forward(&self, level: u8, message: &str) {
        let level = match level {
            1 => log::Level::Error,
            2 => log::Level::Warn,
            3 => log::Level::Info,
            4 => log::Level::Debug,
            _ => log::Level::Trace,
        };
        if level > log::max_level() {
            return;
        }
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(&self.target)
                .args(format_args!("{message}"))
                .build(),
        );
    }
}

/// A plugin's message as text: its bytes are not trusted to be UTF-8 (a
/// broken plugin can send any), so bad sequences are replaced.
fn text(message: RStr<'_>) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(message.as_rslice().as_slice())
}

impl statehost_plugin_api::__private::AbiLogger for PluginLogger {
    fn log(&self, level: u8, _target: RStr<'_>, message: RStr<'_>) {
        self.forward(level, &text(message));
    }
}

impl statehost_plugin_api_v1::__private::AbiLogger for PluginLogger {
    fn log(&self, level: u8, _target: RStr<'_>, message: RStr<'_>) {
        self.forward(level, &text(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_is_not_utf8_is_forwarded_with_replacements() {
        let bytes = b"bad \xff\xfe byte";
        // SAFETY: the pointer and length are those of `bytes`, which
        // outlives `message`; what a broken plugin sends, not UTF-8, and
        // read here only as bytes.
        let message = unsafe { RStr::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        assert_eq!(text(message), "bad \u{fffd}\u{fffd} byte");
        assert_eq!(text(RStr::from("plain")), "plain");
    }
}
