//! Q8_0 projections on x86 CPUs through `tritium-kernels`' register-tiled matmul instead of
//! candle's `QMatMul`. candle makes one dot product per (row, weight row), so a decode step of 8
//! sequences costs about 8 steps of one; the tiled kernel uses each weight load for 8 output
//! columns and up to 4 rows, which is what makes batching pay on the CPU. The integers are the
//! same (both quantize the activations with GGML's rule and sum exact block products); only the
//! order of the f32 accumulation differs, which moves results by ~3e-7 of their magnitude.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Storage, Tensor};
use tritium_kernels::{BlockQ8_0, Q8_0Matrix, Q8_0Rows, ThreadPool};

/// A `[n_out, k]` Q8_0 weight matrix held in the kernel's form.
#[derive(Debug)]
pub(crate) struct Q8_0Linear {
    matrix: Q8_0Matrix,
}

impl Q8_0Linear {
    /// The kernel's copy of `tensor` when this path applies: a 2-D Q8_0 matrix on the CPU of an
    /// x86 machine. `None` leaves it to candle (other block types, GPUs, other CPUs, where
    /// candle has its own SIMD kernels).
    pub(crate) fn from_qtensor(tensor: &QTensor) -> std::result::Result<Option<Q8_0Linear>, String> {
        if !cfg!(target_arch = "x86_64") || tensor.dtype() != GgmlDType::Q8_0 || !tensor.device().is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = tensor.shape().dims2().map_err(|e| e.to_string())?;
        let bytes = tensor.data().map_err(|e| e.to_string())?;
        let blocks = BlockQ8_0::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let matrix = Q8_0Matrix::new(blocks, rows, cols).map_err(|e| format!("a {rows}x{cols} Q8_0 matrix: {e}"))?;
        Ok(Some(Q8_0Linear { matrix }))
    }

    /// `x . W^T` for `x` of shape `[.., k]`: `[.., n_out]`, F32.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.matrix.cols();
        let mut dims = x.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == k && k > 0 => *last = self.matrix.rows(),
            _ => candle_core::bail!("a Q8_0 projection of width {k} got input of shape {:?}", x.dims()),
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let m = x.elem_count() / k;
        let activations = {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("a Q8_0 CPU projection got a tensor on {:?}", x.device())
            };
            let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("the input is not contiguous") };
            Q8_0Rows::quantize(&cpu.as_slice::<f32>()?[start..end], m, k).map_err(candle_core::Error::wrap)?
        };
        let mut out = vec![0f32; m * self.matrix.rows()];
        self.matrix.matmul(&activations, &mut out, ThreadPool::global()).map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}
