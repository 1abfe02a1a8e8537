//! Gene expression: plain matrices, GDC STAR and legacy HTSeq files, the GDC sample sheet,
//! MCAT/PORPOISE wide tables and `signatures.csv`.

use crate::error::{csv_error, DataError, ErrorKind, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// Samples × genes, row-major. Missing cells are NaN until [`ExpressionMatrix::impute_missing`]
/// or [`ExpressionMatrix::require_complete`] decide what to do with them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpressionMatrix {
    pub samples: Vec<String>,
    pub genes: Vec<String>,
    pub values: Vec<f32>,
}

impl ExpressionMatrix {
    pub fn n_samples(&self) -> usize {
        self.samples.len()
    }

    pub fn n_genes(&self) -> usize {
        self.genes.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let g = self.genes.len();
        &self.values[i * g..(i + 1) * g]
    }

    pub fn sample_index(&self) -> HashMap<&str, usize> {
        self.samples
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect()
    }

    /// Errors on the first missing value, naming sample and gene (`docs/DESIGN.md` §3: a gene missing
    /// from one sample is an error unless the user opts into imputation).
    pub fn require_complete(&self, path: &Path) -> Result<()> {
        let g = self.genes.len();
        if let Some(pos) = self.values.iter().position(|v| v.is_nan()) {
            return Err(DataError::new(
                ErrorKind::Missing,
                path,
                format!(
                    "gene '{}' has no value for sample '{}' (set impute = \"mean\" under [expression] to fill missing values)",
                    self.genes[pos % g],
                    self.samples[pos / g]
                ),
            ));
        }
        Ok(())
    }

    /// Replaces missing values by the gene's mean over the samples that have it; returns how many
    /// values were imputed. A gene missing everywhere becomes 0.
    pub fn impute_missing(&mut self) -> usize {
        let g = self.genes.len();
        let n = self.samples.len();
        let mut imputed = 0;
        for j in 0..g {
            let (mut sum, mut cnt) = (0f64, 0usize);
            for i in 0..n {
                let v = self.values[i * g + j];
                if !v.is_nan() {
                    sum += v as f64;
                    cnt += 1;
                }
            }
            let mean = if cnt > 0 {
                (sum / cnt as f64) as f32
            } else {
                0.0
            };
            for i in 0..n {
                let v = &mut self.values[i * g + j];
                if v.is_nan() {
                    *v = mean;
                    imputed += 1;
                }
            }
        }
        imputed
    }
}

/// How expression values are transformed before per-gene z-scoring: `log2p1` for linear-scale
/// values (FPKM, TPM, counts), `none` for values already on a log scale. Spelled as in cohort,
/// experiment and checkpoint files (`"log2p1"`, `"none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpressionTransform {
    /// `log2(max(x, 0) + 1)`: negative values (rounding noise in some pipelines' output) are
    /// clamped at 0 so the logarithm is defined.
    Log2p1,
    /// Values as read.
    None,
}

impl ExpressionTransform {
    /// The spellings [`FromStr`](std::str::FromStr) accepts, for messages and help texts.
    pub const NAMES: [&'static str; 2] = ["log2p1", "none"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Log2p1 => "log2p1",
            Self::None => "none",
        }
    }

    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Log2p1 => (x.max(0.0) + 1.0).log2(),
            Self::None => x,
        }
    }

    /// [`apply`](Self::apply) to every value, into a new row.
    pub fn apply_row(self, row: &[f32]) -> Vec<f32> {
        row.iter().map(|&x| self.apply(x)).collect()
    }
}

/// An expression transform name that is not one of [`ExpressionTransform::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTransform(pub String);

impl std::fmt::Display for UnknownTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "transform must be {}, not '{}'",
            ExpressionTransform::NAMES.join(" or "),
            self.0
        )
    }
}

impl std::error::Error for UnknownTransform {}

