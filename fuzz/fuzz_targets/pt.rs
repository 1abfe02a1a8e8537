#![no_main]
// torch.save files: bare tensors (CLAM's pt_files) and state dicts / Lightning checkpoints.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gimp_fuzz::allow_caught_panics();
    let p = gimp_fuzz::scratch(data, "pt");
    let _ = gimp_io::pt::read_tensor(&p, gimp_fuzz::MAX_BYTES);
    let _ = gimp_io::pt::read_state_dict(&p);
});
