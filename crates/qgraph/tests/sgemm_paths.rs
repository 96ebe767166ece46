//! The fp32 products of `qgraph::ops::gemm` on every path this CPU runs: against an f64 product
//! on odd shapes (tile remainders in every dimension, `K = 1`, `N < 16`, `M = 1`), with and
//! without accumulation, bit-identical for 1, 2 and 3 threads, the AVX-512 path within fp32
//! rounding of the portable one, and a Linear whose weight is mutated after a run (the kept packed
//! weight must not outlive the data it was built from).

use qgraph::ops::gemm::{sgemm_on, sgemm_weight_on, MatRef, SgemmPath};
use qgraph::{GraphBuilder, Value};
use qtensor::Tensor;

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 2001) as f32 / 613.0 - 1.6)
        .collect()
}

fn paths() -> Vec<SgemmPath> {
    [SgemmPath::Portable, SgemmPath::Avx512]
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// `c` against `c0 (if accumulating) + x W^T` in f64: within `(k + 2) eps (|c0| + sum |x w|)`,
/// the bound for any order of fp32 sums and fused multiply-adds.
#[allow(clippy::too_many_arguments)]
fn check_against_f64(c: &[f32], c0: &[f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize, what: &str) {
    let eps = f32::EPSILON as f64 / 2.0;
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64);
            let want = c0[i * n + j] as f64 + terms.clone().sum::<f64>();
            let size = (c0[i * n + j] as f64).abs() + terms.map(f64::abs).sum::<f64>();
            let err = (c[i * n + j] as f64 - want).abs();
            assert!(
                err <= (k + 2) as f64 * eps * size,
                "{what} {m}x{k}x{n} at ({i}, {j}): {} vs {want}",
                c[i * n + j]
            );
        }
    }
}

const MS: [usize; 7] = [1, 2, 3, 7, 8, 9, 21];
const KS: [usize; 5] = [1, 5, 191, 193, 400];
const NS: [usize; 8] = [1, 5, 16, 17, 47, 48, 49, 100];

#[test]
fn kept_weight_products_match_an_f64_product_on_odd_shapes() {
    for path in paths() {
        for &m in &MS {
            for &k in &KS {
                for &n in &NS {
                    let x = pseudo(m * k, m as u32);
                    let w = pseudo(n * k, 7 + k as u32);
                    let wt = Tensor::new([n, k], w.clone()).unwrap();
                    for accumulate in [false, true] {
                        let c0 = if accumulate {
                            pseudo(m * n, 99)
                        } else {
                            vec![0.0; m * n]
                        };
                        let mut c = if accumulate { c0.clone() } else { vec![f32::NAN; m * n] };
                        sgemm_weight_on(path, &x, m, &wt, n, k, &mut c, accumulate);
                        check_against_f64(&c, &c0, &x, &w, m, k, n, &format!("{path:?} kept weight"));
                    }
                }
            }
        }
    }
}

#[test]
fn row_major_products_match_an_f64_product_on_odd_shapes() {
    for path in paths() {
        for &m in &MS {
            for &k in &KS {
                for &n in &NS {
                    let x = pseudo(m * k, m as u32);
                    let w = pseudo(n * k, 7 + k as u32);
                    // `b = W^T` stored row-major with a padded row stride.
                    let ldb = n + 3;
                    let mut b = vec![f32::NAN; (k - 1) * ldb + n];
                    for p in 0..k {
                        for j in 0..n {
                            b[p * ldb + j] = w[j * k + p];
                        }
                    }
                    let bv = MatRef {
                        data: &b,
                        rows: k,
                        cols: n,
                        row_stride: ldb,
                        col_stride: 1,
                    };
                    for accumulate in [false, true] {
                        let c0 = if accumulate { pseudo(m * n, 5) } else { vec![0.0; m * n] };
                        let mut c = if accumulate { c0.clone() } else { vec![f32::NAN; m * n] };
                        sgemm_on(path, MatRef::row_major(&x, m, k), bv, &mut c, accumulate);
                        check_against_f64(&c, &c0, &x, &w, m, k, n, &format!("{path:?} row-major b"));
                    }
                }
            }
        }
    }
}

/// On the AVX-512 path every element is one fused multiply-add chain in increasing inner index,
/// starting from the old value when accumulating, whatever the tiling or blocking.
#[test]
fn avx512_elements_are_ordered_fma_chains() {
    if !SgemmPath::Avx512.is_available() {
        return;
    }
    let (m, k, n) = (19, 450, 53);
    let x = pseudo(m * k, 3);
    let w = pseudo(n * k, 4);
    let c0 = pseudo(m * n, 8);
    let mut c = c0.clone();
    sgemm_weight_on(
        SgemmPath::Avx512,
        &x,
        m,
        &Tensor::new([n, k], w.clone()).unwrap(),
        n,
        k,
        &mut c,
        true,
    );
    for i in 0..m {
        for j in 0..n {
            let want = (0..k).fold(c0[i * n + j], |s, p| x[i * k + p].mul_add(w[j * k + p], s));
            assert_eq!(c[i * n + j].to_bits(), want.to_bits(), "({i}, {j})");
        }
    }
}