impl std::str::FromStr for ExpressionTransform {
    type Err = UnknownTransform;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "log2p1" => Ok(Self::Log2p1),
            "none" => Ok(Self::None),
            other => Err(UnknownTransform(other.to_string())),
        }
    }
}

impl std::fmt::Display for ExpressionTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for ExpressionTransform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for ExpressionTransform {
    // Through `FromStr`, so a config file with a wrong value gets the same message as a flag.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Orientation of a plain matrix file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// Decide from the ids: Ensembl-like ids (`ENSG…`) or many more rows than columns → genes
    /// in rows.
    #[default]
    Auto,
    SamplesByGenes,
    GenesBySamples,
}

fn parse_cell(path: &Path, s: &str, line: u64, column: &str) -> Result<f32> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("na") || t.eq_ignore_ascii_case("nan") || t == "." {
        return Ok(f32::NAN);
    }
    let v: f32 = t.parse().map_err(|_| {
        DataError::new(ErrorKind::Value, path, format!("'{t}' is not a number"))
            .at(format!("line {line}, column '{column}'"))
    })?;
    if !v.is_finite() {
        return Err(
            DataError::new(ErrorKind::NonFinite, path, format!("'{t}' is not finite"))
                .at(format!("line {line}, column '{column}'")),
        );
    }
    Ok(v)
}

fn looks_like_gene(id: &str) -> bool {
    id.starts_with("ENSG") || id.starts_with("ENSMUSG")
}

/// Reads a plain matrix (CSV/TSV, optionally gzipped). The first column holds row ids.
pub fn read_matrix(path: &Path, orientation: Orientation) -> Result<ExpressionMatrix> {
    let text = crate::text::read_text(path)?;
    let first = text.lines().next().unwrap_or("");
    let delim = crate::text::sniff_delimiter(path, first);
    let mut rdr = crate::text::csv_reader(&text, delim, false);
    let header: Vec<String> = crate::text::trimmed_headers(&mut rdr, path)?;
    if header.len() < 2 {
        return Err(DataError::new(
            ErrorKind::Shape,
            path,
            "a matrix needs an id column and at least one value column",
        )
        .at("line 1"));
    }
    let cols: Vec<String> = header[1..].to_vec();
    let mut dup = HashSet::new();
    for c in &cols {
        if !dup.insert(c) {
            return Err(DataError::new(
                ErrorKind::Duplicate,
                path,
                format!("column '{c}' appears twice"),
            )
            .at("line 1"));
        }
    }
    let mut rows = Vec::new();
    let mut values = Vec::new();
    let mut seen = HashMap::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let id = rec.get(0).unwrap_or("").trim().to_string();
        if id.is_empty() {
            return Err(
                DataError::new(ErrorKind::Value, path, "empty row id").at(format!("line {line}"))
            );
        }
        if let Some(prev) = seen.insert(id.clone(), line) {
            return Err(DataError::new(
                ErrorKind::Duplicate,
                path,
                format!("row id '{id}' already on line {prev}"),
            )
            .at(format!("line {line}")));
        }
        for (j, c) in cols.iter().enumerate() {
            values.push(parse_cell(path, rec.get(j + 1).unwrap_or(""), line, c)?);
        }
        rows.push(id);
    }
    if rows.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the matrix has no data rows",
        ));
    }
    let genes_in_rows = match orientation {
        Orientation::SamplesByGenes => false,
        Orientation::GenesBySamples => true,
        Orientation::Auto => {
            let gene_rows = rows.iter().filter(|r| looks_like_gene(r)).count();
            let gene_cols = cols.iter().filter(|c| looks_like_gene(c)).count();
            if gene_rows * 2 > rows.len() {
                true
            } else if gene_cols * 2 > cols.len() {
                false
            } else {
                rows.len() > cols.len() * 4
            }
        }
    };
    if genes_in_rows {
        let (g, s) = (rows.len(), cols.len());
        let mut t = vec![0f32; g * s];
        for i in 0..g {
            for j in 0..s {
                t[j * g + i] = values[i * s + j];
            }
        }
        Ok(ExpressionMatrix {
            samples: cols,
            genes: rows,
            values: t,
        })
    } else {
        Ok(ExpressionMatrix {
            samples: rows,
            genes: cols,
            values,
        })
    }
}

