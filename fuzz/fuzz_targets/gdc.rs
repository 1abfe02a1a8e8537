#![no_main]
// GDC files: STAR augmented counts, legacy HTSeq, the sample sheet.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = gimp_fuzz::scratch(data, "tsv");
    let _ = gimp_io::expression::read_gdc_star(&p, "fpkm_unstranded");
    let _ = gimp_io::expression::read_gdc_legacy(&p);
    let _ = gimp_io::expression::read_gdc_file(&p, "unstranded");
    let _ = gimp_io::expression::read_sample_sheet(&p);
});
