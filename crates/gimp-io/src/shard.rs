//! Splitting a list of work across machines: `i/n` shards, or a Slurm array job's share. Slide
//! patching, feature extraction and experiments use it, so every machine of a sharded run takes
//! the same rule.

use std::str::FromStr;

/// Share `index` of `count` of a list of work (slides, experiment runs): the items at positions k
/// with k mod count = index, so the shards are disjoint, cover the list, and differ in size by at
/// most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: usize,
    count: usize,
}

/// A shard that cannot be parsed or is out of range; the message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("'{0}': expected I/N, e.g. 0/4")]
    Syntax(String),
    #[error("'{0}': {1}")]
    Number(String, std::num::ParseIntError),
    #[error("'{0}': need 0 ≤ I < N")]
    Range(String),
    #[error("{0}: '{1}' is not a whole number")]
    SlurmVariable(&'static str, String),
    /// The shard computed from a Slurm array's variables is not valid.
    #[error("the Slurm array {0}")]
    SlurmArray(Box<ShardError>),
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::Range(format!("{index}/{count}")));
        }
        Ok(Self { index, count })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// A Slurm array job's share: task `SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN` (min 0 when
    /// unset, as arrays usually start at 0) of `SLURM_ARRAY_TASK_COUNT`. `None` outside an array
    /// job (either of ID and COUNT unset). `var` reads a variable, so tests need no environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ShardError> {
        let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT"))
        else {
            return Ok(None);
        };
        let min: usize = var("SLURM_ARRAY_TASK_MIN")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let id: usize = id
            .parse()
            .map_err(|_| ShardError::SlurmVariable("SLURM_ARRAY_TASK_ID", id.clone()))?;
        format!("{}/{count}", id.saturating_sub(min))
            .parse()
            .map(Some)
            .map_err(|e| ShardError::SlurmArray(Box::new(e)))
    }

    /// [`Shard::from_vars`] on this process's environment.
    pub fn from_env() -> Result<Option<Self>, ShardError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Whether position `k` of the list is in this shard.
    pub fn contains(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// This shard's items, in their order.
    pub fn select<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(k, _)| self.contains(*k))
            .map(|(_, t)| t)
            .collect()
    }
}

/// `i/n`, 0-based: `0/4` is the first of four shards.
impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| ShardError::Syntax(s.to_string()))?;
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|e| ShardError::Number(s.to_string(), e))
        };
        let (i, n) = (num(i)?, num(n)?);
        Self::new(i, n).map_err(|_| ShardError::Range(s.to_string()))
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_item_is_in_exactly_one_shard() {
        for n in 1..=7 {
            for len in [0, 1, 5, 13, 28] {
                let items: Vec<usize> = (0..len).collect();
                let mut seen = vec![0; len];
                let mut sizes = Vec::new();
                for i in 0..n {
                    let part = Shard::new(i, n).unwrap().select(items.iter().copied());
                    assert!(part.windows(2).all(|w| w[0] < w[1]), "order kept");
                    sizes.push(part.len());
                    for k in part {
                        seen[k] += 1;
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n} len={len}: {seen:?}");
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "n={n} len={len}: {sizes:?}");
            }
        }
    }

    #[test]
    fn parses_i_of_n() {
        let s: Shard = "2/4".parse().unwrap();
        assert_eq!((s.index(), s.count()), (2, 4));
        assert_eq!(
            " 0 / 1 ".parse::<Shard>().unwrap(),
            Shard::new(0, 1).unwrap()
        );
        assert_eq!(s.to_string(), "2/4");
        assert_eq!(
            Shard::new(1, 3).unwrap().select("abcdefg".chars()),
            vec!['b', 'e']
        );
    }

    #[test]
    fn bad_shards_say_what_is_wrong() {
        let msg = |s: &str| s.parse::<Shard>().unwrap_err().to_string();
        assert_eq!(msg("3"), "'3': expected I/N, e.g. 0/4");
        assert_eq!(msg("4/4"), "'4/4': need 0 ≤ I < N");
        assert_eq!(msg("0/0"), "'0/0': need 0 ≤ I < N");
        assert_eq!(msg("a/4"), "'a/4': invalid digit found in string");
        assert_eq!(msg("-1/4"), "'-1/4': invalid digit found in string");
        assert_eq!(msg("1/"), "'1/': cannot parse integer from empty string");
        assert!(Shard::new(5, 2).is_err());
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn slurm_array_variables_choose_the_shard() {
        assert_eq!(Shard::from_vars(vars(&[])).unwrap(), None);
        // Both ID and COUNT are needed.
        assert_eq!(
            Shard::from_vars(vars(&[("SLURM_ARRAY_TASK_ID", "1")])).unwrap(),
            None
        );
        let two = vars(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::from_vars(two).unwrap(), Shard::new(2, 4).ok());
        // An array numbered from 1 (`--array=1-4`) gives shards 0..3.
        let from_one = vars(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]);
        assert_eq!(Shard::from_vars(from_one).unwrap(), Shard::new(3, 4).ok());
    }

    #[test]
    fn bad_slurm_variables_are_named() {
        let e = Shard::from_vars(vars(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "SLURM_ARRAY_TASK_ID: 'x' is not a whole number"
        );
        // An array numbered from 1 without SLURM_ARRAY_TASK_MIN runs past the count.
        let e = Shard::from_vars(vars(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]))
        .unwrap_err();
        assert_eq!(e.to_string(), "the Slurm array '4/4': need 0 ≤ I < N");
    }
}
