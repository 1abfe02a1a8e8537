//! `docs/ARCHITECTURE.md`'s crate table is true to the manifests: every crate of `crates/` and
//! the Python package has a row, the row's "depends on" column names exactly the `gimp-*`
//! entries of its `Cargo.toml` (`[dependencies]`; those only its tests use in parentheses,
//! "(synth for its tests)"), and every crate depends only on crates listed above it — the
//! "only reaches downward" rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

type Names = BTreeSet<String>;

const TABLE_HEADER: &str = "| crate | what it owns | depends on |";
const TESTS_SUFFIX: &str = " for its tests)";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One row of the crate table.
#[derive(Debug)]
struct Row {
    /// The package name (`gimp-io`; `gimp-py` for `python/`).
    package: String,
    /// The manifest, relative to the repository root.
    manifest: PathBuf,
    /// 1-based line in the document, for messages.
    line: usize,
    deps: Names,
    test_deps: Names,
}

/// The `gimp-*` dependencies a manifest declares.
#[derive(Debug, Default)]
struct Declared {
    deps: Names,
    /// `[dev-dependencies]` that are not also `[dependencies]`.
    test_deps: Names,
}

/// The text between the first pair of backticks of `cell`, and what follows it.
fn first_code(cell: &str) -> Option<(&str, &str)> {
    let (_, rest) = cell.split_once('`')?;
    rest.split_once('`')
}

/// `io, cohort (synth for its tests)` → package names; `all` is every package above the row.
fn parse_depends(cell: &str, above: &[Row], line: usize) -> Result<(Names, Names), String> {
    let (main, tests) = match cell.strip_suffix(TESTS_SUFFIX) {
        Some(head) => {
            let (main, tests) = head.rsplit_once(" (").ok_or_else(|| {
                format!("line {line}: \"{cell}\" ends in \"{TESTS_SUFFIX}\" without a \"(\"")
            })?;
            (main.trim(), Some(tests))
        }
        None => (cell.trim(), None),
    };
    let list = |s: &str| -> Result<Names, String> {
        s.split(',')
            .map(|name| {
                let name = name.trim();
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    Err(format!(
                        "line {line}: \"{name}\" in \"{cell}\" is not a crate's short name \
                         (expected e.g. `io` for gimp-io, `—` for none or `all`)"
                    ))
                } else {
                    Ok(format!("gimp-{name}"))
                }
            })
            .collect()
    };
    let deps = match main {
        "—" => Names::new(),
        "all" => above.iter().map(|r| r.package.clone()).collect(),
        _ => list(main)?,
    };
    let test_deps = tests.map(list).transpose()?.unwrap_or_default();
    Ok((deps, test_deps))
}

/// The rows of the table under [`TABLE_HEADER`].
fn parse_table(doc: &str) -> Result<Vec<Row>, String> {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == TABLE_HEADER)
        .ok_or_else(|| format!("no table headed \"{TABLE_HEADER}\""))?;
    let mut rows: Vec<Row> = Vec::new();
    // Skip the header and the `|---|` line; the table ends at the first line not a row.
    for (i, text) in lines.iter().enumerate().skip(start + 2) {
        let line = i + 1;
        let Some(inner) = text
            .trim()
            .strip_prefix('|')
            .and_then(|t| t.strip_suffix('|'))
        else {
            break;
        };
        let cells: Vec<&str> = inner.split('|').map(str::trim).collect();
        let [name_cell, _owns, depends] = cells[..] else {
            return Err(format!("line {line}: {} cells, expected 3", cells.len()));
        };
        let (first, rest) = first_code(name_cell)
            .ok_or_else(|| format!("line {line}: no `crate` name in \"{name_cell}\""))?;
        let (package, manifest) = match first.strip_suffix('/') {
            // A folder outside `crates/` (`python/`): its package name is the next code span.
            Some(folder) => {
                let (package, _) = first_code(rest).ok_or_else(|| {
                    format!("line {line}: `{first}` is not followed by its package name in `…`")
                })?;
                (package.to_string(), Path::new(folder).join("Cargo.toml"))
            }
            None => (
                first.to_string(),
                Path::new("crates").join(first).join("Cargo.toml"),
            ),
        };
        let (deps, test_deps) = parse_depends(depends, &rows, line)?;
        rows.push(Row {
            package,
            manifest,
            line,
            deps,
            test_deps,
        });
    }
    if rows.is_empty() {
        return Err(format!("the table \"{TABLE_HEADER}\" has no rows"));
    }
    Ok(rows)
}

