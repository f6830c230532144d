//! An input tensor's bytes lent to numpy without a copy: [`Buffer`] owns the `Bytes` and
//! describes them through `__array_interface__`, so `numpy.asarray(buffer)` views them and keeps
//! the buffer (and so the bytes) alive as the array's base. The array is read-only.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tritium_tensor::DataType;

#[pyclass(frozen, module = "tritium._tritium", name = "_Buffer")]
pub struct Buffer {
    data: Bytes,
    typestr: &'static str,
    shape: Vec<usize>,
}

impl Buffer {
    /// `None` for BYTES (they go to Python as a list of `bytes`) and BF16 (numpy has no such type).
    pub fn new(datatype: DataType, shape: &[i64], data: Bytes) -> Option<Buffer> {
        let typestr = typestr(datatype)?;
        let shape = shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<Vec<_>>>()?;
        Some(Buffer { data, typestr, shape })
    }
}

/// numpy's array-interface type string of a fixed-size datatype (little-endian: the wire order).
fn typestr(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "|b1",
        DataType::Uint8 => "|u1",
        DataType::Uint16 => "<u2",
        DataType::Uint32 => "<u4",
        DataType::Uint64 => "<u8",
        DataType::Int8 => "|i1",
        DataType::Int16 => "<i2",
        DataType::Int32 => "<i4",
        DataType::Int64 => "<i8",
        DataType::Fp16 => "<f2",
        DataType::Fp32 => "<f4",
        DataType::Fp64 => "<f8",
        DataType::Bf16 | DataType::Bytes => return None,
    })
}

#[pymethods]
impl Buffer {
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let interface = PyDict::new(py);
        interface.set_item("version", 3)?;
        interface.set_item("typestr", self.typestr)?;
        interface.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        // Read-only: the bytes may be shared with the request (and other responses' views).
        interface.set_item("data", (self.data.as_ptr() as usize, true))?;
        Ok(interface)
    }
}
