//! Reading a GGUF file's header and metadata, not its tensors: the model's loader and the LoRA
//! adapters' both start here.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

/// Reads a GGUF file's header and metadata.
pub(crate) fn read_content(path: &Path) -> Result<(Content, File), String> {
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // candle's error quotes the file's first bytes ("unknown magic ..."): logged, never returned,
    // since a load error reaches the client that asked for the load.
    let content = Content::read(&mut file).map_err(|e| {
        tracing::debug!(path = %path.display(), "not a GGUF file: {e}");
        format!("{}: not a readable GGUF file", path.display())
    })?;
    Ok((content, file))
}
