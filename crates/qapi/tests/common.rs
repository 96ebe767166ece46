//! Loading the PyTorch reference vectors of `tests/golden/` (shared by this crate's tests).
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
        let text = std::fs::read_to_string(format!("{dir}{name}.json")).expect("golden json");
        let json: Value = serde_json::from_str(&text).expect("golden json parses");
        Golden {
            cases: json["cases"].as_array().expect("cases").clone(),
            bytes: std::fs::read(format!("{dir}{name}.safetensors")).expect("golden tensors"),
        }
    }

    fn view(&self, case: &Value, role: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let name = case["tensors"][role]
            .as_str()
            .unwrap_or_else(|| panic!("no role {role}"));
        let v = st.tensor(name).unwrap();
        (v.dtype(), v.shape().to_vec(), v.data().to_vec())
    }

    pub fn f32s(&self, case: &Value, role: &str) -> (Vec<usize>, Vec<f32>) {
        let (dtype, shape, bytes) = self.view(case, role);
        assert_eq!(dtype, Dtype::F32, "{role}");
        (
            shape,
            bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    pub fn ints(&self, case: &Value, role: &str) -> (Vec<usize>, Vec<i32>) {
        let (dtype, shape, bytes) = self.view(case, role);
        let v = match dtype {
            Dtype::U8 => bytes.iter().map(|&b| b as i32).collect(),
            Dtype::I8 => bytes.iter().map(|&b| b as i8 as i32).collect(),
            Dtype::I32 => bytes
                .chunks(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I64 => bytes
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32)
                .collect(),
            other => panic!("{role}: unexpected dtype {other:?}"),
        };
        (shape, v)
    }
}
