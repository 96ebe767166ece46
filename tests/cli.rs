//! The `qforge` binary: `ops`, `demo --no-model`, and `embed` on the real MiniLM when fetched.

use std::path::PathBuf;
use std::process::Command;

fn qforge(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qforge")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ops_lists_dynamic_kernels() {
    let (ok, out, _) = qforge(&["ops"]);
    assert!(ok);
    assert!(
        out.lines().any(|l| l.starts_with("Linear") && l.contains("qint8")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("Lstm") && l.contains("qint8")),
        "{out}"
    );
    assert!(out.contains("4 with dynamic int8 kernels"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("Conv2d") && l.contains("int8 conv")),
        "{out}"
    );
}

#[test]
fn demo_without_model_and_usage_errors() {
    let (ok, out, _) = qforge(&["demo", "--no-model"]);
    assert!(ok);
    assert!(out.contains("quint8") && out.contains("dequantize"), "{out}");
    let (ok, _, err) = qforge(&["bench", "--model", "resnet"]);
    assert!(!ok && err.contains("unknown model"), "{err}");
    let (ok, _, err) = qforge(&["embed", "--model", "/nonexistent", "--input", "x", "--output", "y"]);
    assert!(!ok && err.contains("/nonexistent"), "{err}");
}

#[test]
fn embed_writes_normalized_embeddings() {
    let root = std::env::var_os("QFORGE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/models")));
    let dir = root.join("all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        assert!(
            std::env::var("QFORGE_REQUIRE_MODELS").as_deref() != Ok("1"),
            "all-MiniLM-L6-v2 missing in {}",
            root.display()
        );
        eprintln!("skipping: all-MiniLM-L6-v2 not fetched (cargo xtask fetch-models)");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("qforge-embed-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let input = tmp.join("s.txt");
    std::fs::write(&input, "A man is playing a guitar.\n\nThe cat sleeps on the sofa.\n").unwrap();
    for mode in ["fp32", "dynamic"] {
        let output = tmp.join(format!("{mode}.safetensors"));
        let (ok, _, err) = qforge(&[
            "embed",
            "--model",
            dir.to_str().unwrap(),
            "--mode",
            mode,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let bytes = std::fs::read(&output).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("embeddings").unwrap();
        assert_eq!(t.shape(), &[2, 384]);
        let v: Vec<f32> = t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for row in v.chunks(384) {
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn bench_interleave_answers_each_count() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(["bench", "--model", "mobilenet_v2", "--mode", "fp32", "--interleave"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"2\n\n1\nmany\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["ready"], true);
    assert_eq!(lines[0]["model"], "mobilenet_v2");
    for (line, n) in lines[1..].iter().zip([2, 1]) {
        let times = line["times_ms"].as_array().unwrap();
        assert_eq!(times.len(), n, "{line}");
        assert!(times.iter().all(|t| t.as_f64().unwrap() > 0.0), "{line}");
    }
    // A line that is not a count ends the session with an error naming it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`many`"), "{err}");
}
