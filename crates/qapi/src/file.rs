//! Quantized model files: safetensors with integer tensors, their quantization parameters, and
//! metadata (format name and version, graph, configuration, checksum).
//!
//! Layout of a file:
//! - every stored tensor under its parameter name, in its own dtype (F32, F16, U8, I8, I32);
//! - a quantized tensor `w` stores its integers as `w`, its scales as `w.__scales` (F32) and its
//!   zero points as `w.__zero_points` (I32); dtype and axis sit in the `qparams` metadata entry;
//! - metadata keys: `format` = "qforge", `format_version`, `checksum` (FNV-1a 64 over every
//!   tensor's name, dtype, shape and bytes, in name order), and free entries set by the caller
//!   (the graph and the quantization configuration as JSON).
//!
//! Loading checks all of it, so a truncated, corrupt or newer file is refused with a clear error.

use std::collections::BTreeMap;
use std::path::Path;

use qtensor::{DType, QParams, QTensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::{ApiError, Result};

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "qforge";
const SCALES_SUFFIX: &str = ".__scales";
const ZERO_POINTS_SUFFIX: &str = ".__zero_points";

/// One tensor of a model file.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    F16 { shape: Vec<usize>, data: Vec<half::f16> },
    I32 { shape: Vec<usize>, data: Vec<i32> },
    Quantized(QTensor),
}

/// The contents of a model file: named tensors and string metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFile {
    pub tensors: BTreeMap<String, StoredTensor>,
    /// Caller metadata (e.g. `graph`, `config`); the format keys are added on save.
    pub metadata: BTreeMap<String, String>,
}

/// Raw little-endian bytes of a tensor, with its safetensors dtype and shape.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn raw_of<T: bytemuck::Pod>(dtype: Dtype, shape: &[usize], data: &[T]) -> Raw {
    Raw {
        dtype,
        shape: shape.to_vec(),
        bytes: bytemuck::cast_slice(data).to_vec(),
    }
}

impl ModelFile {
    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut raws: BTreeMap<String, Raw> = BTreeMap::new();
        let mut qparams = serde_json::Map::new();
        for (name, tensor) in &self.tensors {
            if name.ends_with(SCALES_SUFFIX) || name.ends_with(ZERO_POINTS_SUFFIX) {
                return Err(ApiError::BadTensor {
                    name: name.clone(),
                    detail: "names ending in .__scales or .__zero_points are reserved".into(),
                });
            }
            match tensor {
                StoredTensor::F32 { shape, data } => {
                    raws.insert(name.clone(), raw_of(Dtype::F32, shape, data));
                }
                StoredTensor::F16 { shape, data } => {
                    raws.insert(name.clone(), raw_of(Dtype::F16, shape, data));
                }
                StoredTensor::I32 { shape, data } => {
                    raws.insert(name.clone(), raw_of(Dtype::I32, shape, data));
                }
                StoredTensor::Quantized(q) => {
                    let (raw, entry) = quantized_to_raw(q);
                    raws.insert(name.clone(), raw);
                    let (scales, zero_points) = match q.qparams() {
                        QParams::PerTensor { scale, zero_point } => (vec![*scale], vec![*zero_point]),
                        QParams::PerChannel {
                            scales, zero_points, ..
                        } => (scales.clone(), zero_points.clone()),
                    };
                    raws.insert(
                        format!("{name}{SCALES_SUFFIX}"),
                        raw_of(Dtype::F32, &[scales.len()], &scales),
                    );
                    raws.insert(
                        format!("{name}{ZERO_POINTS_SUFFIX}"),
                        raw_of(Dtype::I32, &[zero_points.len()], &zero_points),
                    );
                    qparams.insert(name.clone(), entry);
                }
            }
        }
        let mut metadata: std::collections::HashMap<String, String> =
            self.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        metadata.insert("format".into(), FORMAT_NAME.into());
        metadata.insert("format_version".into(), FORMAT_VERSION.to_string());
        metadata.insert("qparams".into(), Value::Object(qparams).to_string());
        metadata.insert("checksum".into(), format!("{:016x}", checksum(&raws)));
        let views: Vec<(String, TensorView<'_>)> = raws
            .iter()
            .map(|(name, r)| {
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ApiError::BadTensor {
                        name: name.clone(),
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, &Some(metadata)).map_err(|e| ApiError::Corrupt { detail: e.to_string() })
    }

    /// Parses safetensors bytes written by [`ModelFile::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelFile> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| ApiError::Corrupt { detail: e.to_string() })?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| ApiError::Corrupt { detail: e.to_string() })?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format").map(String::as_str) {
            Some(FORMAT_NAME) => {}
            other => {
                return Err(ApiError::NotQforge {
                    detail: format!("metadata `format` is {other:?}"),
                })
            }
        }
        let version: u32 =
            meta.get("format_version")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ApiError::Corrupt {
                    detail: "missing or unreadable format_version".into(),
                })?;
        if version > FORMAT_VERSION {
            return Err(ApiError::NewerVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut raws = BTreeMap::new();
        for (name, view) in st.tensors() {
            raws.insert(
                name,
                Raw {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                },
            );
        }
        let expected = meta.get("checksum").ok_or_else(|| ApiError::Corrupt {
            detail: "missing checksum".into(),
        })?;
        let actual = format!("{:016x}", checksum(&raws));
        if *expected != actual {
            return Err(ApiError::Corrupt {
                detail: format!("checksum {actual} does not match the recorded {expected}"),
            });
        }
        let qparams: serde_json::Map<String, Value> = meta
            .get("qparams")
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| ApiError::Corrupt {
                detail: format!("qparams metadata: {e}"),
            })?
            .unwrap_or_default();

        let mut tensors = BTreeMap::new();
        for (name, raw) in &raws {
            if name.ends_with(SCALES_SUFFIX) || name.ends_with(ZERO_POINTS_SUFFIX) {
                continue;
            }
            let tensor = match qparams.get(name) {
                Some(entry) => StoredTensor::Quantized(quantized_from_raw(name, raw, entry, &raws)?),
                None => plain_from_raw(name, raw)?,
            };
            tensors.insert(name.clone(), tensor);
        }
        let metadata = meta
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "format" | "format_version" | "checksum" | "qparams"))
            .collect();
        Ok(ModelFile { tensors, metadata })
    }

    /// Reads any safetensors file of F32, F16 and I32 tensors (e.g. calibration data or an
    /// exported fp32 state dict), without the qforge format checks.
    pub fn from_safetensors(bytes: &[u8]) -> Result<ModelFile> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ApiError::Corrupt { detail: e.to_string() })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = Raw {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            };
            tensors.insert(name.clone(), plain_from_raw(&name, &raw)?);
        }
        Ok(ModelFile {
            tensors,
            metadata: BTreeMap::new(),
        })
    }

    /// Writes the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()?).map_err(|source| ApiError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and checks a file.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelFile> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ApiError::Io {
            path: path.display().to_string(),
            source,
        })?;
        ModelFile::from_bytes(&bytes)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ApiError::MissingTensor { name: name.into() })
    }
}

