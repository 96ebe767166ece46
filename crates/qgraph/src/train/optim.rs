//! Optimizers with PyTorch's update rules (`torch.optim`), state kept per parameter in visit
//! order.
//!
//! SGD: `g = grad + wd p`; with momentum `buf = g` on the first step, then
//! `buf = mu buf + (1 - dampening) g`; `g = g + mu buf` (Nesterov) or `g = buf`; `p -= lr g`.
//!
//! Adam: `g = grad + wd p`, `m = lerp(m, g, 1 - b1)`, `v = b2 v + (1 - b2) g^2`,
//! `p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use super::model::TrainModel;

/// Something that updates a model's parameters from their gradients.
pub trait Optimizer {
    fn step(&mut self, model: &mut TrainModel);
    fn learning_rate(&self) -> f32;
    fn set_learning_rate(&mut self, lr: f32);
}

/// `torch.optim.SGD`.
#[derive(Debug, Clone)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    buffers: Vec<Option<Vec<f32>>>,
}

impl Sgd {
    pub fn new(lr: f32) -> Sgd {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            buffers: Vec::new(),
        }
    }

    pub fn momentum(mut self, momentum: f32) -> Sgd {
        self.momentum = momentum;
        self
    }

    pub fn weight_decay(mut self, weight_decay: f32) -> Sgd {
        self.weight_decay = weight_decay;
        self
    }

    pub fn nesterov(mut self, nesterov: bool) -> Sgd {
        self.nesterov = nesterov;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, model: &mut TrainModel) {
        let mut index = 0;
        let s = &mut *self;
        model.visit_params(&mut |_, p| {
            if s.buffers.len() <= index {
                s.buffers.push(None);
            }
            let buf = &mut s.buffers[index];
            index += 1;
            let grad = p.grad.data();
            let value = p.value.data_mut();
            let mut g: Vec<f32> = grad
                .iter()
                .zip(value.iter())
                .map(|(&g, &v)| g + s.weight_decay * v)
                .collect();
            if s.momentum != 0.0 {
                match buf {
                    None => *buf = Some(g.clone()),
                    Some(b) => {
                        for (bv, &gv) in b.iter_mut().zip(&g) {
                            *bv = s.momentum * *bv + (1.0 - s.dampening) * gv;
                        }
                    }
                }
                let b = buf.as_ref().expect("set above");
                if s.nesterov {
                    for (gv, &bv) in g.iter_mut().zip(b) {
                        *gv += s.momentum * bv;
                    }
                } else {
                    g.copy_from_slice(b);
                }
            }
            for (v, gv) in value.iter_mut().zip(g) {
                *v -= s.lr * gv;
            }
        });
    }

    fn learning_rate(&self) -> f32 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.lr = lr;
    }
}

/// `torch.optim.Adam` (L2 weight decay added to the gradient, not AdamW).
#[derive(Debug, Clone)]
pub struct Adam {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    step: i32,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Adam {
    pub fn new(lr: f32) -> Adam {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            step: 0,
            moments: Vec::new(),
        }
    }

    pub fn weight_decay(mut self, weight_decay: f32) -> Adam {
        self.weight_decay = weight_decay;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self, model: &mut TrainModel) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let bias1 = 1.0 - b1.powi(self.step);
        let bias2_sqrt = (1.0 - b2.powi(self.step)).sqrt();
        let step_size = self.lr / bias1;
        let mut index = 0;
        let s = &mut *self;
        model.visit_params(&mut |_, p| {
            if s.moments.len() <= index {
                let n = p.value.numel();
                s.moments.push((vec![0.0; n], vec![0.0; n]));
            }
            let (m, v) = &mut s.moments[index];
            index += 1;
            let grad = p.grad.data().to_vec();
            for (i, w) in p.value.data_mut().iter_mut().enumerate() {
                let g = grad[i] + s.weight_decay * *w;
                m[i] += (1.0 - b1) * (g - m[i]);
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let denom = v[i].sqrt() / bias2_sqrt + s.eps;
                *w -= step_size * m[i] / denom;
            }
        });
    }

    fn learning_rate(&self) -> f32 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.lr = lr;
    }
}
