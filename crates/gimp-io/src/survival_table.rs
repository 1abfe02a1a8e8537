//! A table of survival outcomes and predicted risks, one patient per row (CSV or TSV, optionally
//! gzipped): `time`, `event` (1 = event, 0 = censored) and, where scored, `risk` (higher = worse);
//! any other column is ignored. What `gimp-rs survival metrics` reads.

use crate::error::{csv_error, csv_line, DataError, ErrorKind, Result};
use std::path::Path;

/// The rows of a survival table, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SurvivalTable {
    pub time: Vec<f64>,
    pub event: Vec<bool>,
    /// Empty when the table has no risk column and none was required.
    pub risk: Vec<f64>,
}

/// Reads `path`; `need_risk` makes a missing `risk` column an error. Errors name the line and
/// column: a time that is not a number ≥ 0, an event other than 0/1, a risk that is not a finite
/// number, an empty table.
pub fn read(path: &Path, need_risk: bool) -> Result<SurvivalTable> {
    let text = crate::text::read_text(path)?;
    let first = text.lines().next().unwrap_or("");
    let delim = crate::text::sniff_delimiter(path, first);
    let mut rdr = crate::text::csv_reader(&text, delim, false);
    let headers = rdr.headers().map_err(|e| csv_error(path, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let missing = |name: &str| {
        DataError::new(
            ErrorKind::Missing,
            path,
            format!(
                "no '{name}' column (header: {})",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        )
        .at("line 1")
    };
    let time_col = col("time").ok_or_else(|| missing("time"))?;
    let event_col = col("event").ok_or_else(|| missing("event"))?;
    let risk_col = match col("risk") {
        Some(c) => Some(c),
        None if need_risk => return Err(missing("risk")),
        None => None,
    };
    let mut table = SurvivalTable::default();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let cell = |i: usize| rec.get(i).unwrap_or("").trim();
        let bad = |column: &str, value: &str, expected: &str| {
            DataError::new(
                ErrorKind::Value,
                path,
                format!("column '{column}': '{value}' is not {expected}"),
            )
            .at(csv_line(&rec))
        };
        let time = cell(time_col)
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| bad("time", cell(time_col), "a number ≥ 0"))?;
        let event = match cell(event_col).parse::<f64>() {
            Ok(0.0) => false,
            Ok(1.0) => true,
            _ => return Err(bad("event", cell(event_col), "0 or 1 (1 = event)")),
        };
        if let Some(c) = risk_col {
            let risk = cell(c)
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite())
                .ok_or_else(|| bad("risk", cell(c), "a finite number"))?;
            table.risk.push(risk);
        }
        table.time.push(time);
        table.event.push(event);
    }
    if table.time.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the table has no rows",
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv");
        std::fs::write(&p, "id,time,event,risk\na,1.5,1,0.3\nb,2,0.0,-1\n").unwrap();
        let t = read(&p, true).unwrap();
        assert_eq!(t.time, vec![1.5, 2.0]);
        assert_eq!(t.event, vec![true, false]);
        assert_eq!(t.risk, vec![0.3, -1.0]);
        for (row, line, what) in [
            ("c,-1,1,0", "line 3", "'time'"),
            ("c,1,2,0", "line 3", "'event'"),
            ("c,1,1,nan", "line 3", "'risk'"),
            ("c,,1,0", "line 3", "'time'"),
        ] {
            std::fs::write(&p, format!("id,time,event,risk\na,1,1,0\n{row}\n")).unwrap();
            let e = read(&p, true).unwrap_err();
            assert_eq!(e.location.as_deref(), Some(line), "{e}");
            assert!(e.message.contains(what), "{e}");
        }
        std::fs::write(&p, "time,event\n1,1\n").unwrap();
        assert_eq!(read(&p, false).unwrap().risk, Vec::<f64>::new());
        assert!(read(&p, true)
            .unwrap_err()
            .message
            .contains("no 'risk' column"));
    }
}
