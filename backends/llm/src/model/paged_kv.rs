//! The model's KV store: per layer, one key and one value tensor `[kv_heads, blocks * block_size,
//! head_dim]` shared by every sequence, which own blocks of positions in it (the engine's
//! [`BlockPool`](crate::block_pool::BlockPool) hands them out). A sequence's position `j` lives
//! in row `blocks[j / block_size] * block_size + j % block_size`, so a decode step writes its one
//! new row in place and reads the history through the block table, with no copy of it.
//!
//! On the CPU the tensors are zero-filled lazily by the allocator, so the pool costs memory as
//! blocks are first written, not when the engine starts.

use candle_core::{DType, Device, Result, Tensor};

use crate::block_pool::BlockId;

/// Keys and values of every layer, in blocks.
#[derive(Debug)]
pub(crate) struct KvStore {
    block_size: usize,
    blocks: usize,
    layers: Vec<(Tensor, Tensor)>,
}

/// The shape of a store, for building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

impl KvStore {
    pub(crate) fn new(layout: KvLayout, blocks: usize, block_size: usize, device: &Device) -> Result<KvStore> {
        if blocks == 0 || block_size == 0 {
            candle_core::bail!("a KV store needs at least one block of at least one position");
        }
        let rows = blocks.checked_mul(block_size).filter(|&r| r <= u32::MAX as usize);
        let Some(rows) = rows else { candle_core::bail!("{blocks} blocks of {block_size} positions is too many") };
        let shape = (layout.kv_heads, rows, layout.head_dim);
        let layers = (0..layout.layers)
            .map(|_| Ok((Tensor::zeros(shape, layout.dtype, device)?, Tensor::zeros(shape, layout.dtype, device)?)))
            .collect::<Result<_>>()?;
        Ok(KvStore { block_size, blocks, layers })
    }

    /// The physical rows of a sequence's positions `0..positions` under its block table.
    pub(crate) fn rows(&self, blocks: &[BlockId], positions: usize) -> Result<Vec<u32>> {
        if positions > blocks.len() * self.block_size {
            candle_core::bail!("{positions} positions need more than the sequence's {} blocks", blocks.len());
        }
        if let Some(bad) = blocks.iter().find(|&&b| b as usize >= self.blocks) {
            candle_core::bail!("block {bad} is outside the KV store of {} blocks", self.blocks);
        }
        let size = self.block_size as u32;
        Ok((0..positions as u32).map(|j| blocks[(j / size) as usize] * size + j % size).collect())
    }

    /// Layer `layer`'s keys and values, whole.
    pub(crate) fn layer(&self, layer: usize) -> Result<&(Tensor, Tensor)> {
        match self.layers.get(layer) {
            Some(kv) => Ok(kv),
            None => candle_core::bail!("no KV store for layer {layer}"),
        }
    }

    /// Writes `keys` and `values` (`[kv_heads, n, head_dim]`) into `rows` (n physical rows) of
    /// `layer`, one copy per run of consecutive rows.
    pub(crate) fn write(&self, layer: usize, rows: &[u32], keys: &Tensor, values: &Tensor) -> Result<()> {
        let (store_keys, store_values) = self.layer(layer)?;
        let mut start = 0;
        while start < rows.len() {
            let mut end = start + 1;
            while end < rows.len() && rows[end] == rows[end - 1] + 1 {
                end += 1;
            }
            let at = rows[start] as usize;
            store_keys.slice_set(&keys.narrow(1, start, end - start)?.contiguous()?, 1, at)?;
            store_values.slice_set(&values.narrow(1, start, end - start)?.contiguous()?, 1, at)?;
            start = end;
        }
        Ok(())
    }

