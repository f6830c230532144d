//! The KServe v2 tensor datatypes and their mapping to the model-config enum.

use std::fmt;

use tritium_proto::inference::DataType as ConfigDataType;

/// A KServe v2 tensor datatype.
///
/// `Bytes` is KServe's "BYTES" and the model config's `TYPE_STRING`: variable-length elements,
/// each a 4-byte little-endian length followed by its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    /// Every datatype, in declaration order.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// Parses a KServe datatype name. Names are case-sensitive, as in Triton.
    pub fn from_kserve(s: &str) -> Option<DataType> {
        Some(match s {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP16" => DataType::Fp16,
            "BF16" => DataType::Bf16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    /// The KServe name ("FP32", "BYTES", ...).
    pub fn kserve_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Maps a model-config `DataType` value; `TYPE_STRING` is `Bytes`, `TYPE_INVALID` and
    /// unknown values are `None`.
    pub fn from_config(t: i32) -> Option<DataType> {
        Some(match ConfigDataType::try_from(t).ok()? {
            ConfigDataType::TypeInvalid => return None,
            ConfigDataType::TypeBool => DataType::Bool,
            ConfigDataType::TypeUint8 => DataType::Uint8,
            ConfigDataType::TypeUint16 => DataType::Uint16,
            ConfigDataType::TypeUint32 => DataType::Uint32,
            ConfigDataType::TypeUint64 => DataType::Uint64,
            ConfigDataType::TypeInt8 => DataType::Int8,
            ConfigDataType::TypeInt16 => DataType::Int16,
            ConfigDataType::TypeInt32 => DataType::Int32,
            ConfigDataType::TypeInt64 => DataType::Int64,
            ConfigDataType::TypeFp16 => DataType::Fp16,
            ConfigDataType::TypeFp32 => DataType::Fp32,
            ConfigDataType::TypeFp64 => DataType::Fp64,
            ConfigDataType::TypeString => DataType::Bytes,
            ConfigDataType::TypeBf16 => DataType::Bf16,
        })
    }

    /// The model-config enum value for this datatype (`Bytes` is `TYPE_STRING`).
    pub fn to_config(self) -> ConfigDataType {
        match self {
            DataType::Bool => ConfigDataType::TypeBool,
            DataType::Uint8 => ConfigDataType::TypeUint8,
            DataType::Uint16 => ConfigDataType::TypeUint16,
            DataType::Uint32 => ConfigDataType::TypeUint32,
            DataType::Uint64 => ConfigDataType::TypeUint64,
            DataType::Int8 => ConfigDataType::TypeInt8,
            DataType::Int16 => ConfigDataType::TypeInt16,
            DataType::Int32 => ConfigDataType::TypeInt32,
            DataType::Int64 => ConfigDataType::TypeInt64,
            DataType::Fp16 => ConfigDataType::TypeFp16,
            DataType::Bf16 => ConfigDataType::TypeBf16,
            DataType::Fp32 => ConfigDataType::TypeFp32,
            DataType::Fp64 => ConfigDataType::TypeFp64,
            DataType::Bytes => ConfigDataType::TypeString,
        }
    }

    /// Bytes per element in the raw layout; `None` for the variable-length `Bytes`.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kserve_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kserve_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::from_kserve(dt.kserve_name()), Some(dt));
            assert_eq!(dt.to_string(), dt.kserve_name());
        }
        for bad in ["", "fp32", "STRING", "FP8", "FLOAT32", " FP32"] {
            assert_eq!(DataType::from_kserve(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn config_values_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::from_config(dt.to_config() as i32), Some(dt));
        }
        assert_eq!(DataType::from_config(13), Some(DataType::Bytes));
        assert_eq!(DataType::from_config(14), Some(DataType::Bf16));
        assert_eq!(DataType::from_config(10), Some(DataType::Fp16));
        assert_eq!(DataType::from_config(0), None);
        assert_eq!(DataType::from_config(15), None);
        assert_eq!(DataType::from_config(-1), None);
        assert_eq!(DataType::Bytes.to_config(), ConfigDataType::TypeString);
    }

    #[test]
    fn config_values_match_the_proto_numbers() {
        let expected = [
            (DataType::Bool, 1),
            (DataType::Uint8, 2),
            (DataType::Uint16, 3),
            (DataType::Uint32, 4),
            (DataType::Uint64, 5),
            (DataType::Int8, 6),
            (DataType::Int16, 7),
            (DataType::Int32, 8),
            (DataType::Int64, 9),
            (DataType::Fp16, 10),
            (DataType::Fp32, 11),
            (DataType::Fp64, 12),
            (DataType::Bytes, 13),
            (DataType::Bf16, 14),
        ];
        for (dt, value) in expected {
            assert_eq!(dt.to_config() as i32, value, "{dt}");
        }
    }

    #[test]
    fn element_sizes() {
        assert_eq!(DataType::Bool.element_size(), Some(1));
        assert_eq!(DataType::Int8.element_size(), Some(1));
        assert_eq!(DataType::Fp16.element_size(), Some(2));
        assert_eq!(DataType::Bf16.element_size(), Some(2));
        assert_eq!(DataType::Uint32.element_size(), Some(4));
        assert_eq!(DataType::Fp64.element_size(), Some(8));
        assert_eq!(DataType::Bytes.element_size(), None);
    }
}
