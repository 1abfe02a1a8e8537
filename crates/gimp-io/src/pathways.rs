//! Pathway-composition tables: which genes make up each biological pathway, for the models that
//! turn expression into one token per pathway (SurvPath, MMP). Both layouts of SurvPath's and
//! MMP's repositories are read (mahmoodlab/SurvPath `datasets_csv/`):
//!
//! * **signatures** (`metadata/{hallmarks,combine,xena}_signatures.csv`, MMP's
//!   `hallmarks_signatures.csv`): one column per pathway, the header its name, the cells below its
//!   gene symbols, padded with blanks;
//! * **compositions** (`pathway_compositions/{hallmarks,combine,xena}_comps.csv`): one row per
//!   gene, its symbol in the first column (whose header is empty: pandas' index), then one 0/1
//!   column per pathway.
//!
//! The layout is told by the first header cell: empty for compositions. [`PathwayTable::groups`]
//! then restricts each pathway to a cohort's genes as SurvPath's `_setup_survpath` does
//! (duplicates dropped, genes sorted by name).

use crate::error::{csv_error, csv_line, DataError, ErrorKind, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// The pathways of a table, in its column order, each with its gene symbols (no duplicates, in
/// the table's order).
#[derive(Debug, Clone, PartialEq)]
pub struct PathwayTable {
    pub pathways: Vec<(String, Vec<String>)>,
}

/// A pathway restricted to a cohort: its name and the positions of its genes in the cohort's
/// gene list, ordered by gene symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct PathwayGroup {
    pub name: String,
    pub genes: Vec<u32>,
}

impl PathwayTable {
    /// Each pathway's genes that the cohort has (`genes`: the cohort's symbols, in expression
    /// order), sorted by symbol as the reference sorts them. Pathways with none of the cohort's
    /// genes are left out (the reference would give them an SNN on zero inputs, a constant
    /// token) and returned by name as the second value.
    pub fn groups(&self, genes: &[String]) -> (Vec<PathwayGroup>, Vec<String>) {
        let position: HashMap<&str, u32> = genes
            .iter()
            .enumerate()
            .map(|(i, g)| (g.as_str(), i as u32))
            .collect();
        let mut kept = Vec::new();
        let mut empty = Vec::new();
        for (name, members) in &self.pathways {
            let present: BTreeSet<&str> = members
                .iter()
                .map(String::as_str)
                .filter(|g| position.contains_key(g))
                .collect();
            if present.is_empty() {
                empty.push(name.clone());
            } else {
                kept.push(PathwayGroup {
                    name: name.clone(),
                    genes: present.iter().map(|g| position[g]).collect(),
                });
            }
        }
        (kept, empty)
    }
}

