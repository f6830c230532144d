//! `add_sub`: OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, element-wise, for every
//! numeric datatype (integers wrap, as C++ backends do).

use async_trait::async_trait;
use bytes::Bytes;
use half::{bf16, f16};
use tritium_tensor::{DataType, Element, Tensor};

use tritium_backend_api::{Backend, BackendContext, BackendError, BackendRequest, Engine, Responder};

#[derive(Debug)]
pub struct AddSub {
    inputs: [String; 2],
    outputs: [String; 2],
}

impl AddSub {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
        let config = context.config;
        let (Some(i0), Some(i1), Some(o0), Some(o1)) =
            (config.input.first(), config.input.get(1), config.output.first(), config.output.get(1))
        else {
            return Err("the add_sub backend needs two inputs and two outputs".to_string());
        };
        for tensor_type in [i0.data_type, i1.data_type, o0.data_type, o1.data_type] {
            match DataType::from_config(tensor_type) {
                Some(DataType::Bool | DataType::Bytes) | None => {
                    return Err("the add_sub backend needs numeric tensors".to_string());
                }
                Some(_) => {}
            }
        }
        if i0.data_type != i1.data_type {
            return Err("the add_sub backend needs both inputs of one datatype".to_string());
        }
        Ok(Engine::tensors(AddSub { inputs: [i0.name.clone(), i1.name.clone()], outputs: [o0.name.clone(), o1.name.clone()] }))
    }
}

#[async_trait]
impl Backend for AddSub {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let a = request.input(&self.inputs[0])?;
        let b = request.input(&self.inputs[1])?;
        if a.shape != b.shape {
            return Err(BackendError::failed(
                tritium_proto::ErrorCode::InvalidArg,
                format!("'{}' and '{}' must have the same shape", a.name, b.name),
            ));
        }
        let (sum, difference) = match a.datatype {
            DataType::Uint8 => combine::<u8>(&a.data, &b.data),
            DataType::Uint16 => combine::<u16>(&a.data, &b.data),
            DataType::Uint32 => combine::<u32>(&a.data, &b.data),
            DataType::Uint64 => combine::<u64>(&a.data, &b.data),
            DataType::Int8 => combine::<i8>(&a.data, &b.data),
            DataType::Int16 => combine::<i16>(&a.data, &b.data),
            DataType::Int32 => combine::<i32>(&a.data, &b.data),
            DataType::Int64 => combine::<i64>(&a.data, &b.data),
            DataType::Fp16 => combine::<f16>(&a.data, &b.data),
            DataType::Bf16 => combine::<bf16>(&a.data, &b.data),
            DataType::Fp32 => combine::<f32>(&a.data, &b.data),
            DataType::Fp64 => combine::<f64>(&a.data, &b.data),
            DataType::Bool | DataType::Bytes => {
                return Err(BackendError::failed(
                    tritium_proto::ErrorCode::InvalidArg,
                    format!("add_sub does not support datatype {}", a.datatype),
                ));
            }
        };
        responder
            .send(vec![
                Tensor::new(self.outputs[0].clone(), a.datatype, a.shape.clone(), sum),
                Tensor::new(self.outputs[1].clone(), a.datatype, a.shape.clone(), difference),
            ])
            .await
    }
}

/// Wrapping integer and IEEE float arithmetic over one element type.
trait Arithmetic: Element {
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
}

macro_rules! wrapping {
    ($($t:ty),*) => {$(
        impl Arithmetic for $t {
            fn add(self, other: Self) -> Self { self.wrapping_add(other) }
            fn sub(self, other: Self) -> Self { self.wrapping_sub(other) }
        }
    )*};
}
macro_rules! float {
    ($($t:ty),*) => {$(
        impl Arithmetic for $t {
            fn add(self, other: Self) -> Self { self + other }
            fn sub(self, other: Self) -> Self { self - other }
        }
    )*};
}
wrapping!(u8, u16, u32, u64, i8, i16, i32, i64);
float!(f16, bf16, f32, f64);

fn combine<T: Arithmetic>(a: &[u8], b: &[u8]) -> (Bytes, Bytes) {
    let mut sum = Vec::with_capacity(a.len());
    let mut difference = Vec::with_capacity(a.len());
    for (x, y) in a.chunks_exact(T::SIZE).zip(b.chunks_exact(T::SIZE)) {
        let (x, y) = (T::read_le(x), T::read_le(y));
        x.add(y).write_le(&mut sum);
        x.sub(y).write_le(&mut difference);
    }
    (Bytes::from(sum), Bytes::from(difference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_wrap_and_floats_add() {
        let (s, d) = combine::<u8>(&[250, 1], &[10, 2]);
        assert_eq!(&s[..], &[4, 3]);
        assert_eq!(&d[..], &[240, 255]);
        let a: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = [0.5f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let (s, _) = combine::<f32>(&a, &b);
        assert_eq!(Tensor::new("s", DataType::Fp32, vec![2], s).to_vec::<f32>().ok(), Some(vec![2.0, 2.0]));
    }
}
