#![no_main]
// The CSV/TSV readers: dataset CSVs, split files, expression matrices (also gzip), MCAT tables,
// signatures.
use gimp_io::expression::Orientation;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = gimp_fuzz::scratch(data, "csv");
    let _ = gimp_io::dataset::read_dataset_csv(&p);
    let _ = gimp_io::splits::read_split(&p);
    let _ = gimp_io::expression::read_matrix(&p, Orientation::Auto);
    let _ = gimp_io::expression::read_mcat_table(&p, &[gimp_io::expression::OmicType::Rnaseq]);
    let _ = gimp_io::expression::read_signatures(&p);
});