/// The package name and `gimp-*` dependencies of a manifest.
fn parse_manifest(text: &str) -> Result<(String, Declared), String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or("no [package] name")?
        .to_string();
    // A renamed dependency (`io = { package = "gimp-io", … }`) counts by its package.
    let gimp = |section: Option<&toml::Value>| -> Names {
        section
            .and_then(|s| s.as_table())
            .into_iter()
            .flatten()
            .map(|(key, spec)| {
                spec.get("package")
                    .and_then(|p| p.as_str())
                    .unwrap_or(key)
                    .to_string()
            })
            .filter(|name| name.starts_with("gimp-"))
            .collect()
    };
    let mut deps = gimp(doc.get("dependencies"));
    let mut dev = gimp(doc.get("dev-dependencies"));
    // `[target.'cfg(…)'.dependencies]` count as the crate's own.
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for spec in targets.values() {
            deps.extend(gimp(spec.get("dependencies")));
            dev.extend(gimp(spec.get("dev-dependencies")));
        }
    }
    let test_deps = dev.difference(&deps).cloned().collect();
    Ok((package, Declared { deps, test_deps }))
}

fn short(names: &Names) -> String {
    if names.is_empty() {
        return "nothing".into();
    }
    let v: Vec<&str> = names
        .iter()
        .map(|n| n.strip_prefix("gimp-").unwrap_or(n))
        .collect();
    v.join(", ")
}

/// Every disagreement between the table and the manifests, one message each.
fn disagreements(rows: &[Row], declared: &[Declared]) -> Vec<String> {
    let mut errors = Vec::new();
    for (row, cargo) in rows.iter().zip(declared) {
        let who = format!(
            "{} ({}, docs/ARCHITECTURE.md line {})",
            row.package,
            row.manifest.display(),
            row.line
        );
        for (what, table, manifest) in [
            ("[dependencies]", &row.deps, &cargo.deps),
            ("[dev-dependencies] only", &row.test_deps, &cargo.test_deps),
        ] {
            let missing: Names = manifest.difference(table).cloned().collect();
            let extra: Names = table.difference(manifest).cloned().collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "{who}: Cargo.toml {what} has {} but the table does not list it",
                    short(&missing)
                ));
            }
            if !extra.is_empty() {
                errors.push(format!(
                    "{who}: the table lists {} but Cargo.toml {what} does not have it",
                    short(&extra)
                ));
            }
        }
        let position = |p: &str| rows.iter().position(|r| r.package == p);
        let here = position(&row.package).unwrap_or(usize::MAX);
        for dep in cargo.deps.iter().chain(&cargo.test_deps) {
            match position(dep) {
                None => errors.push(format!("{who}: depends on {dep}, which has no row")),
                Some(at) if at >= here => errors.push(format!(
                    "{who}: depends on {dep}, listed at or below it; a crate may only depend on \
                     crates above it in the table"
                )),
                Some(_) => {}
            }
        }
    }
    errors
}

