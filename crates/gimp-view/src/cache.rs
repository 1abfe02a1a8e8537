//! Rendered tiles, least recently used first out, within a memory budget in bytes (not a count:
//! tiles at the slide's edge and JPEGs of blank glass are much smaller than others).

use lru::LruCache;
use std::sync::{Arc, Mutex};

/// Slide index, DZI level, column, row.
pub type TileKey = (usize, u32, u64, u64);

pub struct TileCache {
    inner: Mutex<Inner>,
    budget: usize,
}

struct Inner {
    tiles: LruCache<TileKey, Arc<Vec<u8>>>,
    bytes: usize,
}

impl TileCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tiles: LruCache::unbounded(),
                bytes: 0,
            }),
            budget: budget_bytes,
        }
    }

    pub fn get(&self, key: &TileKey) -> Option<Arc<Vec<u8>>> {
        self.lock().tiles.get(key).cloned()
    }

    /// Adds a tile, then drops the least recently used until the budget holds. A tile larger
    /// than the whole budget is not kept.
    pub fn insert(&self, key: TileKey, tile: Arc<Vec<u8>>) {
        if tile.len() > self.budget {
            return;
        }
        let mut g = self.lock();
        g.bytes += tile.len();
        if let Some(old) = g.tiles.put(key, tile) {
            g.bytes -= old.len();
        }
        while g.bytes > self.budget {
            match g.tiles.pop_lru() {
                Some((_, t)) => g.bytes -= t.len(),
                None => break,
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.lock().tiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is a
        // single call), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_budget_dropping_the_least_recently_used() {
        let c = TileCache::new(1000);
        for i in 0..5 {
            c.insert((0, 1, i, 0), Arc::new(vec![0; 300]));
        }
        assert!(c.bytes() <= 1000);
        assert_eq!(c.len(), 3);
        assert!(c.get(&(0, 1, 0, 0)).is_none() && c.get(&(0, 1, 1, 0)).is_none());
        // A use makes a tile the most recent: the next insert drops another.
        assert!(c.get(&(0, 1, 2, 0)).is_some());
        c.insert((0, 1, 9, 0), Arc::new(vec![0; 300]));
        assert!(c.get(&(0, 1, 2, 0)).is_some());
        assert!(c.get(&(0, 1, 3, 0)).is_none());
        // Replacing a tile counts its bytes once; a tile over the budget is not kept.
        c.insert((0, 1, 9, 0), Arc::new(vec![0; 100]));
        assert_eq!(c.bytes(), 700);
        c.insert((1, 0, 0, 0), Arc::new(vec![0; 1001]));
        assert!(c.get(&(1, 0, 0, 0)).is_none());
        assert_eq!(c.bytes(), 700);
    }
}
