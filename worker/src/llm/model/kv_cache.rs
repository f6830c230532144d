//! One sequence's KV cache: per layer, keys and values of every position so far, in buffers that
//! grow by doubling, so a decode step appends in place instead of copying the whole history.

use candle_core::{Result, Tensor};

#[derive(Debug, Default)]
struct LayerCache {
    /// `[kv_heads, capacity, head_dim]`; the first `len` positions are filled.
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

#[derive(Debug)]
pub(crate) struct SequenceCache {
    layers: Vec<LayerCache>,
    len: usize,
}

/// Positions a fresh buffer holds before its first doubling.
const MIN_CAPACITY: usize = 64;

impl SequenceCache {
    pub(crate) fn new(num_layers: usize) -> SequenceCache {
        SequenceCache { layers: (0..num_layers).map(|_| LayerCache::default()).collect(), len: 0 }
    }

    /// Positions cached (the same in every layer once a forward pass has finished).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `[kv_heads, n, head_dim]` keys and values to `layer` and returns everything cached
    /// for it, `[kv_heads, len + n, head_dim]` (views into the buffers).
    pub(crate) fn append(&mut self, layer: usize, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let start = self.len;
        let Some(cache) = self.layers.get_mut(layer) else { candle_core::bail!("no KV cache for layer {layer}") };
        let keys = append_grow(&mut cache.keys, keys, start)?;
        let values = append_grow(&mut cache.values, values, start)?;
        Ok((keys, values))
    }

    /// Called once per forward pass, after every layer has appended `n` positions.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

fn append_grow(buffer: &mut Option<Tensor>, new: &Tensor, start: usize) -> Result<Tensor> {
    let (heads, n, head_dim) = new.dims3()?;
    let needed = start + n;
    let capacity = buffer.as_ref().map_or(0, |b| b.dims()[1]);
    if needed > capacity {
        let grown = needed.max(capacity * 2).max(MIN_CAPACITY);
        let fresh = Tensor::zeros((heads, grown, head_dim), new.dtype(), new.device())?;
        if let Some(old) = buffer.as_ref().filter(|_| start > 0) {
            fresh.slice_set(&old.narrow(1, 0, start)?.contiguous()?, 1, 0)?;
        }
        *buffer = Some(fresh);
    }
    let Some(buffer) = buffer.as_ref() else { candle_core::bail!("KV buffer missing after allocation") };
    buffer.slice_set(&new.contiguous()?, 1, start)?;
    buffer.narrow(1, 0, needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn appends_across_doublings_keep_every_position() {
        let device = Device::Cpu;
        let mut cache = SequenceCache::new(1);
        let mut expected = Vec::new();
        for step in 0..100u32 {
            let n = if step == 0 { 40 } else { 1 };
            let values: Vec<f32> = (0..2 * n * 3).map(|i| (step * 1000 + i as u32) as f32).collect();
            let chunk = Tensor::from_vec(values, (2, n, 3), &device).unwrap();
            expected.push(chunk.clone());
            let (keys, _) = cache.append(0, &chunk, &chunk).unwrap();
            cache.advance(n);
            assert_eq!(keys.dims(), &[2, cache.len(), 3]);
        }
        let all = Tensor::cat(&expected, 1).unwrap();
        let (keys, _) = cache.append(0, &all.i((.., 0..1, ..)).unwrap(), &all.i((.., 0..1, ..)).unwrap()).unwrap();
        let diff = (keys.narrow(1, 0, all.dims()[1]).unwrap() - &all).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
