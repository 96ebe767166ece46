//! Per-node time of a statically quantized CNN, slowest first:
//! `cargo run --release -p qapi --example profile_cnn -- resnet18 [fp32] [THREADS]` (`fp32`: the
//! float graph instead; `THREADS`: the thread team's size, 1 by default).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_else(|| "resnet18".into());
    let threads = args.iter().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1);
    let (graph, x) = if args.iter().any(|a| a == "fp32") {
        let (graph, shape) = qapi::benchmark::cnn(&name, 1)?;
        let data = qapi::benchmark::normal(shape.iter().product(), 7);
        (graph, vec![qgraph::Value::F32(qtensor::Tensor::new(shape, data)?)])
    } else {
        qapi::benchmark::static_cnn(&name)?
    };
    // Per node, the fastest of several runs: the machine may be shared.
    let runs = qapi::benchmark::with_threads(threads, || {
        graph.run(x.clone())?;
        (0..7)
            .map(|_| qapi::benchmark::profile(&graph, x.clone()))
            .collect::<Result<Vec<_>, _>>()
    })??;
    let mut rows = runs[0].clone();
    for row in &mut rows {
        row.2 = runs
            .iter()
            .flatten()
            .filter(|r| r.0 == row.0)
            .map(|r| r.2)
            .fold(f64::INFINITY, f64::min);
    }
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = rows.iter().map(|r| r.2).sum();
    println!("{name}: {total:.2} ms");
    for (node, op, ms) in rows.iter().take(80) {
        println!("{ms:8.3} ms  {op:<28} {node}");
    }
    Ok(())
}
