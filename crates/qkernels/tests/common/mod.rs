//! Loading PyTorch golden vectors (`tests/golden/NAME.{json,safetensors}` at the workspace root).
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub struct Golden {
    pub cases: Vec<Value>,
    bytes: Vec<u8>,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/");
        let json: Value = serde_json::from_slice(&std::fs::read(format!("{dir}{name}.json")).unwrap()).unwrap();
        let bytes = std::fs::read(format!("{dir}{name}.safetensors")).unwrap();
        Golden {
            cases: json["cases"].as_array().unwrap().clone(),
            bytes,
        }
    }

    fn view(&self, case: &Value, role: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let name = case["tensors"][role]
            .as_str()
            .unwrap_or_else(|| panic!("no tensor {role}"));
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }

    pub fn shape(&self, case: &Value, role: &str) -> Vec<usize> {
        self.view(case, role).1
    }

    pub fn u8s(&self, case: &Value, role: &str) -> Vec<u8> {
        let (dt, _, data) = self.view(case, role);
        assert_eq!(dt, Dtype::U8, "{role}");
        data
    }

    pub fn i8s(&self, case: &Value, role: &str) -> Vec<i8> {
        let (dt, _, data) = self.view(case, role);
        assert_eq!(dt, Dtype::I8, "{role}");
        data.into_iter().map(|b| b as i8).collect()
    }

    pub fn f32s(&self, case: &Value, role: &str) -> Vec<f32> {
        let (dt, _, data) = self.view(case, role);
        assert_eq!(dt, Dtype::F32, "{role}");
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

pub fn f(case: &Value, key: &str) -> f32 {
    case[key].as_f64().unwrap() as f32
}

pub fn i(case: &Value, key: &str) -> i64 {
    case[key].as_i64().unwrap()
}

/// NCHW bytes -> NHWC bytes.
pub fn nchw_to_nhwc<T: Copy>(x: &[T], n: usize, c: usize, h: usize, w: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for ni in 0..n {
        for hi in 0..h {
            for wi in 0..w {
                for ci in 0..c {
                    y.push(x[((ni * c + ci) * h + hi) * w + wi]);
                }
            }
        }
    }
    y
}

/// Whether the convolutions' default path on this CPU is the direct AVX-512 VNNI kernel, from
/// the CPU's features (not from the library's own dispatch) and `QFORGE_KERNEL`.
pub fn direct_kernel_is_default() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") && !qkernels::forced_reference()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
