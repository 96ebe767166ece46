//! Activation backward, with PyTorch's conventions at the kinks: ReLU passes where `x > 0`;
//! ReLU6 (hardtanh) where `0 < x < 6`; Hardswish `0` below -3, `x / 3 + 0.5` on [-3, 3], `1` above.

pub fn relu_grad(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else {
        0.0
    }
}

pub fn relu6_grad(x: f32) -> f32 {
    if x > 0.0 && x < 6.0 {
        1.0
    } else {
        0.0
    }
}

pub fn hardswish_grad(x: f32) -> f32 {
    if x < -3.0 {
        0.0
    } else if x <= 3.0 {
        x / 3.0 + 0.5
    } else {
        1.0
    }
}

/// `dx = dy * f'(x)` element-wise.
pub fn chain(x: &[f32], dy: &[f32], derivative: impl Fn(f32) -> f32) -> Vec<f32> {
    x.iter().zip(dy).map(|(&v, &g)| g * derivative(v)).collect()
}

/// Zeroes `dy` where a fused ReLU clipped the output (`y <= 0`).
pub fn mask_by_output(y: &[f32], dy: &mut [f32]) {
    for (g, &v) in dy.iter_mut().zip(y) {
        if v <= 0.0 {
            *g = 0.0;
        }
    }
}