fn quantized_to_raw(q: &QTensor) -> (Raw, Value) {
    use qtensor::QData;
    let raw = match q.data() {
        QData::U8(v) => raw_of(Dtype::U8, q.shape(), v),
        QData::I8(v) => raw_of(Dtype::I8, q.shape(), v),
        QData::I32(v) => raw_of(Dtype::I32, q.shape(), v),
        // Packed nibbles are stored as bytes; the logical shape sits in the metadata.
        QData::U4x2(v) => raw_of(Dtype::U8, &[v.len()], v),
    };
    let axis = match q.qparams() {
        QParams::PerTensor { .. } => Value::Null,
        QParams::PerChannel { axis, .. } => json!(axis),
    };
    (
        raw,
        json!({"dtype": q.dtype().name(), "axis": axis, "shape": q.shape()}),
    )
}

fn bad(name: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadTensor {
        name: name.into(),
        detail: detail.into(),
    }
}

fn quantized_from_raw(name: &str, raw: &Raw, entry: &Value, raws: &BTreeMap<String, Raw>) -> Result<QTensor> {
    let dtype = entry["dtype"]
        .as_str()
        .and_then(DType::from_name)
        .ok_or_else(|| bad(name, "unknown quantized dtype in metadata"))?;
    let shape: Vec<usize> =
        serde_json::from_value(entry["shape"].clone()).map_err(|e| bad(name, format!("shape metadata: {e}")))?;
    let scales = match raws.get(&format!("{name}{SCALES_SUFFIX}")) {
        Some(r) if r.dtype == Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&r.bytes),
        _ => return Err(bad(name, "scales tensor missing or not F32")),
    };
    let zero_points = match raws.get(&format!("{name}{ZERO_POINTS_SUFFIX}")) {
        Some(r) if r.dtype == Dtype::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(&r.bytes),
        _ => return Err(bad(name, "zero points tensor missing or not I32")),
    };
    let qparams = match entry["axis"].as_u64() {
        None => {
            if scales.len() != 1 || zero_points.len() != 1 {
                return Err(bad(
                    name,
                    "per-tensor parameters must hold one scale and one zero point",
                ));
            }
            QParams::per_tensor(scales[0], zero_points[0], dtype)?
        }
        Some(axis) => QParams::per_channel(axis as usize, scales, zero_points, dtype)?,
    };
    let n: usize = shape.iter().product();
    let ints: Vec<i32> = match (dtype, raw.dtype) {
        (DType::QUInt8, Dtype::U8) => raw.bytes.iter().map(|&b| b as i32).collect(),
        (DType::QInt8, Dtype::I8) => raw.bytes.iter().map(|&b| b as i8 as i32).collect(),
        (DType::QInt32, Dtype::I32) => bytemuck::pod_collect_to_vec::<u8, i32>(&raw.bytes),
        (DType::QUInt4x2, Dtype::U8) if raw.bytes.len() == n.div_ceil(2) => qtensor::unpack_nibbles(&raw.bytes, n),
        _ => return Err(bad(name, format!("stored as {:?}, metadata says {dtype}", raw.dtype))),
    };
    Ok(QTensor::from_int_repr(shape, dtype, qparams, &ints)?)
}

fn plain_from_raw(name: &str, raw: &Raw) -> Result<StoredTensor> {
    let shape = raw.shape.clone();
    Ok(match raw.dtype {
        Dtype::F32 => StoredTensor::F32 {
            shape,
            data: bytemuck::pod_collect_to_vec(&raw.bytes),
        },
        Dtype::F16 => StoredTensor::F16 {
            shape,
            data: bytemuck::pod_collect_to_vec(&raw.bytes),
        },
        Dtype::I32 => StoredTensor::I32 {
            shape,
            data: bytemuck::pod_collect_to_vec(&raw.bytes),
        },
        other => return Err(bad(name, format!("unsupported stored dtype {other:?}"))),
    })
}

/// FNV-1a 64 over names, dtypes, shapes and bytes, in name order.
fn checksum(raws: &BTreeMap<String, Raw>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, raw) in raws {
        feed(name.as_bytes());
        feed(format!("{:?}{:?}", raw.dtype, raw.shape).as_bytes());
        feed(&raw.bytes);
    }
    h
}
