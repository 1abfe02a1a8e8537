//! Which files the server may hand out: only those under the folders it was given. A request
//! path is refused before it touches the disk when it is absolute or has `..` (or any component
//! other than a plain name); what remains is resolved (symbolic links followed) and must still
//! lie under the folder it was joined to.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Absolute, `..`, or a link out of the folder: 403.
    Forbidden,
    /// Not there: 404.
    NotFound,
}

/// Whether a request path is only plain names (no root, no `..`, no `.`, no backslash or NUL).
pub fn is_plain(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\\')
        && !rel.contains('\0')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// `rel` (a request path, already percent-decoded) under `root`, or why not.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, Refusal> {
    if !is_plain(rel) {
        return Err(Refusal::Forbidden);
    }
    let p = Path::new(rel);
    let root = root.canonicalize().map_err(|_| Refusal::NotFound)?;
    let full = root.join(p).canonicalize().map_err(|_| Refusal::NotFound)?;
    if !full.starts_with(&root) {
        return Err(Refusal::Forbidden);
    }
    if !full.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok(full)
}

/// The content type of a file the server hands out, by extension.
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "json" | "map" => "application/json",
        "csv" => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    }
}