/// Writes a samples × genes matrix as TSV (gzipped when the name ends in `.gz`).
pub fn write_matrix(path: &Path, m: &ExpressionMatrix, id_header: &str) -> Result<()> {
    let gz = path.to_string_lossy().ends_with(".gz");
    crate::atomic::write_atomic(path, |w| {
        let mut out: Box<dyn std::io::Write + '_> = if gz {
            // mtime 0 and no file name keep the bytes a function of the content alone.
            Box::new(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(w, flate2::Compression::new(6)),
            )
        } else {
            Box::new(w)
        };
        let mut line = String::with_capacity(m.genes.len() * 10);
        line.push_str(id_header);
        for g in &m.genes {
            line.push('\t');
            line.push_str(g);
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        for (i, s) in m.samples.iter().enumerate() {
            line.clear();
            line.push_str(s);
            for v in m.row(i) {
                line.push('\t');
                line.push_str(&format_value(*v));
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
        }
        out.flush()
    })
}

/// Four decimals, as GDC writes FPKM.
pub fn format_value(v: f32) -> String {
    if v.is_nan() {
        String::new()
    } else {
        format!("{v:.4}")
    }
}

/// The value columns of a GDC STAR "augmented counts" file.
pub const STAR_COLUMNS: [&str; 6] = [
    "unstranded",
    "stranded_first",
    "stranded_second",
    "tpm_unstranded",
    "fpkm_unstranded",
    "fpkm_uq_unstranded",
];

/// One gene of a GDC file.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneValue {
    /// Versioned Ensembl id as written (`ENSG00000000003.15`).
    pub gene_id: String,
    /// HUGO symbol (STAR files only).
    pub gene_name: Option<String>,
    pub value: f32,
}

/// Reads a GDC STAR "augmented counts" TSV (DR32+): comment line, 9-column header, the four `N_`
/// rows (skipped), then one row per gene. `column` is one of [`STAR_COLUMNS`].
pub fn read_gdc_star(path: &Path, column: &str) -> Result<Vec<GeneValue>> {
    let text = crate::text::read_text(path)?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#'));
    let (hline, header) = lines
        .next()
        .ok_or_else(|| DataError::new(ErrorKind::Empty, path, "file has no header"))?;
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    if cols.first() != Some(&"gene_id") {
        return Err(DataError::malformed(
            path,
            format!(
                "expected a STAR header starting with 'gene_id', found '{}'",
                cols.join("\t")
            ),
        )
        .at(format!("line {}", hline + 1)));
    }
    let vcol = cols.iter().position(|c| *c == column).ok_or_else(|| {
        DataError::new(
            ErrorKind::Missing,
            path,
            format!("no column '{column}' (have: {})", cols.join(", ")),
        )
        .at(format!("line {}", hline + 1))
    })?;
    let name_col = cols.iter().position(|c| *c == "gene_name");
    let mut out = Vec::with_capacity(61_000);
    for (i, line) in lines {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let id = f[0].trim();
        if id.starts_with("N_") {
            continue;
        }
        if f.len() != cols.len() {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                format!("row has {} fields, the header has {}", f.len(), cols.len()),
            )
            .at(format!("line {}", i + 1)));
        }
        let value = parse_cell(path, f[vcol], i as u64 + 1, column)?;
        out.push(GeneValue {
            gene_id: id.to_string(),
            gene_name: name_col
                .map(|c| f[c].trim().to_string())
                .filter(|s| !s.is_empty()),
            value,
        });
    }
    if out.is_empty() {
        return Err(DataError::new(ErrorKind::Empty, path, "no gene rows"));
    }
    Ok(out)
}

