//! The language model itself: a llama-family decoder loaded from a GGUF file or a Hugging Face
//! folder, with a batched forward pass over a paged KV store.

pub(crate) mod config;
mod cpu_attention;
mod decoder;
pub(crate) mod dense;
pub(crate) mod gguf;
pub(crate) mod gguf_header;
mod hf;
mod paged_kv;
mod q8_0;
#[cfg(test)]
mod throughput;

#[cfg(test)]
mod test_kv;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_paths;

use std::path::Path;

use candle_core::Device;

pub(crate) use decoder::{DecoderModel, SequenceInput};
pub(crate) use gguf::WeightPolicy;
#[cfg(test)]
pub(crate) use gguf::{Q8_0Kernel, Requantize};
pub(crate) use paged_kv::KvStore;

use tritium_backend_api::llm::{ModelCard, ModelKind};

/// Loads a decoder and its card from `path`: a `.gguf` file or a Hugging Face folder.
pub(crate) fn load(path: &Path, device: &Device) -> Result<(DecoderModel, ModelCard), String> {
    load_with(path, device, WeightPolicy::FAST)
}

/// [`load`] with a choice of how GGUF matrices are prepared (Hugging Face folders ignore it).
pub(crate) fn load_with(path: &Path, device: &Device, policy: WeightPolicy) -> Result<(DecoderModel, ModelCard), String> {
    let source = path.display().to_string();
    let (config, weights, mut card) = if path.is_dir() {
        let config = hf::read_config(path)?;
        let card = crate::card::card_from_hf_dir(path, ModelKind::Generate)?;
        let weights = hf::load_weights(path, &config, device)?;
        (config, weights, card)
    } else {
        let (content, mut file) = gguf_header::read_content(path)?;
        let config = gguf::config_from_gguf(&content)?;
        let card = crate::card::card_from_gguf(&content, &source)?;
        let weights = gguf::load_weights(&content, &mut file, &config, device, policy)?;
        (config, weights, card)
    };
    // The card's context length is what the frontend checks prompts against; the model's own
    // tables decide it.
    card.context_length = config.context_length;
    let model = DecoderModel::new(config, weights, device.clone()).map_err(|e| format!("{source}: {e}"))?;
    Ok((model, card))
}

/// The device models load on: the first CUDA GPU when built with `cuda` and one is present,
/// else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        match Device::cuda_if_available(0) {
            Ok(device) if device.is_cuda() => {
                // What the CPU path promises and this one does not, said where it is chosen.
                tracing::warn!(
                    "language models load on CUDA GPU 0: batch-invariant answers (the same bits whatever shares \
                     the batch, the prefix cache or a prefill worker) are promised on the CPU path only, whose \
                     kernels sum in a fixed order; this build has not been measured on a GPU"
                );
                return device;
            }
            Ok(device) => return device,
            Err(e) => tracing::warn!("no CUDA device, running on the CPU: {e}"),
        }
    }
    Device::Cpu
}
