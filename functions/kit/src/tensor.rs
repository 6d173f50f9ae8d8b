//! Kit-owned tensors: what requests decode into, engines consume and produce,
//! and responses encode. No engine type (tract, wasi:nn) appears here.

use half::f16;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::borrow::Cow;

use crate::KitError;

/// The Open Inference Protocol v2 datatypes the kit supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Fp32,
    Fp64,
    Fp16,
    Int64,
    Int32,
    Int8,
    Uint8,
    Bool,
}

impl DataType {
    pub const ALL: [DataType; 8] = [
        DataType::Fp32,
        DataType::Fp64,
        DataType::Fp16,
        DataType::Int64,
        DataType::Int32,
        DataType::Int8,
        DataType::Uint8,
        DataType::Bool,
    ];

    /// The OIP name: `FP32`, `INT64`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Fp16 => "FP16",
            DataType::Int64 => "INT64",
            DataType::Int32 => "INT32",
            DataType::Int8 => "INT8",
            DataType::Uint8 => "UINT8",
            DataType::Bool => "BOOL",
        }
    }

    /// Parses an OIP datatype name (exact, upper case, as the protocol spells it).
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|dt| dt.as_str() == name)
    }

    /// `FP32, FP64, ...`, for error messages.
    pub fn supported_list() -> String {
        DataType::ALL.map(DataType::as_str).join(", ")
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor, flat, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Fp16(Vec<f16>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Int8(Vec<i8>),
    Uint8(Vec<u8>),
    Bool(Vec<bool>),
}

macro_rules! accessors {
    ($($variant:ident => $as:ident, $ty:ty;)*) => {
        impl TensorData {
            $(
                #[doc = concat!("The elements if this is `", stringify!($variant), "`.")]
                pub fn $as(&self) -> Option<&[$ty]> {
                    match self {
                        TensorData::$variant(v) => Some(v),
                        _ => None,
                    }
                }
            )*
        }

        $(
            impl From<Vec<$ty>> for TensorData {
                fn from(v: Vec<$ty>) -> Self {
                    TensorData::$variant(v)
                }
            }
        )*
    };
}

accessors! {
    Fp32 => as_f32, f32;
    Fp64 => as_f64, f64;
    Fp16 => as_f16, f16;
    Int64 => as_i64, i64;
    Int32 => as_i32, i32;
    Int8 => as_i8, i8;
    Uint8 => as_u8, u8;
    Bool => as_bool, bool;
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Bool(_) => DataType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as little-endian bytes (BOOL as 0/1): the layout
    /// wasi:nn tensors carry. Borrowed where the memory already is that
    /// (numbers on a little-endian target), so a large tensor is not copied
    /// on its way out of the sandbox.
    pub fn le_bytes(&self) -> Cow<'_, [u8]> {
        fn bytes<T: Number, const N: usize>(v: &[T], f: fn(&T) -> [u8; N]) -> Cow<'_, [u8]> {
            if cfg!(target_endian = "little") {
                // SAFETY: `T` is a plain number of `N` bytes (see `Number`),
                // already little-endian in memory on this target.
                return Cow::Borrowed(unsafe {
                    std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * N)
                });
            }
            Cow::Owned(v.iter().flat_map(f).collect())
        }
        match self {
            TensorData::Fp32(v) => bytes(v, |x| x.to_le_bytes()),
            TensorData::Fp64(v) => bytes(v, |x| x.to_le_bytes()),
            TensorData::Fp16(v) => bytes(v, |x| x.to_le_bytes()),
            TensorData::Int64(v) => bytes(v, |x| x.to_le_bytes()),
            TensorData::Int32(v) => bytes(v, |x| x.to_le_bytes()),
            TensorData::Int8(v) => Cow::Owned(v.iter().map(|&x| x as u8).collect()),
            TensorData::Uint8(v) => Cow::Borrowed(v),
            TensorData::Bool(v) => Cow::Owned(v.iter().map(|&b| u8::from(b)).collect()),
        }
    }

    /// Elements of `datatype` from little-endian bytes; a length that is not
    /// a whole number of elements is an error.
    pub fn from_le_bytes(datatype: DataType, raw: &[u8]) -> Result<TensorData, KitError> {
        fn le<const N: usize, T: Number>(
            raw: &[u8],
            f: fn([u8; N]) -> T,
        ) -> Result<Vec<T>, KitError> {
            if !raw.len().is_multiple_of(N) {
                return Err(KitError::bad_request(format!(
                    "{} bytes is not a whole number of {N}-byte elements",
                    raw.len()
                )));
            }
            if cfg!(target_endian = "little") {
                let n = raw.len() / N;
                let mut v = Vec::<T>::with_capacity(n);
                // SAFETY: the capacity holds `n` elements of `N` bytes; any
                // bit pattern is a valid `T` (see `Number`), and the bytes are
                // little-endian like `T` on this target. A large tensor is one
                // copy instead of a loop (it matters inside the sandbox).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        raw.as_ptr(),
                        v.as_mut_ptr().cast::<u8>(),
                        raw.len(),
                    );
                    v.set_len(n);
                }
                return Ok(v);
            }
            Ok(raw
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact")))
                .collect())
        }
        Ok(match datatype {
            DataType::Fp32 => TensorData::Fp32(le(raw, f32::from_le_bytes)?),
            DataType::Fp64 => TensorData::Fp64(le(raw, f64::from_le_bytes)?),
            DataType::Fp16 => TensorData::Fp16(le(raw, f16::from_le_bytes)?),
            DataType::Int64 => TensorData::Int64(le(raw, i64::from_le_bytes)?),
            DataType::Int32 => TensorData::Int32(le(raw, i32::from_le_bytes)?),
            DataType::Int8 => TensorData::Int8(raw.iter().map(|&b| b as i8).collect()),
            DataType::Uint8 => TensorData::Uint8(raw.to_vec()),
            DataType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        })
    }

    /// The elements as a flat JSON array. FP16 goes out as ordinary numbers;
    /// non-finite floats become `null` (JSON has no NaN or infinity).
    pub fn to_json(&self) -> Value {
        fn arr<T: Copy>(v: &[T], f: impl Fn(T) -> Value) -> Value {
            Value::Array(v.iter().map(|&x| f(x)).collect())
        }
        match self {
            TensorData::Fp32(v) => arr(v, |x| Value::from(f64::from(x))),
            TensorData::Fp64(v) => arr(v, Value::from),
            TensorData::Fp16(v) => arr(v, |x| Value::from(f64::from(x.to_f32()))),
            TensorData::Int64(v) => arr(v, Value::from),
            TensorData::Int32(v) => arr(v, Value::from),
            TensorData::Int8(v) => arr(v, Value::from),
            TensorData::Uint8(v) => arr(v, Value::from),
            TensorData::Bool(v) => arr(v, Value::from),
        }
    }
}

