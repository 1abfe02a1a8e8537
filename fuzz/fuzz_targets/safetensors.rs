#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = gimp_fuzz::scratch(data, "safetensors");
    let _ = gimp_io::safetensors_io::read_all(&p);
    let _ = gimp_io::safetensors_io::read_bag(&p, gimp_fuzz::MAX_BYTES);
});
