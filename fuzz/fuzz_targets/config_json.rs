//! Arbitrary bytes as the JSON `config` parameter of `RepositoryModelLoad` (the config override a
//! client sends): a parse error is `ConfigParse`, and a config that parses renders to JSON and
//! parses back to the same JSON; normalizing it fails only with a client error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tritium_worker::repository::{RepositoryError, normalize_config, parse_config_json, render_config_json};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    match parse_config_json(json) {
        Ok(config) => {
            let rendered = render_config_json(&config).expect("a parsed config renders");
            let again = parse_config_json(&rendered).expect("rendered JSON parses");
            assert_eq!(render_config_json(&again).expect("renders"), rendered);
            if let Err(error) = normalize_config("m", config) {
                assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg, "{error}");
            }
        }
        Err(error) => assert!(matches!(error, RepositoryError::ConfigParse { .. }), "{error}"),
    }
});
