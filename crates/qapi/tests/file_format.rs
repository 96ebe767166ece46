//! Model files: round trips, and clear errors for truncated, corrupt, foreign and newer files.

use qapi::{ApiError, ModelFile, StoredTensor};
use qtensor::{DType, QParams, QTensor, Tensor};

fn sample() -> ModelFile {
    let mut f = ModelFile::default();
    let w = Tensor::new([3, 4], (0..12).map(|i| i as f32 * 0.1 - 0.5).collect()).unwrap();
    let per_channel = QParams::per_channel(0, vec![0.01, 0.02, 0.005], vec![0, 0, 0], DType::QInt8).unwrap();
    f.tensors.insert(
        "fc.weight".into(),
        StoredTensor::Quantized(QTensor::quantize(&w, DType::QInt8, per_channel).unwrap()),
    );
    let act = QParams::per_tensor(0.05, 3, DType::QUInt8).unwrap();
    f.tensors.insert(
        "act".into(),
        StoredTensor::Quantized(QTensor::quantize(&w, DType::QUInt8, act).unwrap()),
    );
    let nib = QParams::per_tensor(0.1, 5, DType::QUInt4x2).unwrap();
    let small = Tensor::new([5], vec![0.0, 0.1, 0.2, 0.3, 0.4]).unwrap();
    f.tensors.insert(
        "nibbles".into(),
        StoredTensor::Quantized(QTensor::quantize(&small, DType::QUInt4x2, nib).unwrap()),
    );
    f.tensors.insert(
        "fc.bias".into(),
        StoredTensor::F32 {
            shape: vec![3],
            data: vec![1.0, -2.0, 0.5],
        },
    );
    f.tensors.insert(
        "ids".into(),
        StoredTensor::I32 {
            shape: vec![2],
            data: vec![7, -9],
        },
    );
    f.tensors.insert(
        "half".into(),
        StoredTensor::F16 {
            shape: vec![2],
            data: vec![half::f16::from_f32(1.5), half::f16::from_f32(-0.25)],
        },
    );
    f.metadata.insert("graph".into(), "{\"nodes\":[]}".into());
    f
}

#[test]
fn round_trip_is_exact() {
    let f = sample();
    let bytes = f.to_bytes().unwrap();
    assert_eq!(ModelFile::from_bytes(&bytes).unwrap(), f);
    let dir = std::env::temp_dir().join(format!("qforge-file-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    f.save(&path).unwrap();
    assert_eq!(ModelFile::load(&path).unwrap(), f);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_file_is_refused() {
    let bytes = sample().to_bytes().unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let err = ModelFile::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, ApiError::Corrupt { .. }), "cut at {cut}: {err}");
    }
}

#[test]
fn flipped_byte_is_detected() {
    let mut bytes = sample().to_bytes().unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    let err = ModelFile::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, ApiError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"));
}

fn rewrite_metadata(key: &str, value: Option<&str>) -> Vec<u8> {
    // Rebuild a file whose header carries an edited metadata entry.
    let bytes = sample().to_bytes().unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"].as_object_mut().unwrap();
    match value {
        Some(v) => meta.insert(key.into(), v.into()),
        None => meta.remove(key),
    };
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn newer_version_and_foreign_files_are_refused() {
    let err = ModelFile::from_bytes(&rewrite_metadata("format_version", Some("99"))).unwrap_err();
    assert!(matches!(err, ApiError::NewerVersion { found: 99, .. }), "{err}");
    let err = ModelFile::from_bytes(&rewrite_metadata("format", None)).unwrap_err();
    assert!(matches!(err, ApiError::NotQforge { .. }), "{err}");
    let err = ModelFile::from_bytes(&rewrite_metadata("checksum", None)).unwrap_err();
    assert!(matches!(err, ApiError::Corrupt { .. }), "{err}");
    let err = ModelFile::from_bytes(&rewrite_metadata("qparams", Some("{not json"))).unwrap_err();
    assert!(matches!(err, ApiError::Corrupt { .. }), "{err}");
    let err = ModelFile::from_bytes(b"definitely not a model").unwrap_err();
    assert!(matches!(err, ApiError::Corrupt { .. }), "{err}");
}

#[test]
fn missing_file_and_tensor_errors_name_the_thing() {
    let err = ModelFile::load("/nonexistent/qforge/model.safetensors").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/qforge/model.safetensors"));
    let f = sample();
    let err = f.tensor("encoder.missing").unwrap_err();
    assert!(err.to_string().contains("encoder.missing"));
}

#[test]
fn reserved_names_are_rejected() {
    let mut f = ModelFile::default();
    f.tensors.insert(
        "w.__scales".into(),
        StoredTensor::F32 {
            shape: vec![1],
            data: vec![1.0],
        },
    );
    assert!(matches!(f.to_bytes(), Err(ApiError::BadTensor { .. })));
}
