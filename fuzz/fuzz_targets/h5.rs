#![no_main]
// CLAM/TRIDENT feature and patch files (HDF5).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = gimp_fuzz::scratch(data, "h5");
    let _ = gimp_io::h5::read_features(&p, gimp_fuzz::MAX_BYTES);
    let _ = gimp_io::h5::feature_shape(&p);
    let _ = gimp_io::h5::read_patches(&p);
});
