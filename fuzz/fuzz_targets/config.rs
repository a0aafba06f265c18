//! Fuzzes configuration parsing and validation (`config`): TOML text to
//! a validated `Config`.
//!
//! A config that parses also passes `validate` on its own and resolves
//! its backends; a rejected one yields at least one error, each located
//! inside the text, and prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpin::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text) {
        Ok(config) => {
            assert!(
                config.validate().is_ok(),
                "a parsed config fails validation"
            );
            let _ = config.warnings();
            assert_eq!(config.resolved_backends().len(), config.backend.len());
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            let lines = text.matches('\n').count() + 1;
            for error in errors.errors() {
                if let Some(location) = error.location() {
                    assert!(
                        location.line >= 1 && location.line <= lines,
                        "error outside the text"
                    );
                    assert!(location.column >= 1);
                }
            }
            assert!(!errors.to_string().is_empty());
        }
    }
});
