//! Shapes of 2-D convolutions: the PyTorch `Conv2d` / `ConvTranspose2d` arguments, their
//! validation, and the output-size formulas. Activations are NHWC (channels last) `u8`; weights
//! arrive in PyTorch's layout (`[c_out, c_in / groups, kh, kw]` for Conv2d,
//! `[c_in, c_out / groups, kh, kw]` for ConvTranspose2d).

use crate::{KernelError, Result};

/// Hyper-parameters of a `Conv2d` (PyTorch semantics; padding is symmetric per axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    pub c_in: usize,
    pub c_out: usize,
    /// Kernel size (height, width).
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dGeometry {
    /// A `c_in -> c_out` convolution with a `kernel` window, stride 1, no padding, dilation 1,
    /// one group. Chain the `with_*` methods for the rest.
    pub fn new(c_in: usize, c_out: usize, kernel: (usize, usize)) -> Conv2dGeometry {
        Conv2dGeometry {
            c_in,
            c_out,
            kernel,
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }

    pub fn with_stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }

    pub fn with_padding(mut self, ph: usize, pw: usize) -> Self {
        self.padding = (ph, pw);
        self
    }

    pub fn with_dilation(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }

    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Input channels per group (the reduction depth per kernel tap).
    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.groups
    }

    /// Output channels per group.
    pub fn c_out_per_group(&self) -> usize {
        self.c_out / self.groups
    }

    /// Number of kernel taps `kh * kw`.
    pub fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// Reduction length of one output value: `kh * kw * c_in / groups`.
    pub fn depth(&self) -> usize {
        self.taps() * self.c_in_per_group()
    }

    /// One input and one output channel per group (MobileNet's depthwise layers).
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c_in && self.c_in == self.c_out && self.groups > 1
    }

    /// A plain matrix multiply over pixels: 1x1 kernel, stride 1, no padding, one group.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == (1, 1) && self.padding == (0, 0) && self.groups == 1
    }

    /// Checks every field; the error says which one to fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(KernelError::Param { op: "conv2d", detail });
        if self.c_in == 0 || self.c_out == 0 {
            return bad(format!(
                "channels must be positive (c_in {}, c_out {})",
                self.c_in, self.c_out
            ));
        }
        if self.kernel.0 == 0 || self.kernel.1 == 0 {
            return bad(format!("kernel size {:?} must be positive", self.kernel));
        }
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return bad(format!("stride {:?} must be positive", self.stride));
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return bad(format!("dilation {:?} must be positive", self.dilation));
        }
        if self.groups == 0 || !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return bad(format!(
                "groups {} must divide both c_in {} and c_out {}",
                self.groups, self.c_in, self.c_out
            ));
        }
        Ok(())
    }

    /// Output size: `(in + 2 * pad - dil * (k - 1) - 1) / stride + 1` per axis (PyTorch).
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let oh = conv_out_len(h, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0);
        let ow = conv_out_len(w, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1);
        match (oh, ow) {
            (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok((oh, ow)),
            _ => Err(KernelError::Shape {
                op: "conv2d",
                detail: format!(
                    "input {h}x{w} is smaller than the dilated kernel {:?} (dilation {:?}, padding {:?}); use a larger input or more padding",
                    self.kernel, self.dilation, self.padding
                ),
            }),
        }
    }
}

fn conv_out_len(input: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    let span = dil * (k - 1) + 1;
    let padded = input + 2 * pad;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

/// Hyper-parameters of a `ConvTranspose2d` (PyTorch semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvTranspose2dGeometry {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub output_padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl ConvTranspose2dGeometry {
    /// A `c_in -> c_out` transposed convolution, stride 1, no padding, dilation 1, one group.
    pub fn new(c_in: usize, c_out: usize, kernel: (usize, usize)) -> ConvTranspose2dGeometry {
        ConvTranspose2dGeometry {
            c_in,
            c_out,
            kernel,
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }

    pub fn with_stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }

    pub fn with_padding(mut self, ph: usize, pw: usize) -> Self {
        self.padding = (ph, pw);
        self
    }

    pub fn with_output_padding(mut self, oph: usize, opw: usize) -> Self {
        self.output_padding = (oph, opw);
        self
    }

    pub fn with_dilation(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }

    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    pub fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// Checks every field, including PyTorch's rule that output padding is smaller than the
    /// stride or the dilation.
    pub fn validate(&self) -> Result<()> {
        let as_conv = Conv2dGeometry {
            c_in: self.c_in,
            c_out: self.c_out,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        };
        as_conv.validate().map_err(|e| match e {
            KernelError::Param { detail, .. } => KernelError::Param {
                op: "conv_transpose2d",
                detail,
            },
            other => other,
        })?;
        let ok = |op: usize, s: usize, d: usize| op < s || op < d;
        if !ok(self.output_padding.0, self.stride.0, self.dilation.0)
            || !ok(self.output_padding.1, self.stride.1, self.dilation.1)
        {
            return Err(KernelError::Param {
                op: "conv_transpose2d",
                detail: format!(
                    "output_padding {:?} must be smaller than the stride {:?} or the dilation {:?}",
                    self.output_padding, self.stride, self.dilation
                ),
            });
        }
        Ok(())
    }

    /// Output size: `(in - 1) * stride - 2 * pad + dil * (k - 1) + output_padding + 1` per axis.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let len = |i: usize, s: usize, p: usize, d: usize, k: usize, op: usize| {
            ((i as i64 - 1) * s as i64 - 2 * p as i64 + (d * (k - 1)) as i64 + op as i64 + 1).max(0) as usize
        };
        let oh = len(
            h,
            self.stride.0,
            self.padding.0,
            self.dilation.0,
            self.kernel.0,
            self.output_padding.0,
        );
        let ow = len(
            w,
            self.stride.1,
            self.padding.1,
            self.dilation.1,
            self.kernel.1,
            self.output_padding.1,
        );
        if h == 0 || w == 0 || oh == 0 || ow == 0 {
            return Err(KernelError::Shape {
                op: "conv_transpose2d",
                detail: format!(
                    "input {h}x{w} gives an empty output with padding {:?}; reduce the padding",
                    self.padding
                ),
            });
        }
        Ok((oh, ow))
    }
}
