//! Arbitrary text as `config.pbtxt`: a parse error is `ConfigParse` (never a panic or a stack
//! overflow), and a config that parses renders to JSON and parses back to the same JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tritium_worker::repository::{RepositoryError, normalize_config, parse_config_json, parse_config_text, render_config_json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_config_text(text) {
        Ok(config) => {
            let json = render_config_json(&config).expect("a parsed config renders");
            let again = parse_config_json(&json).expect("rendered JSON parses");
            assert_eq!(render_config_json(&again).expect("renders"), json);
            if let Err(error) = normalize_config("m", config) {
                assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg, "{error}");
            }
        }
        Err(error) => assert!(matches!(error, RepositoryError::ConfigParse { .. }), "{error}"),
    }
});
