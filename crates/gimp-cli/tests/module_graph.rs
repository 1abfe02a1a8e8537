//! No two modules of a crate import each other, through any chain: inside every crate the
//! modules reach only downward, as the crates do (`docs/ARCHITECTURE.md`). A module is a file
//! of `src/` or a folder with its `mod.rs`; what it imports is every `crate::name` outside
//! comments and its `#[cfg(test)]` part.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The names a module's code reaches as `crate::name` (also in `crate::{a, b::c}`).
fn reached(text: &str) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    for part in code.split("crate::").skip(1) {
        if let Some(group) = part.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                names.insert(name.to_string());
            }
        } else {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The module graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> Graph {
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let p = e.path();
        let (name, files) = if p.is_dir() {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                rust_files(&p),
            )
        } else if p.extension().is_some_and(|x| x == "rs") {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                vec![p.clone()],
            )
        } else {
            continue;
        };
        if name == "lib" || name == "main" {
            continue;
        }
        let text = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        modules.entry(name).or_default().push_str(&text);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(m, text)| {
            let to = reached(text)
                .into_iter()
                .filter(|r| r != m && names.contains(r))
                .collect();
            (m.clone(), to)
        })
        .collect()
}

/// A chain of imports that comes back to where it started, if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|start| visit(g, start, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut circles = Vec::new();
    let mut seen = 0;
    for e in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = e.path().join("src");
        if !src.is_dir() {
            continue;
        }
        seen += 1;
        if let Some(c) = cycle(&graph(&src)) {
            circles.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                c.join(" → ")
            ));
        }
    }
    assert!(seen >= 14, "found {seen} crates");
    assert!(
        circles.is_empty(),
        "modules that import each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write(
        "a.rs",
        "use crate::b::Thing;\n// crate::c in a comment does not count\n",
    );
    write("b.rs", "use crate::{c::Other, std_like};\n");
    write(
        "c.rs",
        "fn f() {}\n#[cfg(test)]\nmod tests { use crate::a::X; }\n",
    );
    assert_eq!(
        cycle(&graph(d.path())),
        None,
        "tests and comments are not imports"
    );
    write("c.rs", "fn f(_: crate::a::X) {}\n");
    let c = cycle(&graph(d.path())).unwrap();
    assert_eq!(c, ["a", "b", "c", "a"]);
}
