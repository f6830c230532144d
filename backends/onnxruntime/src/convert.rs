//! Tensors to ONNX Runtime values and back. Inputs are views over the request's own bytes when
//! they are aligned for their type (a copy otherwise, and always for strings, which ORT keeps as
//! C strings); outputs are handed over as `Bytes` that keep ORT's buffer alive, without a copy.

use std::borrow::Cow;
use std::ffi::c_void;

use bytes::Bytes;
use ort::memory::MemoryInfo;
use ort::session::SessionInputValue;
use ort::value::{
    DynTensor, DynTensorValueType, DynValue, PrimitiveTensorElementType, Shape, Tensor as OrtTensor, TensorElementType,
    TensorRefMut, ValueType,
};
use tritium_tensor::{DataType, Tensor};

/// The KServe datatype of an ONNX element type; `None` for types KServe cannot carry.
pub fn datatype_of(element: TensorElementType) -> Option<DataType> {
    Some(match element {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// One named input for `Session::run`, borrowing `tensor`'s bytes where it can: the caller keeps
/// `tensor` alive until the run returns.
pub fn input_value<'t>(tensor: &'t Tensor) -> Result<(Cow<'t, str>, SessionInputValue<'t>), String> {
    let fail = |e: ort::Error| format!("input '{}': {}", tensor.name, e.message());
    let value = match tensor.datatype {
        DataType::Bytes => {
            let strings = tensor.byte_strings().map_err(|e| format!("input '{}': {e}", tensor.name))?;
            let strings =
                strings.into_iter().map(|s| String::from_utf8(s.to_vec())).collect::<Result<Vec<String>, _>>().map_err(|_| {
                    format!("input '{}' holds an element that is not UTF-8 text, which an ONNX string cannot", tensor.name)
                })?;
            OrtTensor::from_string_array((tensor.shape.clone(), strings.as_slice())).map_err(fail)?.into()
        }
        // A byte other than 0 or 1 is no valid C++ bool: such tensors are copied as true/false.
        DataType::Bool if tensor.data.iter().any(|&b| b > 1) => {
            let values: Vec<bool> = tensor.data.iter().map(|&b| b != 0).collect();
            OrtTensor::from_array((tensor.shape.clone(), values)).map_err(fail)?.into()
        }
        DataType::Bool => view::<bool>(tensor).map_err(fail)?,
        DataType::Uint8 => view::<u8>(tensor).map_err(fail)?,
        DataType::Uint16 => view::<u16>(tensor).map_err(fail)?,
        DataType::Uint32 => view::<u32>(tensor).map_err(fail)?,
        DataType::Uint64 => view::<u64>(tensor).map_err(fail)?,
        DataType::Int8 => view::<i8>(tensor).map_err(fail)?,
        DataType::Int16 => view::<i16>(tensor).map_err(fail)?,
        DataType::Int32 => view::<i32>(tensor).map_err(fail)?,
        DataType::Int64 => view::<i64>(tensor).map_err(fail)?,
        DataType::Fp16 => view::<half::f16>(tensor).map_err(fail)?,
        DataType::Bf16 => view::<half::bf16>(tensor).map_err(fail)?,
        DataType::Fp32 => view::<f32>(tensor).map_err(fail)?,
        DataType::Fp64 => view::<f64>(tensor).map_err(fail)?,
    };
    Ok((Cow::Borrowed(tensor.name.as_str()), value))
}

/// A value over `tensor`'s bytes when they are aligned for `T`, else over a typed copy.
fn view<'t, T>(tensor: &'t Tensor) -> ort::Result<SessionInputValue<'t>>
where
    T: PrimitiveTensorElementType + tritium_tensor::Element + std::fmt::Debug + Clone + 'static,
{
    let shape = Shape::new(tensor.shape.iter().copied());
    let expected = usize::try_from(shape.num_elements()).unwrap_or(usize::MAX).saturating_mul(size_of::<T>());
    if tensor.data.len() != expected {
        // Validation has already matched shape and size; this guards the raw view below regardless.
        return Err(ort::Error::new(format!("holds {} bytes, its shape needs {expected}", tensor.data.len())));
    }
    if tensor.data.as_ptr().align_offset(align_of::<T>()) != 0 {
        let values: Vec<T> = tensor.data.chunks_exact(size_of::<T>()).map(T::read_le).collect();
        return Ok(OrtTensor::from_array((shape, values))?.into());
    }
    // SAFETY: the pointer is aligned for T and covers exactly the shape's elements (checked above);
    // ORT only reads an input, and the caller keeps `tensor` (and so its bytes) alive for the run.
    let value = unsafe { TensorRefMut::<'t, T>::from_raw(MemoryInfo::default(), tensor.data.as_ptr() as *mut c_void, shape)? };
    Ok(value.into())
}

/// An ONNX output as a tensor named `name`; numeric data stays in ORT's buffer.
pub fn output_tensor(name: &str, value: DynValue) -> Result<Tensor, String> {
    let (element, shape) = match value.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => return Err(format!("output '{name}' is a {other}, not a tensor")),
    };
    let datatype =
        datatype_of(element).ok_or_else(|| format!("output '{name}' has element type {element}, which KServe cannot carry"))?;
    if datatype == DataType::Bytes {
        let (_, strings) = value.try_extract_strings().map_err(|e| format!("output '{name}': {}", e.message()))?;
        return Ok(Tensor::from_byte_strings(name, shape, strings.iter().map(String::as_bytes)));
    }
    let tensor = value.downcast::<DynTensorValueType>().map_err(|e| format!("output '{name}': {}", e.message()))?;
    if !tensor.memory_info().is_cpu_accessible() {
        return Err(format!("output '{name}' is not in CPU memory"));
    }
    Ok(Tensor::new(name, datatype, shape, Bytes::from_owner(OutputBuffer::new(tensor))))
}

/// An output value's bytes, owned by the value itself.
struct OutputBuffer {
    _value: DynTensor,
    data: *const u8,
    len: usize,
}

// SAFETY: `DynTensor` is Send + Sync; `data` points into the buffer it owns and never changes.
unsafe impl Send for OutputBuffer {}
unsafe impl Sync for OutputBuffer {}

impl OutputBuffer {
    fn new(value: DynTensor) -> OutputBuffer {
        let len = value.size().unwrap_or(0);
        let data = value.data_ptr() as *const u8;
        OutputBuffer { _value: value, data, len }
    }
}

impl AsRef<[u8]> for OutputBuffer {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 || self.data.is_null() {
            return &[];
        }
        // SAFETY: ORT's buffer of `len` bytes lives as long as `_value`, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}
