//! Opening text tables: gzip detected by its magic bytes (not the name), delimiter by extension
//! or by sniffing the header.

use crate::error::{DataError, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Opens a possibly gzipped text file as a buffered reader.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let got = file.read(&mut magic).map_err(|e| DataError::io(path, e))?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        ))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Reads a whole (possibly gzipped) text file into a string, with a UTF-8 check.
pub fn read_text(path: &Path) -> Result<String> {
    let mut s = String::new();
    open_text(path)?
        .read_to_string(&mut s)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                DataError::malformed(
                    path,
                    format!("not valid UTF-8 text, or a corrupt gzip stream ({e})"),
                )
            }
            std::io::ErrorKind::UnexpectedEof => {
                DataError::malformed(path, "the gzip stream ends early (truncated download?)")
            }
            _ => DataError::io(path, e),
        })?;
    Ok(s)
}

/// The delimiter of a table: tab for `.tsv`/`.txt`, comma for `.csv`, else whichever of the two
/// the first line has more of.
pub fn sniff_delimiter(path: &Path, first_line: &str) -> u8 {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let name = name.trim_end_matches(".gz");
    if name.ends_with(".tsv") || name.ends_with(".tab") {
        return b'\t';
    }
    if name.ends_with(".csv") {
        return b',';
    }
    let tabs = first_line.matches('\t').count();
    let commas = first_line.matches(',').count();
    if tabs >= commas {
        b'\t'
    } else {
        b','
    }
}

/// A CSV reader over an in-memory string with the given delimiter; `flexible` allows ragged rows
/// (split files pad short columns with empty cells, some writers drop them).
pub fn csv_reader(text: &str, delimiter: u8, flexible: bool) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(flexible)
        .has_headers(true)
        .from_reader(text.as_bytes())
}

/// The header row of a CSV reader, cells trimmed; errors name the file.
pub fn trimmed_headers(
    rdr: &mut csv::Reader<&[u8]>,
    path: &Path,
) -> crate::error::Result<Vec<String>> {
    Ok(rdr
        .headers()
        .map_err(|e| crate::error::csv_error(path, e))?
        .iter()
        .map(|s| s.trim().to_string())
        .collect())
}
