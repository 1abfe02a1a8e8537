#![no_main]
// TOML: cohort files and run files.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = gimp_fuzz::scratch(data, "toml");
    let _ = gimp_cohort::CohortFile::load(&p);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gimp_train::RunConfig::from_toml(text);
    }
});
