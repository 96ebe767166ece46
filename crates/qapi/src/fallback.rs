//! Accuracy-driven fallback: quantize everything, measure, and if the metric drops more than
//! allowed, keep the fewest layers in f32 that bring it back.
//!
//! Layers are ranked by the error each adds on its own ([`crate::compare::local_sensitivity`]:
//! lowest layer-local SQNR first). The search then finds the smallest prefix of that ranking
//! whose layers, kept in f32, meet the target: a binary search over the prefix length, each
//! trial a full prepare / calibrate / convert / evaluate, all recorded.

use qgraph::{Graph, Value};

use crate::compare::{local_sensitivity, LayerComparison};
use crate::report::{FloatReason, NodeStatus};
use crate::{prepare, ApiError, QConfigMap, QuantReport, Result};

/// One evaluated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackTrial {
    /// Layers kept in f32 in this trial.
    pub float_layers: Vec<String>,
    pub metric: f64,
}

/// What the search found and tried.
#[derive(Debug, Clone)]
pub struct FallbackOutcome {
    pub graph: Graph,
    pub report: QuantReport,
    /// The metric of the float model.
    pub baseline: f64,
    /// The metric of the returned model.
    pub metric: f64,
    /// Layers kept in f32 for accuracy.
    pub float_layers: Vec<String>,
    /// Every layer, most sensitive first, with its layer-local comparison.
    pub ranking: Vec<LayerComparison>,
    pub trials: Vec<FallbackTrial>,
    /// Whether the target was met (it always is with every ranked layer in f32, unless the
    /// remaining int8 nodes alone exceed the budget).
    pub met: bool,
}

/// Quantizes `graph` statically under `config`, keeping the fewest layers in f32 so that
/// `baseline - eval(model) <= max_drop`, where `eval` returns a higher-is-better metric.
pub fn quantize_with_fallback<F>(
    graph: &Graph,
    config: &QConfigMap,
    calibration: &[Vec<Value>],
    mut eval: F,
    max_drop: f64,
) -> Result<FallbackOutcome>
where
    F: FnMut(&Graph) -> Result<f64>,
{
    let _span = tracing::info_span!("fallback").entered();
    if calibration.is_empty() {
        return Err(ApiError::Config {
            detail: "accuracy fallback needs at least one calibration batch".into(),
        });
    }
    let baseline = eval(graph)?;
    let build = |float_layers: &[String]| -> Result<(Graph, QuantReport, Graph)> {
        let mut cfg = config.clone();
        for name in float_layers {
            cfg = cfg.set_name(name.clone(), None);
        }
        let mut prepared = prepare(graph, &cfg)?;
        prepared.calibrate(calibration.iter().cloned())?;
        let (q, report) = prepared.convert()?;
        Ok((q, report, prepared.graph().clone()))
    };

    let (q, report, fused) = build(&[])?;
    let metric = eval(&q)?;
    let mut trials = vec![FallbackTrial {
        float_layers: Vec::new(),
        metric,
    }];
    let mut ranking = local_sensitivity(&fused, &q, calibration[0].clone())?;
    ranking.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
    if baseline - metric <= max_drop {
        return Ok(FallbackOutcome {
            graph: q,
            report,
            baseline,
            metric,
            float_layers: Vec::new(),
            ranking,
            trials,
            met: true,
        });
    }

    // Smallest k such that keeping the k most sensitive layers in f32 meets the target. Keeping
    // more layers in f32 can only help, so bisect: k = lo fails, k = hi is the candidate.
    let names: Vec<String> = ranking.iter().map(|l| l.name.clone()).collect();
    let mut trial = |k: usize, trials: &mut Vec<FallbackTrial>| -> Result<(Graph, QuantReport, f64)> {
        let (q, report, _) = build(&names[..k])?;
        let metric = eval(&q)?;
        tracing::info!(k, metric, "fallback trial");
        trials.push(FallbackTrial {
            float_layers: names[..k].to_vec(),
            metric,
        });
        Ok((q, report, metric))
    };
    let (mut lo, mut hi) = (0usize, names.len());
    let mut best: Option<(usize, Graph, QuantReport, f64)> = None;
    while hi - lo > 1 {
        let k = (lo + hi) / 2;
        let (q, report, metric) = trial(k, &mut trials)?;
        if baseline - metric <= max_drop {
            hi = k;
            best = Some((k, q, report, metric));
        } else {
            lo = k;
        }
    }
    let (k, q, mut report, metric) = match best {
        Some(b) if b.0 == hi => b,
        _ => {
            let (q, r, m) = trial(hi, &mut trials)?;
            (hi, q, r, m)
        }
    };
    let met = baseline - metric <= max_drop;
    let float_layers = names[..k].to_vec();
    for row in &mut report.nodes {
        if float_layers.contains(&row.name) {
            let rank = names.iter().position(|n| n == &row.name).unwrap_or(0);
            row.status = NodeStatus::Float {
                reason: FloatReason::Fallback {
                    detail: format!("sensitivity rank {} of {}", rank + 1, names.len()),
                },
            };
        }
    }
    Ok(FallbackOutcome {
        graph: q,
        report,
        baseline,
        metric,
        float_layers,
        ranking,
        trials,
        met,
    })
}
