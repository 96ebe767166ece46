//! Pooling backward (NCHW). MaxPool2d sends each output gradient to the first maximum of its
//! window (PyTorch's CPU kernel keeps the first index on ties); AvgPool2d spreads `dy / count`
//! over the window with the forward's divisor (`count_include_pad`); AdaptiveAvgPool2d spreads
//! `dy / area` over `[floor(i H / O), ceil((i + 1) H / O))`.

use crate::op::Pool2dAttrs;

fn window(o: usize, stride: usize, pad: usize, kernel: usize, n: usize) -> (usize, usize) {
    let lo = (o * stride) as isize - pad as isize;
    let hi = lo + kernel as isize;
    (lo.max(0) as usize, hi.min(n as isize) as usize)
}

pub fn max_pool2d_backward(a: &Pool2dAttrs, x: &[f32], x_shape: &[usize], dy: &[f32], y_shape: &[usize]) -> Vec<f32> {
    let (h, w) = (x_shape[2], x_shape[3]);
    let (oh, ow) = (y_shape[2], y_shape[3]);
    let mut dx = vec![0.0f32; x.len()];
    for p in 0..y_shape[0] * y_shape[1] {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let (ya, yb) = window(oy, a.stride[0], a.padding[0], a.kernel[0], h);
            for ox in 0..ow {
                let (xa, xb) = window(ox, a.stride[1], a.padding[1], a.kernel[1], w);
                let mut best = None;
                let mut m = f32::NEG_INFINITY;
                for yy in ya..yb {
                    for xx in xa..xb {
                        let v = plane[yy * w + xx];
                        if best.is_none() || v > m || v.is_nan() {
                            m = v;
                            best = Some(yy * w + xx);
                        }
                    }
                }
                if let Some(i) = best {
                    dx[p * h * w + i] += dy[(p * oh + oy) * ow + ox];
                }
            }
        }
    }
    dx
}

pub fn avg_pool2d_backward(a: &Pool2dAttrs, x_shape: &[usize], dy: &[f32], y_shape: &[usize]) -> Vec<f32> {
    let (h, w) = (x_shape[2], x_shape[3]);
    let (oh, ow) = (y_shape[2], y_shape[3]);
    let mut dx = vec![0.0f32; x_shape.iter().product()];
    for p in 0..y_shape[0] * y_shape[1] {
        let plane = &mut dx[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let y0 = (oy * a.stride[0]) as isize - a.padding[0] as isize;
            let y1 = (y0 + a.kernel[0] as isize).min((h + a.padding[0]) as isize);
            for ox in 0..ow {
                let x0 = (ox * a.stride[1]) as isize - a.padding[1] as isize;
                let x1 = (x0 + a.kernel[1] as isize).min((w + a.padding[1]) as isize);
                let padded = ((y1 - y0) * (x1 - x0)) as usize;
                let (ya, yb) = (y0.max(0) as usize, y1.min(h as isize) as usize);
                let (xa, xb) = (x0.max(0) as usize, x1.min(w as isize) as usize);
                let count = if a.count_include_pad {
                    padded
                } else {
                    (yb - ya) * (xb - xa)
                };
                let g = dy[(p * oh + oy) * ow + ox] / count as f32;
                for yy in ya..yb {
                    for v in &mut plane[yy * w + xa..yy * w + xb] {
                        *v += g;
                    }
                }
            }
        }
    }
    dx
}

pub fn adaptive_avg_pool2d_backward(x_shape: &[usize], dy: &[f32], y_shape: &[usize]) -> Vec<f32> {
    let (h, w) = (x_shape[2], x_shape[3]);
    let (oh, ow) = (y_shape[2], y_shape[3]);
    let mut dx = vec![0.0f32; x_shape.iter().product()];
    for p in 0..y_shape[0] * y_shape[1] {
        let plane = &mut dx[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            let (ya, yb) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (xa, xb) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                let g = dy[(p * oh + oy) * ow + ox] / ((yb - ya) * (xb - xa)) as f32;
                for yy in ya..yb {
                    for v in &mut plane[yy * w + xa..yy * w + xb] {
                        *v += g;
                    }
                }
            }
        }
    }
    dx
}
