#![no_main]
// Slides (TIFF / Aperio SVS, DICOM): the directory, then regions and associated images.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gimp_fuzz::allow_caught_panics();
    let p = gimp_fuzz::scratch(data, "svs");
    if let Ok(s) = gimp_slide::open(&p) {
        for level in 0..s.levels().len().min(3) {
            let _ = s.read_region(0, 0, level, 64, 64);
            let _ = s.read_region(1000, 700, level, 300, 200);
        }
        for n in s.associated_names() {
            let _ = s.read_associated(&n);
        }
    }
});
