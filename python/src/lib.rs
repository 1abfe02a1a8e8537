//! `gimp_rs._native`: the Rust side of the `gimp_rs` Python package. Wiring only, as the CLI is:
//! arguments become library calls (gimp-io, gimp-cohort, gimp-train, gimp-extract,
//! gimp-metrics) and results become numpy arrays and Python objects. Every call that reads
//! files or computes runs through [`boundary::detached`]: the GIL is released, Rust errors become
//! the exception classes of [`boundary`], panics become `InternalError`, and Ctrl-C (noticed at
//! each progress report) ends the call with `KeyboardInterrupt`.

mod arrays;
mod boundary;
mod cohort;
mod io;
mod metrics;
mod model;
mod progress;
mod runs;
mod values;

use pyo3::prelude::*;

/// Large freed tensors are reused instead of re-faulted from the kernel, as in the `gimp-rs`
/// binary (see `gimp_nn::cpu::alloc`): training from Python runs at the binary's speed. It only
/// serves this module's Rust allocations; Python and numpy keep their own allocators.
#[global_allocator]
static ALLOC: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As in the binary: a panic inside a third-party parser that gimp-io turns into a
    // `DataError` prints nothing (the hook serves this module's Rust code only).
    gimp_io::guard::install_quiet_panic_hook();
    boundary::register(m)?;
    io::register(m)?;
    cohort::register(m)?;
    model::register(m)?;
    runs::register(m)?;
    metrics::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
