#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = gimp_fuzz::scratch(data, "npy");
    let _ = gimp_io::npy::read_bag(&p, gimp_fuzz::MAX_BYTES);
});