#[test]
fn the_crate_table_matches_every_manifest() {
    let root = root();
    let doc_path = root.join("docs/ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    let rows = parse_table(&doc).unwrap_or_else(|e| panic!("docs/ARCHITECTURE.md: {e}"));

    let mut errors = Vec::new();
    let mut declared = Vec::new();
    for row in &rows {
        let path = root.join(&row.manifest);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} (row of line {}): {e}", path.display(), row.line));
        let (package, deps) =
            parse_manifest(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if package != row.package {
            errors.push(format!(
                "docs/ARCHITECTURE.md line {}: names {}, but {} is package {package}",
                row.line,
                row.package,
                row.manifest.display()
            ));
        }
        declared.push(deps);
    }

    // Every crate of the workspace's folder has a row, and every row is a different crate.
    let listed: BTreeSet<PathBuf> = rows.iter().map(|r| r.manifest.clone()).collect();
    if listed.len() != rows.len() {
        errors.push("docs/ARCHITECTURE.md: a crate has two rows".into());
    }
    for entry in std::fs::read_dir(root.join("crates")).expect("read crates/") {
        let dir = entry.expect("read crates/").path();
        let manifest = Path::new("crates")
            .join(dir.file_name().expect("a folder name"))
            .join("Cargo.toml");
        if root.join(&manifest).is_file() && !listed.contains(&manifest) {
            errors.push(format!(
                "{}: no row in docs/ARCHITECTURE.md's crate table",
                manifest.display()
            ));
        }
    }
    if !listed.contains(Path::new("python/Cargo.toml")) {
        errors.push("python/Cargo.toml: no row in docs/ARCHITECTURE.md's crate table".into());
    }

    errors.extend(disagreements(&rows, &declared));
    assert!(
        errors.is_empty(),
        "docs/ARCHITECTURE.md and the manifests disagree:\n  {}",
        errors.join("\n  ")
    );
}

/// The check itself: each kind of disagreement is found and named.
#[test]
fn each_disagreement_is_reported() {
    let doc = "intro\n\n| crate | what it owns | depends on |\n|---|---|---|\n\
               | `gimp-a` | a | — |\n\
               | `gimp-b` | b | a |\n\
               | `gimp-c` | c | a (b for its tests) |\n\
               | `tools/` (`gimp-t`) | t | all |\n\nafter\n";
    let rows = parse_table(doc).unwrap();
    let packages: Vec<&str> = rows.iter().map(|r| r.package.as_str()).collect();
    assert_eq!(packages, ["gimp-a", "gimp-b", "gimp-c", "gimp-t"]);
    assert_eq!(rows[3].manifest, Path::new("tools/Cargo.toml"));
    assert_eq!(rows[2].line, 7);
    assert_eq!(short(&rows[2].test_deps), "b");
    assert_eq!(short(&rows[3].deps), "a, b, c");

    let manifest = |deps: &str, dev: &str| {
        let text = format!(
            "[package]\nname = \"x\"\n[dependencies]\nserde = \"1\"\n{deps}\n\
             [dev-dependencies]\n{dev}\n"
        );
        parse_manifest(&text).unwrap().1
    };
    let agreeing = [
        manifest("", ""),
        manifest("gimp-a.workspace = true", ""),
        manifest("gimp-a.workspace = true", "gimp-b = { path = \"../b\" }"),
        manifest(
            "a = { package = \"gimp-a\", path = \"..\" }\ngimp-b = \"0.1\"\ngimp-c.workspace = true",
            "gimp-a.workspace = true",
        ),
    ];
    assert_eq!(disagreements(&rows, &agreeing), Vec::<String>::new());

    let wrong = [
        manifest("", "gimp-c.workspace = true"),
        manifest("", ""),
        manifest("gimp-a.workspace = true\ngimp-b.workspace = true", ""),
        manifest("gimp-a.workspace = true\ngimp-z.workspace = true", ""),
    ];
    let errors = disagreements(&rows, &wrong);
    let has = |prefix: &str, text: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(prefix) && e.contains(text)),
            "no \"{prefix}…{text}\" in {errors:#?}"
        )
    };
    has(
        "gimp-a ",
        "[dev-dependencies] only has c but the table does not list it",
    );
    has("gimp-a ", "depends on gimp-c, listed at or below it");
    has(
        "gimp-b ",
        "the table lists a but Cargo.toml [dependencies] does not have it",
    );
    has(
        "gimp-c ",
        "Cargo.toml [dependencies] has b but the table does not list it",
    );
    has(
        "gimp-c ",
        "the table lists b but Cargo.toml [dev-dependencies] only does not have it",
    );
    has(
        "gimp-t ",
        "the table lists b, c but Cargo.toml [dependencies] does not have it",
    );
    has(
        "gimp-t ",
        "Cargo.toml [dependencies] has z but the table does not list it",
    );
    has("gimp-t ", "depends on gimp-z, which has no row");
    assert_eq!(errors.len(), 8, "{errors:#?}");

    let bad = "| crate | what it owns | depends on |\n|---|---|---|\n| `x` | y | I/O |\n";
    assert!(parse_table(bad).unwrap_err().contains("\"I/O\""));
}