/// Reads a legacy GDC HTSeq file (`.FPKM.txt.gz`, `.FPKM-UQ.txt.gz`, `.htseq.counts.gz`):
/// headerless, two tab-separated columns; HTSeq's `__` summary rows are skipped.
pub fn read_gdc_legacy(path: &Path) -> Result<Vec<GeneValue>> {
    let text = crate::text::read_text(path)?;
    let mut out = Vec::with_capacity(61_000);
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with("__") {
            continue;
        }
        let mut f = line.split('\t');
        let (Some(id), Some(v), None) = (f.next(), f.next(), f.next()) else {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                "expected two tab-separated columns (gene id, value)",
            )
            .at(format!("line {}", i + 1)));
        };
        out.push(GeneValue {
            gene_id: id.trim().to_string(),
            gene_name: None,
            value: parse_cell(path, v, i as u64 + 1, "value")?,
        });
    }
    if out.is_empty() {
        return Err(DataError::new(ErrorKind::Empty, path, "no gene rows"));
    }
    Ok(out)
}

/// Reads one GDC per-sample file, STAR or legacy, recognised by its content.
pub fn read_gdc_file(path: &Path, star_column: &str) -> Result<Vec<GeneValue>> {
    let text_head = {
        let mut r = crate::text::open_text(path)?;
        let mut buf = vec![0u8; 256];
        let n = r.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    if text_head.starts_with('#') || text_head.starts_with("gene_id") {
        read_gdc_star(path, star_column)
    } else {
        read_gdc_legacy(path)
    }
}

/// One row of a GDC sample sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSheetRow {
    pub file_id: String,
    pub file_name: String,
    pub case_id: String,
    pub sample_id: String,
    pub sample_type: String,
    pub line: u64,
}

/// Reads a GDC sample sheet (TSV with `File ID, File Name, …, Case ID, Sample ID, Sample Type`).
/// Cells listing several ids (`A, B`) keep the first.
pub fn read_sample_sheet(path: &Path) -> Result<Vec<SampleSheetRow>> {
    let text = crate::text::read_text(path)?;
    let mut rdr = crate::text::csv_reader(&text, b'\t', false);
    let header: Vec<String> = crate::text::trimmed_headers(&mut rdr, path)?;
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            DataError::new(
                ErrorKind::Missing,
                path,
                format!("no '{name}' column in the sample sheet"),
            )
            .at("line 1")
        })
    };
    let (fid, fname, case, sample, stype) = (
        col("File ID")?,
        col("File Name")?,
        col("Case ID")?,
        col("Sample ID")?,
        col("Sample Type")?,
    );
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let first = |i: usize| {
            rec.get(i)
                .unwrap_or("")
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let row = SampleSheetRow {
            file_id: first(fid),
            file_name: first(fname),
            case_id: first(case),
            sample_id: first(sample),
            sample_type: first(stype),
            line,
        };
        if row.file_name.is_empty() || row.case_id.is_empty() {
            return Err(
                DataError::new(ErrorKind::Value, path, "empty 'File Name' or 'Case ID'")
                    .at(format!("line {line}")),
            );
        }
        out.push(row);
    }
    if out.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the sample sheet has no rows",
        ));
    }
    Ok(out)
}

/// Rank of a GDC sample type when a case has several aliquots: primary tumour first.
fn sample_type_rank(t: &str) -> u8 {
    match t {
        "Primary Tumor" => 0,
        "Additional - New Primary" => 1,
        "Recurrent Tumor" => 2,
        "Metastatic" => 3,
        "Solid Tissue Normal" => 9,
        _ => 5,
    }
}

