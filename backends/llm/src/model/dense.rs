//! Dense projections on the CPU through `tritium-kernels`' batch-invariant f32 product instead of
//! candle's GEMM, whose blocking and reduction order follow the shape of the call: with it a
//! row's outputs would differ in the last bits between a decode step and a prompt chunk, and a
//! prompt answered from the prefix cache would answer differently from the same prompt cold.

use candle_core::{DType, Device, Result, Storage, Tensor};
use tritium_kernels::{F32Matrix, ThreadPool};

/// A `[n_out, k]` f32 weight matrix held in the kernel's form.
#[derive(Debug)]
pub(crate) struct F32Linear {
    matrix: F32Matrix,
}

impl F32Linear {
    /// The kernel's copy of a 2-D weight tensor on the CPU (any float type, taken as f32);
    /// `None` on other devices, which keep candle's.
    pub(crate) fn from_tensor(weight: &Tensor) -> std::result::Result<Option<F32Linear>, String> {
        if !weight.device().is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = weight.dims2().map_err(|e| e.to_string())?;
        let values = weight.to_dtype(DType::F32).and_then(|w| w.flatten_all()?.to_vec1::<f32>()).map_err(|e| e.to_string())?;
        let matrix = F32Matrix::new(&values, rows, cols).map_err(|e| format!("a {rows}x{cols} matrix: {e}"))?;
        Ok(Some(F32Linear { matrix }))
    }

    /// `x . W^T` for `x` of shape `[.., k]`: `[.., n_out]`, F32.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.matrix.cols();
        let mut dims = x.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == k && k > 0 => *last = self.matrix.rows(),
            _ => candle_core::bail!("a projection of width {k} got input of shape {:?}", x.dims()),
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let m = x.elem_count() / k;
        let mut out = vec![0f32; m * self.matrix.rows()];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("a CPU projection got a tensor on {:?}", x.device()) };
            let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("the input is not contiguous") };
            let values = &cpu.as_slice::<f32>()?[start..end];
            self.matrix.matmul(values, m, &mut out, ThreadPool::global()).map_err(candle_core::Error::wrap)?;
        }
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}
