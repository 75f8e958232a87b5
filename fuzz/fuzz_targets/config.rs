//! The config parsers (knockd.conf grammar and TOML form) and the client's profile file on
//! arbitrary text: no panic, and whatever parses satisfies the invariants the kernel side and
//! the client rely on.
#![no_main]

use std::path::Path;

use knock_common::profile::{Knocks, Profiles};
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
    if let Ok(profiles) = Profiles::parse(Path::new("knock.toml"), text) {
        for p in profiles.tables.values() {
            assert!(!p.host.value.trim().is_empty() && p.line >= 1);
            match &p.knocks {
                Knocks::Sequence(s) => assert!(!s.value.is_empty()),
                Knocks::Secret { file, length, window, .. } => {
                    assert!(file.value.is_absolute());
                    assert!(length.as_ref().is_none_or(|l| (2..=8).contains(&l.value)));
                    assert!(window.as_ref().is_none_or(|w| w.value >= 1));
                }
            }
            assert!(p.command.as_ref().is_none_or(|c| c.value.first().is_some_and(|w| !w.is_empty())));
        }
    }
});
