//! How a message lists what is wrong: the first few items, then how many there are in all.

const LIST_MAX: usize = 10;

/// The first [`LIST_MAX`] items, comma-separated, and the count when there are more.
pub(crate) fn list_some(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LIST_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_MAX {
        s.push_str(&format!(", … ({} in all)", items.len()));
    }
    s
}