/// A named tensor: flat row-major data plus its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// A tensor whose data length must equal the product of `shape`.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: impl Into<TensorData>,
    ) -> Result<Tensor, KitError> {
        let name = name.into();
        let data = data.into();
        let expected = element_count(&shape).ok_or_else(|| {
            KitError::bad_request(format!("tensor '{name}': shape {shape:?} is too large"))
        })?;
        if data.len() != expected {
            return Err(KitError::bad_request(format!(
                "tensor '{name}': shape {shape:?} needs {expected} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { name, shape, data })
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The OIP v2 tensor object: `{"name","shape","datatype","data"}` with flat data.
    /// (Serializing the tensor directly gives the same object, with FP32 and FP16
    /// values written in their shortest f32 form.)
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "shape": self.shape,
            "datatype": self.datatype().as_str(),
            "data": self.data.to_json(),
        })
    }
}

impl Serialize for Tensor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("shape", &self.shape)?;
        m.serialize_entry("datatype", self.datatype().as_str())?;
        m.serialize_entry("data", &self.data)?;
        m.end()
    }
}

/// A flat sequence; FP16 as f32 numbers; non-finite floats as `null`.
impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Fp32(v) => v.serialize(s),
            TensorData::Fp64(v) => v.serialize(s),
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Int64(v) => v.serialize(s),
            TensorData::Int32(v) => v.serialize(s),
            TensorData::Int8(v) => v.serialize(s),
            TensorData::Uint8(v) => v.serialize(s),
            TensorData::Bool(v) => v.serialize(s),
        }
    }
}

/// Number types whose every bit pattern is a value, so that their memory can
/// be read from and written to little-endian bytes directly.
trait Number: Copy {}
impl Number for f32 {}
impl Number for f64 {}
impl Number for f16 {}
impl Number for i64 {}
impl Number for i32 {}

/// Product of the dims, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
