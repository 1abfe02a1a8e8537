//! JPEG tile decoding speed: every JPEG tile of a slide's level 0 decoded by
//! `gimp_slide::jpeg` (libjpeg-turbo's decoder, what the reader uses) and by the `tiff` crate's
//! own JPEG path (`jpeg-decoder`, what it used before), with the largest pixel difference
//! between the two.
//!
//!     cargo run --release -p gimp-slide --example jpeg_decode_speed -- data/slides/cmu_small_region.svs 5

use gimp_slide::jpeg::{self, JpegColour};
use std::time::Instant;
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: jpeg_decode_speed SLIDE [REPEATS]");
        std::process::exit(2);
    };
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let file = std::fs::read(path).expect("reading the slide");
    let mut dec = Decoder::new(std::io::Cursor::new(&file)).expect("a TIFF");
    assert_eq!(
        dec.get_tag_u32(Tag::Compression).ok(),
        Some(7),
        "level 0 is not JPEG"
    );
    let offsets = dec
        .get_tag_u64_vec(Tag::TileOffsets)
        .expect("a tiled level 0");
    let counts = dec.get_tag_u64_vec(Tag::TileByteCounts).unwrap();
    let tables = dec.get_tag_u8_vec(Tag::JPEGTables).ok();
    let colour = match dec.get_tag_u32(Tag::PhotometricInterpretation) {
        Ok(6) => JpegColour::YCbCr,
        _ => JpegColour::Rgb,
    };
    let (tw, th) = dec.chunk_dimensions();
    let n = offsets.len();
    let raw: Vec<&[u8]> = (0..n)
        .map(|i| &file[offsets[i] as usize..(offsets[i] + counts[i]) as usize])
        .collect();

    let t = Instant::now();
    let mut ours = Vec::new();
    for _ in 0..reps {
        ours = raw
            .iter()
            .map(|r| jpeg::decode(tables.as_deref(), r, colour).unwrap())
            .collect();
    }
    let ours_rate = (n * reps) as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut theirs = Vec::new();
    for _ in 0..reps {
        theirs = (0..n as u32)
            .map(|i| match dec.read_chunk(i).unwrap() {
                DecodingResult::U8(v) => (dec.chunk_data_dimensions(i), v),
                _ => panic!("8-bit tiles expected"),
            })
            .collect();
    }
    let theirs_rate = (n * reps) as f64 / t.elapsed().as_secs_f64();

    let mut max = 0;
    for (o, ((w, h), v)) in ours.iter().zip(&theirs) {
        for y in 0..*h as usize {
            for x in 0..*w as usize * 3 {
                let a = o.pixels[y * o.width as usize * 3 + x] as i32;
                max = max.max((a - v[y * *w as usize * 3 + x] as i32).abs());
            }
        }
    }
    println!("{n} tiles of {tw}×{th}, {reps} repeats, one thread");
    println!("libjpeg-turbo (gimp_slide::jpeg): {ours_rate:.0} tiles/s");
    println!("jpeg-decoder (the tiff crate):    {theirs_rate:.0} tiles/s");
    println!("largest pixel difference between them: {max}");
}
