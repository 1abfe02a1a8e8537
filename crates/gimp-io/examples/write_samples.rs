//! Writes one file of each output format into a folder, so they can be checked with the reference
//! Python tools (`tools/check_written_files.py`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "written".into()));
    let n = 5;
    let d = 3;
    let features: Vec<f32> = (0..n * d).map(|i| i as f32 * 0.5).collect();
    let coords = Some((0..n as i64).map(|i| [i * 256, 512]).collect());
    let bag = gimp_io::Bag::from_parts(&out, n, d, features, coords)?;
    gimp_io::h5::write_features(&out.join("features.h5"), &bag, gimp_io::h5::Chunking::Clam)?;
    gimp_io::pt::write_bag(&out.join("features.pt"), &bag)?;
    gimp_io::npy::write_bag(&out.join("features.npy"), &bag)?;
    let patches = gimp_io::h5::PatchFile {
        coords: bag.coords.clone().unwrap_or_default(),
        attrs: gimp_io::h5::PatchAttrs {
            patch_size: Some(256),
            patch_level: Some(0),
            downsample: Some([1.0, 1.0]),
            level_dim: Some([1000, 800]),
            name: Some("s".into()),
            ..Default::default()
        },
    };
    gimp_io::h5::write_patches(&out.join("patches.h5"), &patches)?;
    Ok(())
}
