//! `ConvTranspose2d` on NHWC `u8` activations: per-tensor or per-output-channel `qint8`
//! weights (PyTorch refuses per-channel here; the arithmetic is the same), stride, padding,
//! output padding, dilation and groups. Same requantization as every convolution
//! ([`super::requant`]); the reference is [`super::reference::conv_transpose2d_reference`].

use super::geometry::ConvTranspose2dGeometry;
use super::requant::{ActQuant, ConvRequant, ConvWeightQuant, FusedActivation};
use super::{reference, NhwcShape};
use crate::{KernelError, Result};

/// A `ConvTranspose2d` with validated weights `[c_in, c_out / groups, kh, kw]`.
#[derive(Debug, Clone)]
pub struct PackedConvTranspose2d {
    geometry: ConvTranspose2dGeometry,
    weights: Vec<i8>,
    weight_quant: ConvWeightQuant,
    bias: Option<Vec<f32>>,
}

impl PackedConvTranspose2d {
    /// `weight_quant` holds one entry, or one per output channel.
    pub fn new(
        geometry: ConvTranspose2dGeometry,
        weights: &[i8],
        weight_quant: ConvWeightQuant,
        bias: Option<Vec<f32>>,
    ) -> Result<PackedConvTranspose2d> {
        geometry.validate()?;
        let expected = geometry.c_in * (geometry.c_out / geometry.groups) * geometry.taps();
        if weights.len() != expected {
            return Err(KernelError::Shape {
                op: "conv_transpose2d",
                detail: format!(
                    "weights have {} values, expected c_in * c_out/groups * kh * kw = {expected}",
                    weights.len()
                ),
            });
        }
        weight_quant.check_channels("conv_transpose2d", geometry.c_out)?;
        Ok(PackedConvTranspose2d {
            geometry,
            weights: weights.to_vec(),
            weight_quant,
            bias,
        })
    }

    pub fn geometry(&self) -> &ConvTranspose2dGeometry {
        &self.geometry
    }

    pub fn output_shape(&self, xs: NhwcShape) -> Result<NhwcShape> {
        let (oh, ow) = self.geometry.output_hw(xs.h, xs.w)?;
        Ok(NhwcShape::new(xs.n, oh, ow, self.geometry.c_out))
    }

    /// Transposed convolution of NHWC `x` into NHWC `y`.
    pub fn run(
        &self,
        x: &[u8],
        xs: NhwcShape,
        x_q: ActQuant,
        y_q: ActQuant,
        activation: FusedActivation,
        y: &mut [u8],
    ) -> Result<()> {
        let g = &self.geometry;
        if xs.c != g.c_in {
            return Err(KernelError::Shape {
                op: "conv_transpose2d",
                detail: format!("input has {} channels, the layer expects {}", xs.c, g.c_in),
            });
        }
        xs.check("conv_transpose2d", "input", x.len())?;
        let ys = self.output_shape(xs)?;
        ys.check("conv_transpose2d", "output", y.len())?;
        let rq = ConvRequant::new(
            "conv_transpose2d",
            x_q,
            &self.weight_quant,
            g.c_out,
            self.bias.as_deref(),
            y_q,
            activation,
        )?;
        reference::conv_transpose2d_reference(g, x, xs, x_q.zero_point, &self.weights, &self.weight_quant, &rq, y);
        Ok(())
    }
}
