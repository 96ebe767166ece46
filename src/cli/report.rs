//! `qforge bench --report --json FILE`: renders benchmark rows (`{"suite":"model",...}` JSON
//! lines) as a Markdown table and an SVG bar chart of fp32 vs int8 latency per model.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::CliError;

/// (model, threads) -> mode -> (median_ms, size_bytes).
type Table = BTreeMap<(String, u64), BTreeMap<String, (f64, u64)>>;

fn read_rows(path: &Path) -> Result<Table, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))?;
    let mut table = Table::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line)
            .map_err(|e| CliError::Usage(format!("{}:{}: not a JSON line: {e}", path.display(), i + 1)))?;
        if row["suite"] != "model" {
            continue;
        }
        let (Some(model), Some(mode), Some(ms)) =
            (row["model"].as_str(), row["mode"].as_str(), row["median_ms"].as_f64())
        else {
            return Err(CliError::Usage(format!(
                "{}:{}: a model row needs model, mode and median_ms",
                path.display(),
                i + 1
            )));
        };
        let threads = row["threads"].as_u64().unwrap_or(1);
        let size = row["size_bytes"].as_u64().unwrap_or(0);
        table
            .entry((model.to_string(), threads))
            .or_default()
            .insert(mode.to_string(), (ms, size));
    }
    if table.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: no model rows (suite \"model\")",
            path.display()
        )));
    }
    Ok(table)
}

/// The int8 row of a model: static, else dynamic, else QAT.
fn int8_of(modes: &BTreeMap<String, (f64, u64)>) -> Option<(&str, (f64, u64))> {
    ["static", "dynamic", "qat"]
        .into_iter()
        .find_map(|m| modes.get(m).map(|v| (m, *v)))
}

pub fn markdown(table: &Table) -> String {
    let mut s = String::from(
        "| model | threads | int8 mode | fp32 ms | int8 ms | speedup | fp32 size | int8 size | size ratio |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for ((model, threads), modes) in table {
        let fp32 = modes.get("fp32").copied();
        let int8 = int8_of(modes);
        let cell = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
        let mb = |b: f64| format!("{:.1} MB", b / 1e6);
        let _ = writeln!(
            s,
            "| {model} | {threads} | {} | {} | {} | {} | {} | {} | {} |",
            int8.map_or("-", |i| i.0),
            cell(fp32.map(|v| v.0), &|v| format!("{v:.2}")),
            cell(int8.map(|i| i.1 .0), &|v| format!("{v:.2}")),
            cell(fp32.zip(int8).map(|(f, i)| f.0 / i.1 .0), &|v| format!("{v:.2}x")),
            cell(fp32.map(|v| v.1 as f64), &mb),
            cell(int8.map(|i| i.1 .1 as f64), &mb),
            cell(fp32.zip(int8).map(|(f, i)| i.1 .1 as f64 / f.1 as f64), &|v| format!(
                "{v:.2}"
            )),
        );
    }
    s
}

/// Grouped horizontal bars: fp32 and int8 latency per (model, threads).
pub fn svg(table: &Table) -> String {
    let rows: Vec<(String, Option<f64>, Option<f64>)> = table
        .iter()
        .map(|((m, t), modes)| {
            (
                format!("{m} ({t}t)"),
                modes.get("fp32").map(|v| v.0),
                int8_of(modes).map(|i| i.1 .0),
            )
        })
        .collect();
    let max = rows.iter().flat_map(|r| [r.1, r.2]).flatten().fold(1e-9, f64::max);
    let (left, width, bar, gap) = (170.0, 420.0, 14.0, 14.0);
    let height = 40.0 + rows.len() as f64 * (2.0 * bar + gap);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-weight=\"bold\">latency, ms (lower is better): fp32 grey, int8 blue</text>\n",
        left + width + 90.0
    );
    for (i, (label, fp32, int8)) in rows.iter().enumerate() {
        let y = 30.0 + i as f64 * (2.0 * bar + gap);
        let _ = writeln!(s, "<text x=\"10\" y=\"{:.1}\">{label}</text>", y + bar + 4.0);
        for (k, (v, color)) in [(fp32, "#999999"), (int8, "#2b6cb0")].into_iter().enumerate() {
            if let Some(v) = v {
                let w = width * v / max;
                let yy = y + k as f64 * bar;
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{yy:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\">{v:.2}</text>",
                    bar - 2.0,
                    left + w + 4.0,
                    yy + bar - 4.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `<stem>.md` and `<stem>.svg` next to the rows file and prints the table.
pub fn render(rows_file: &Path) -> Result<(), CliError> {
    let table = read_rows(rows_file)?;
    let md = markdown(&table);
    let (md_path, svg_path) = (rows_file.with_extension("md"), rows_file.with_extension("svg"));
    std::fs::write(&md_path, &md).map_err(|e| CliError::io(&md_path, e))?;
    std::fs::write(&svg_path, svg(&table)).map_err(|e| CliError::io(&svg_path, e))?;
    print!("{md}");
    eprintln!("wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
}