/// Builds a cases × genes matrix from a folder of GDC files and the sample sheet that lists
/// them. Files are looked up as `dir/{File ID}/{File Name}` (gdc-client layout) or
/// `dir/{File Name}`. Per case, the primary-tumour sample is kept (ties: the first listed).
/// Gene ids are compared without their version suffix; every file must list the same genes.
pub fn read_gdc_folder(
    dir: &Path,
    sheet_path: &Path,
    star_column: &str,
) -> Result<(ExpressionMatrix, Vec<String>)> {
    let sheet = read_sample_sheet(sheet_path)?;
    let mut chosen: BTreeMap<String, &SampleSheetRow> = BTreeMap::new();
    let mut notes = Vec::new();
    for row in &sheet {
        let better = match chosen.get(&row.case_id) {
            None => true,
            Some(prev) => sample_type_rank(&row.sample_type) < sample_type_rank(&prev.sample_type),
        };
        if better {
            if let Some(prev) = chosen.get(&row.case_id) {
                notes.push(format!(
                    "case {}: using {} ({}) rather than {}",
                    row.case_id, row.file_name, row.sample_type, prev.file_name
                ));
            }
            chosen.insert(row.case_id.clone(), row);
        }
    }
    let mut genes: Option<Vec<String>> = None;
    let mut samples = Vec::new();
    let mut values = Vec::new();
    for (case, row) in &chosen {
        let a = dir.join(&row.file_id).join(&row.file_name);
        let b = dir.join(&row.file_name);
        let file = if a.is_file() {
            a
        } else if b.is_file() {
            b
        } else {
            notes.push(format!(
                "case {case}: file {} listed on line {} of the sample sheet is not in {}",
                row.file_name,
                row.line,
                dir.display()
            ));
            continue;
        };
        let gv = read_gdc_file(&file, star_column)?;
        let ids: Vec<String> = gv
            .iter()
            .map(|g| strip_version(&g.gene_id).to_string())
            .collect();
        match &genes {
            None => genes = Some(ids),
            Some(g) => {
                if *g != ids {
                    let pos = g
                        .iter()
                        .zip(&ids)
                        .position(|(a, b)| a != b)
                        .unwrap_or(g.len().min(ids.len()));
                    return Err(DataError::new(
                        ErrorKind::Mismatch,
                        &file,
                        format!(
                            "gene list differs from the first file: {} genes vs {}, first difference at row {} ('{}' vs '{}')",
                            ids.len(),
                            g.len(),
                            pos + 1,
                            ids.get(pos).map(String::as_str).unwrap_or("<end>"),
                            g.get(pos).map(String::as_str).unwrap_or("<end>")
                        ),
                    ));
                }
            }
        }
        values.extend(gv.iter().map(|g| g.value));
        samples.push(case.clone());
    }
    let genes = genes.ok_or_else(|| {
        DataError::new(
            ErrorKind::Empty,
            sheet_path,
            format!("none of the listed files is in {}", dir.display()),
        )
    })?;
    Ok((
        ExpressionMatrix {
            samples,
            genes,
            values,
        },
        notes,
    ))
}

/// `ENSG00000000003.15` → `ENSG00000000003` (PAR_Y copies keep their suffix).
pub fn strip_version(id: &str) -> &str {
    if id.ends_with("_PAR_Y") {
        return id;
    }
    match id.rfind('.') {
        Some(p) if id[p + 1..].chars().all(|c| c.is_ascii_digit()) => &id[..p],
        _ => id,
    }
}

/// Data type of a column in an MCAT/PORPOISE wide table, from its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OmicType {
    Rnaseq,
    Cnv,
    Mut,
}

impl OmicType {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Rnaseq => "_rnaseq",
            Self::Cnv => "_cnv",
            Self::Mut => "_mut",
        }
    }
}

/// PORPOISE's explicit metadata list (MCAT's index arithmetic drops the last gene; we do not).
const MCAT_METADATA: [&str; 12] = [
    "disc_label",
    "Unnamed: 0",
    "",
    "case_id",
    "label",
    "slide_id",
    "age",
    "site",
    "survival_months",
    "censorship",
    "is_female",
    "oncotree_code",
];