/// Reads a pathway table in either layout; errors name the file, the line and the column.
pub fn read_pathways(path: &Path) -> Result<PathwayTable> {
    let text = crate::text::read_text(path)?;
    let mut rdr = crate::text::csv_reader(&text, b',', true);
    let header = crate::text::trimmed_headers(&mut rdr, path)?;
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(DataError::new(ErrorKind::Empty, path, "the table has no header").at("line 1"));
    }
    let compositions = header[0].is_empty();
    let names: Vec<String> = if compositions {
        header[1..].to_vec()
    } else {
        header.clone()
    };
    let first = usize::from(compositions);
    let mut seen = BTreeSet::new();
    for (j, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(DataError::new(
                ErrorKind::Missing,
                path,
                format!("column {} has no pathway name", j + first + 1),
            )
            .at("line 1"));
        }
        if !seen.insert(n.as_str()) {
            return Err(DataError::new(
                ErrorKind::Duplicate,
                path,
                format!("pathway '{n}' names two columns"),
            )
            .at(format!("line 1, column {}", j + first + 1)));
        }
    }
    let mut pathways: Vec<(String, Vec<String>)> =
        names.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut genes_seen = BTreeSet::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        if rec.len() > header.len() {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                format!("row has {} cells, the header {}", rec.len(), header.len()),
            )
            .at(csv_line(&rec)));
        }
        if compositions {
            let gene = rec.get(0).unwrap_or("").trim();
            if gene.is_empty() {
                if rec.iter().all(|c| c.trim().is_empty()) {
                    continue;
                }
                return Err(
                    DataError::new(ErrorKind::Missing, path, "a row has no gene symbol")
                        .at(format!("{}, column 1", csv_line(&rec))),
                );
            }
            if !genes_seen.insert(gene.to_string()) {
                return Err(DataError::new(
                    ErrorKind::Duplicate,
                    path,
                    format!("gene '{gene}' has two rows"),
                )
                .at(format!("{}, column 1", csv_line(&rec))));
            }
            for (j, (name, members)) in pathways.iter_mut().enumerate() {
                let cell = rec.get(j + 1).unwrap_or("").trim();
                let value = cell.parse::<f64>();
                if value == Ok(1.0) {
                    members.push(gene.to_string());
                } else if !(cell.is_empty() || value == Ok(0.0)) {
                    return Err(DataError::new(
                        ErrorKind::Value,
                        path,
                        format!("'{cell}' for gene '{gene}' in pathway '{name}': expected 0 or 1"),
                    )
                    .at(format!("{}, column {}", csv_line(&rec), j + 2)));
                }
            }
        } else {
            for (j, cell) in rec.iter().enumerate() {
                let c = cell.trim();
                if !c.is_empty() && !pathways[j].1.iter().any(|g| g == c) {
                    pathways[j].1.push(c.to_string());
                }
            }
        }
    }
    if pathways.iter().all(|(_, g)| g.is_empty()) {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "no pathway has a gene",
        ));
    }
    Ok(PathwayTable { pathways })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn both_layouts_give_the_same_groups() {
        let (_d1, sig) = table(
            "hallmarks_signatures.csv",
            "P_A,P_B\nTP53,MYC\nEGFR,TP53\nTP53,\n",
        );
        let (_d2, comps) = table(
            "hallmarks_comps.csv",
            ",P_A,P_B\nTP53,1,1\nMYC,0,1\nEGFR,1,0\n",
        );
        let a = read_pathways(&sig).unwrap();
        let b = read_pathways(&comps).unwrap();
        assert_eq!(
            a.pathways[0],
            ("P_A".into(), vec!["TP53".into(), "EGFR".into()])
        );
        let genes: Vec<String> = ["MYC", "TP53", "KRAS", "EGFR"].map(String::from).to_vec();
        let (ga, ea) = a.groups(&genes);
        let (gb, eb) = b.groups(&genes);
        assert_eq!(ga, gb);
        assert!(ea.is_empty() && eb.is_empty());
        // Sorted by symbol: EGFR (3) before TP53 (1); MYC (0) before TP53 (1).
        assert_eq!(ga[0].genes, vec![3, 1]);
        assert_eq!(ga[1].genes, vec![0, 1]);
        let (g, empty) = a.groups(&["KRAS".to_string(), "MYC".to_string()]);
        assert_eq!(g.len(), 1);
        assert_eq!(empty, vec!["P_A".to_string()]);
    }

    #[test]
    fn bad_tables_name_file_line_and_column() {
        let (_d, p) = table("c.csv", ",P_A,P_B\nTP53,1,0\nMYC,yes,1\n");
        let e = read_pathways(&p).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Value);
        assert_eq!(e.location.as_deref(), Some("line 3, column 2"));
        assert!(
            e.to_string().contains("c.csv") && e.to_string().contains("P_A"),
            "{e}"
        );
        let (_d, p) = table("d.csv", "P_A,P_A\nTP53,MYC\n");
        assert_eq!(read_pathways(&p).unwrap_err().kind, ErrorKind::Duplicate);
        let (_d, p) = table("e.csv", ",P_A\nTP53,1\nTP53,0\n");
        let e = read_pathways(&p).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Duplicate);
        assert_eq!(e.location.as_deref(), Some("line 3, column 1"));
        let (_d, p) = table("f.csv", "P_A,P_B\n,\n");
        assert_eq!(read_pathways(&p).unwrap_err().kind, ErrorKind::Empty);
        let (_d, p) = table("g.csv", "P_A\nTP53,MYC\n");
        assert_eq!(read_pathways(&p).unwrap_err().kind, ErrorKind::Shape);
        let missing = read_pathways(Path::new("/nonexistent/pathways.csv")).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::Io);
    }
}
