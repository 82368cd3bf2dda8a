//! Config parsing: any text parses or gives a one-line error; never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statehost::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Some("fuzz.toml".as_ref()), "/base".into(), std::iter::empty()) {
        Ok(config) => {
            assert!(config.plugins_dir.is_absolute());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "multi-line error: {message}");
        }
    }
});