    /// Block `id`'s keys and values of every layer (keys then values, `[kv_heads, block_size,
    /// head_dim]` each), as f32: what the offload tier writes to disk.
    pub(crate) fn read_block(&self, id: BlockId) -> Result<Vec<f32>> {
        let start = self.block_start(id)?;
        let mut out = Vec::new();
        for (keys, values) in &self.layers {
            for tensor in [keys, values] {
                let block = tensor.narrow(1, start, self.block_size)?.to_dtype(DType::F32)?;
                out.extend(block.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(out)
    }

    /// Writes what [`read_block`](Self::read_block) gave back into block `id`.
    pub(crate) fn write_block(&self, id: BlockId, data: &[f32]) -> Result<()> {
        let start = self.block_start(id)?;
        let Some((first, _)) = self.layers.first() else { return Ok(()) };
        let (kv_heads, _, head_dim) = first.dims3()?;
        let per_tensor = kv_heads * self.block_size * head_dim;
        if data.len() != per_tensor * 2 * self.layers.len() {
            candle_core::bail!("a block of {} values for a store that takes {}", data.len(), per_tensor * 2 * self.layers.len());
        }
        let mut chunks = data.chunks_exact(per_tensor);
        for (keys, values) in &self.layers {
            for tensor in [keys, values] {
                let Some(chunk) = chunks.next() else { candle_core::bail!("the block ran short") };
                let block = Tensor::from_slice(chunk, (kv_heads, self.block_size, head_dim), tensor.device())?
                    .to_dtype(tensor.dtype())?;
                tensor.slice_set(&block, 1, start)?;
            }
        }
        Ok(())
    }

    fn block_start(&self, id: BlockId) -> Result<usize> {
        if id as usize >= self.blocks {
            candle_core::bail!("block {id} is outside the KV store of {} blocks", self.blocks);
        }
        Ok(id as usize * self.block_size)
    }

    /// Layer `layer`'s keys and values at `rows` (a `u32` index tensor), gathered contiguous:
    /// `[kv_heads, rows, head_dim]` each.
    pub(crate) fn gather(&self, layer: usize, rows: &Tensor) -> Result<(Tensor, Tensor)> {
        let (keys, values) = self.layer(layer)?;
        Ok((keys.index_select(rows, 1)?, values.index_select(rows, 1)?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn written_rows_come_back_through_a_scattered_block_table() {
        let device = Device::Cpu;
        let layout = KvLayout { layers: 2, kv_heads: 2, head_dim: 3, dtype: DType::F32 };
        let store = KvStore::new(layout, 5, 4, &device).unwrap();
        let table = [3, 0, 4];
        let rows = store.rows(&table, 10).unwrap();
        assert_eq!(rows, [12, 13, 14, 15, 0, 1, 2, 3, 16, 17]);
        let data: Vec<f32> = (0..2 * 10 * 3).map(|i| i as f32).collect();
        let keys = Tensor::from_vec(data, (2, 10, 3), &device).unwrap();
        let values = (&keys * 2.0).unwrap();
        // Written in two chunks, as a prefill then two decode steps would.
        store.write(1, &rows[..8], &keys.narrow(1, 0, 8).unwrap(), &values.narrow(1, 0, 8).unwrap()).unwrap();
        for j in 8..10 {
            store.write(1, &rows[j..=j], &keys.narrow(1, j, 1).unwrap(), &values.narrow(1, j, 1).unwrap()).unwrap();
        }
        let index = Tensor::from_vec(rows, 10, &device).unwrap();
        let (k, v) = store.gather(1, &index).unwrap();
        assert_eq!(k.to_vec3::<f32>().unwrap(), keys.to_vec3::<f32>().unwrap());
        assert_eq!(v.to_vec3::<f32>().unwrap(), values.to_vec3::<f32>().unwrap());
        let (other, _) = store.gather(0, &index).unwrap();
        assert_eq!(other.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "layer 0 untouched");
    }

    #[test]
    fn a_block_read_out_writes_back_into_another() {
        let device = Device::Cpu;
        let layout = KvLayout { layers: 2, kv_heads: 2, head_dim: 3, dtype: DType::F32 };
        let store = KvStore::new(layout, 4, 2, &device).unwrap();
        let rows = store.rows(&[1], 2).unwrap();
        for layer in 0..2 {
            let keys = Tensor::arange(0f32, 12.0, &device).unwrap().reshape((2, 2, 3)).unwrap();
            let keys = (keys + (layer * 100) as f64).unwrap();
            store.write(layer, &rows, &keys, &(&keys * -1.0).unwrap()).unwrap();
        }
        let block = store.read_block(1).unwrap();
        assert_eq!(block.len(), 2 * 2 * 2 * 2 * 3);
        store.write_block(3, &block).unwrap();
        assert_eq!(store.read_block(3).unwrap(), block);
        assert!(store.write_block(3, &block[1..]).is_err());
        assert!(store.read_block(4).is_err());
    }

    #[test]
    fn a_table_too_short_or_out_of_range_is_an_error() {
        let layout = KvLayout { layers: 1, kv_heads: 1, head_dim: 2, dtype: DType::F32 };
        let store = KvStore::new(layout, 2, 4, &Device::Cpu).unwrap();
        assert!(store.rows(&[0], 5).is_err());
        assert!(store.rows(&[0, 2], 5).is_err());
        assert!(store.rows(&[1, 0], 8).is_ok());
        assert!(store.layer(1).is_err());
        assert!(KvStore::new(layout, 0, 4, &Device::Cpu).is_err());
    }
}
