//! Access to the `f32` data behind candle's CPU tensors, for the fused ops.

use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor};

/// What a custom op's `cpu_fwd` returns: the output's storage and shape.
pub(crate) type CpuForward = Result<(CpuStorage, Shape)>;

/// The values of a contiguous layout in a CPU storage; `what` names the operand in the error.
pub fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Runs `f` on the f32 data of a CPU tensor (made contiguous first if it is not).
pub fn with_data<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout, "tensor")?),
        _ => candle_core::bail!("fused CPU op: CPU tensors only"),
    }
}
