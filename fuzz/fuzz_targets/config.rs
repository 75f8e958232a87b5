//! The config parsers (knockd.conf grammar and TOML form) on arbitrary text: no panic, and
//! whatever parses satisfies the invariants the kernel side relies on.
#![no_main]

use std::path::Path;

use knockd_user::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // One-time sequence files are opened by path: keep the fuzzer away from the filesystem.
    if text.to_ascii_lowercase().contains("one_time_sequences") {
        return;
    }
    for name in ["fuzz.conf", "fuzz.toml"] {
        if let Ok(config) = Config::parse(Path::new(name), text) {
            assert!(config.doors.len() <= 32);
            for door in &config.doors {
                assert!(!door.sequence.is_empty() && door.sequence.len() <= 32);
                assert!(door.sequence.iter().all(|k| k.port != 0));
                assert_eq!(door.flags_set & door.flags_clear, 0);
            }
        }
    }
});
