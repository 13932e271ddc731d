//! A 2D convolution layer (square kernel, bias) dispatching through [`KernelBackend`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::KernelBackend;

/// `Conv2d` with weight `[Cout, Cin, k, k]` (variable `weight`) and bias `[Cout]` (`bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    backend: KernelBackend,
}

impl Conv2d {
    /// Kaiming-uniform initialised, as candle_nn's conv2d.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        let bound = 1.0 / ((cin * kernel * kernel) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Self::with_init(vb, (cin, cout, kernel), stride, padding, init, backend)
    }

    /// Weight and bias initialised to zero, so the layer starts as the zero map (the last conv of
    /// the U-Net and of its attention blocks, as in Nichol & Dhariwal 2021).
    pub fn zeros(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        let init = Init::Const(0.0);
        Self::with_init(vb, (cin, cout, kernel), stride, padding, init, backend)
    }

    fn with_init(
        vb: VarBuilder,
        (cin, cout, kernel): (usize, usize, usize),
        stride: usize,
        padding: usize,
        init: Init,
        backend: KernelBackend,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((cout, cin, kernel, kernel), "weight", init)?;
        let bias = vb.get_with_hints(cout, "bias", init)?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            backend,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn backend(&self) -> KernelBackend {
        self.backend
    }

    /// `conv(x) + bias + shift[b, c]` with `shift: [B, Cout]` (e.g. a time-embedding
    /// projection), added inside the conv kernel instead of a separate broadcast add.
    pub fn forward_shifted(&self, x: &Tensor, shift: &Tensor) -> Result<Tensor> {
        let bias = shift.broadcast_add(&self.bias.unsqueeze(0)?)?;
        self.backend
            .conv2d(x, &self.weight, Some(&bias), self.stride, self.padding)
    }
}

impl Conv2d {
    /// The tangent of the output for the tangent `dx` of the input (forward mode): the same
    /// convolution without the bias, plus `dshift: [B, Cout]`, the tangent of a per-item shift
    /// ([`Self::forward_shifted`]); `out` is the output, for its shape. `None` when both are zero.
    pub fn tangent(
        &self,
        out: &Tensor,
        dx: Option<&Tensor>,
        dshift: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        match (dx, dshift) {
            (None, None) => Ok(None),
            (Some(dx), shift) => self
                .backend
                .conv2d(dx, &self.weight, shift, self.stride, self.padding)
                .map(Some),
            (None, Some(shift)) => {
                // Only the shift moves: the same value at every position of the output.
                let (b, c) = shift.dims2()?;
                Ok(Some(
                    shift.reshape((b, c, 1, 1))?.broadcast_as(out.shape())?,
                ))
            }
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.backend
            .conv2d(x, &self.weight, Some(&self.bias), self.stride, self.padding)
    }
}