/// Reads an MCAT/PORPOISE `tcga_*_all_clean.csv(.zip)` table: one row per slide, genomic columns
/// typed by suffix. Returns one row per case (the first, as MCAT does) with the columns of the
/// requested types, keeping their suffixes as gene names.
pub fn read_mcat_table(path: &Path, types: &[OmicType]) -> Result<ExpressionMatrix> {
    let text = if path
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".zip")
    {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| DataError::malformed(path, format!("not a zip archive: {e}")))?;
        let name = zip
            .file_names()
            .find(|n| n.ends_with(".csv") && !n.starts_with("__MACOSX"))
            .map(str::to_string)
            .ok_or_else(|| DataError::new(ErrorKind::Missing, path, "the zip holds no .csv"))?;
        let mut s = String::new();
        zip.by_name(&name)
            .map_err(|e| DataError::malformed(path, e.to_string()))?
            .read_to_string(&mut s)
            .map_err(|e| DataError::malformed(path, format!("{name}: {e}")))?;
        s
    } else {
        crate::text::read_text(path)?
    };
    let mut rdr = crate::text::csv_reader(&text, b',', false);
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let case_col = header.iter().position(|h| h == "case_id").ok_or_else(|| {
        DataError::new(ErrorKind::Missing, path, "no 'case_id' column").at("line 1")
    })?;
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| !MCAT_METADATA.contains(&h.as_str()))
        .filter(|(_, h)| types.iter().any(|t| h.ends_with(t.suffix())))
        .map(|(i, _)| i)
        .collect();
    if keep.is_empty() {
        return Err(DataError::new(
            ErrorKind::Missing,
            path,
            format!(
                "no column ends in {:?}",
                types.iter().map(|t| t.suffix()).collect::<Vec<_>>()
            ),
        )
        .at("line 1"));
    }
    let genes: Vec<String> = keep.iter().map(|&i| header[i].clone()).collect();
    let mut samples = Vec::new();
    let mut values = Vec::new();
    let mut seen = HashSet::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let case = rec.get(case_col).unwrap_or("").trim().to_string();
        if !seen.insert(case.clone()) {
            continue;
        }
        for (&i, g) in keep.iter().zip(&genes) {
            values.push(parse_cell(path, rec.get(i).unwrap_or(""), line, g)?);
        }
        samples.push(case);
    }
    if samples.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the table has no rows",
        ));
    }
    Ok(ExpressionMatrix {
        samples,
        genes,
        values,
    })
}

#[cfg(test)]
mod transform_tests {
    use super::ExpressionTransform;

    #[test]
    fn log2p1_clamps_negatives_and_none_passes_through() {
        let t = ExpressionTransform::Log2p1;
        assert_eq!(t.apply(0.0), 0.0);
        assert_eq!(t.apply(1.0), 1.0);
        assert_eq!(t.apply(3.0), 2.0);
        assert_eq!(t.apply(-5.0), 0.0);
        assert_eq!(t.apply_row(&[7.0, -1.0]), vec![3.0, 0.0]);
        assert_eq!(ExpressionTransform::None.apply(-5.0), -5.0);
        assert_eq!(
            ExpressionTransform::None.apply_row(&[1.5, -2.0]),
            vec![1.5, -2.0]
        );
    }

    #[test]
    fn parses_its_names_and_names_the_bad_value() {
        for name in ExpressionTransform::NAMES {
            let t: ExpressionTransform = name.parse().unwrap();
            assert_eq!(t.name(), name);
            assert_eq!(t.to_string(), name);
        }
        let e = "log"
            .parse::<ExpressionTransform>()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "transform must be log2p1 or none, not 'log'");
    }

    #[test]
    fn serde_uses_the_names_and_rejects_others() {
        let text = serde_json::to_string(&ExpressionTransform::Log2p1).unwrap();
        assert_eq!(text, "\"log2p1\"");
        let back: ExpressionTransform = serde_json::from_str("\"none\"").unwrap();
        assert_eq!(back, ExpressionTransform::None);
        let e = serde_json::from_str::<ExpressionTransform>("\"LOG2P1\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not 'LOG2P1'") && e.contains("log2p1 or none"),
            "{e}"
        );
    }
}
