//! Running third-party parsing code that can panic on malformed input (candle's pickle machine,
//! the `tiff` crate's few `expect`s) so that the panic becomes an error, and so that the program's
//! panic hook can stay silent about it: a panic caught here is an input error the caller reports
//! with the file's name, not a crash.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static CATCHING: Cell<usize> = const { Cell::new(0) };
}

/// The code run by [`catch_quietly`] panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked;

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the parser panicked on this input")
    }
}

/// Runs `f`; a panic inside it returns `Err(Panicked)`.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    r.map_err(|_| Panicked)
}

/// True while this thread runs inside [`catch_quietly`]: a panic hook can skip its message.
pub fn is_catching() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// Installs a panic hook that stays silent for panics [`catch_quietly`] will turn into errors
/// and prints every other panic as the default hook does. For binaries.
pub fn install_quiet_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_catching() {
            default(info)
        }
    }));
}