#[test]
fn one_two_and_three_threads_give_identical_bits() {
    // Large enough for the AVX-512 path to split its panels between threads.
    let (m, k, n) = (130, 300, 200);
    let x = pseudo(m * k, 11);
    let w = pseudo(n * k, 12);
    let wt = Tensor::new([n, k], w.clone()).unwrap();
    let b: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    for path in paths() {
        let run = |threads: usize| {
            in_pool(threads, || {
                let mut kept = pseudo(m * n, 1);
                sgemm_weight_on(path, &x, m, &wt, n, k, &mut kept, true);
                let mut row_major = vec![0.0; m * n];
                sgemm_on(
                    path,
                    MatRef::row_major(&x, m, k),
                    MatRef::row_major(&b, k, n),
                    &mut row_major,
                    false,
                );
                (kept, row_major)
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            assert!(
                one.0.iter().zip(&other.0).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{path:?} kept weight, {threads} threads"
            );
            assert!(
                one.1.iter().zip(&other.1).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{path:?} row-major b, {threads} threads"
            );
        }
    }
}

#[test]
fn avx512_path_agrees_with_the_portable_path() {
    if !SgemmPath::Avx512.is_available() {
        return;
    }
    for &(m, k, n) in &[(128, 384, 384), (1, 384, 96), (64, 128, 96), (33, 1536, 70)] {
        let x = pseudo(m * k, 21);
        let wt = Tensor::new([n, k], pseudo(n * k, 22)).unwrap();
        let mut fast = pseudo(m * n, 23);
        let mut portable = fast.clone();
        sgemm_weight_on(SgemmPath::Avx512, &x, m, &wt, n, k, &mut fast, true);
        sgemm_weight_on(SgemmPath::Portable, &x, m, &wt, n, k, &mut portable, true);
        for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{m}x{k}x{n} element {i}: {a} vs {b}"
            );
        }
    }
}

/// A Linear keeps its packed weight between runs; mutating the weight in place (as QAT training
/// does through `Tensor::data_mut`) must change the next run's output to that of the new weight.
#[test]
fn mutating_a_linear_weight_after_a_run_changes_the_next_run() {
    let (m, k, n) = (24, 40, 50);
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[m, k]);
    let y = b.linear("fc", x, k, n);
    b.output(y);
    let mut g = b.build().unwrap();
    let weight = Tensor::new([n, k], pseudo(n * k, 31)).unwrap();
    g.node_mut(y).params.insert("weight".into(), weight.clone());
    g.node_mut(y)
        .params
        .insert("bias".into(), Tensor::new([n], pseudo(n, 32)).unwrap());
    let input = Tensor::new([m, k], pseudo(m * k, 33)).unwrap();
    let run = |g: &qgraph::Graph| {
        g.run(vec![Value::F32(input.clone())])
            .unwrap()
            .remove(0)
            .into_f32()
            .unwrap()
    };

    let before = run(&g);
    assert_eq!(
        before,
        run(&g),
        "a second run with the kept weight gives the same output"
    );
    let w = g.node_mut(y).params.get_mut("weight").unwrap();
    for v in w.data_mut() {
        *v *= -0.5;
    }
    let after = run(&g);
    assert_ne!(before, after);

    let mut fresh = g.clone();
    let rebuilt = Tensor::new([n, k], g.node(y).params["weight"].data().to_vec()).unwrap();
    fresh.node_mut(y).params.insert("weight".into(), rebuilt);
    assert_eq!(after, run(&fresh), "the mutated weight behaves as a freshly built one");
    // The weight cloned before the mutation still multiplies with its own data.
    let mut old = g.clone();
    old.node_mut(y).params.insert("weight".into(), weight);
    assert_eq!(before, run(&old));
}

/// A Linear whose weight or bias does not match its features is an error naming the node.
#[test]
fn a_linear_with_a_misshapen_weight_or_bias_is_an_error() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 4]);
    let y = b.linear("fc", x, 4, 5);
    b.output(y);
    let g = b.build().unwrap();
    let input = || vec![Value::F32(Tensor::new([3, 4], pseudo(12, 1)).unwrap())];
    for (w, bias) in [([5, 3], 5), ([5, 4], 4)] {
        let mut g = g.clone();
        g.node_mut(y).params.insert("weight".into(), Tensor::zeros(w));
        g.node_mut(y).params.insert("bias".into(), Tensor::zeros([bias]));
        let err = g.run(input()).unwrap_err().to_string();
        assert!(err.contains("fc") && err.contains("Linear"), "{err}");
    }
}
