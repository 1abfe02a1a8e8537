//! Shared by the fuzz targets: the readers take paths, so each input is written to a file in
//! memory-backed storage first (one per process, reused).

use std::path::PathBuf;

/// Writes `data` to this process's scratch file with extension `ext` and returns its path.
pub fn scratch(data: &[u8], ext: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let p = dir.join(format!("gimp-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&p, data).expect("scratch file");
    p
}

/// The largest bag any target may allocate: a reader must refuse larger ones from the header.
pub const MAX_BYTES: u64 = 64 << 20;

/// Lets a panic that the reader itself catches and turns into an error (gimp-io runs candle's
/// pickle machine and the `tiff` crate under `gimp_io::guard::catch_quietly`) pass silently; a
/// panic that escapes the reader still aborts the run, which is what the fuzzers look for.
pub fn allow_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !gimp_io::guard::is_catching() {
                fuzzer_hook(info)
            }
        }))
    });
}
