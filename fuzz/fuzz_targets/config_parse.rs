//! Any text, with any overrides, parses to a config or to a list of problems; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, Vec<(String, String)>)| {
    let (text, env) = input;
    let env = env.into_iter().map(|(k, v)| (format!("CHUNKGATE_{k}"), v));
    if let Ok(config) = chunkgate::config::Config::parse(text, env) {
        // What parsed is valid by its own account.
        assert!(config.problems().is_empty());
    }
});
