//! The tissue mask as polygons in level-0 pixels: what QuPath, shapely and TRIDENT's
//! `contours_geojson` take.
//!
//! Marching squares over the overview's pixel centres, on the mask the patch grid uses
//! ([`TissueMask::is_tissue_px`]: kept regions without their kept holes). Vertices lie on the
//! pixel edges halfway between two pixel centres, so an outline cuts each corner by half a
//! pixel. At a saddle (two tissue pixels touching only by a corner) the two are joined: tissue
//! is 8-connected and background 4-connected, as in [`crate::segment`]. Because every vertex
//! belongs to exactly one crossing of one cell edge, rings never cross or touch each other or
//! themselves: every polygon is valid (OGC / shapely) by construction. Exteriors come out with a
//! positive shoelace area (counter-clockwise in the y-up sense of RFC 7946), holes negative; each
//! hole goes to the smallest exterior around it. Vertices on straight runs are dropped, which
//! leaves the shape unchanged.

use crate::segment::TissueMask;
use geo::{Area, BoundingRect, Contains, Coord, LineString, MultiPolygon, Point, Polygon};
use std::collections::HashMap;

/// Tissue polygons of `mask` (kept regions, their kept holes as interior rings) in level-0
/// pixels, largest first.
pub fn tissue_polygons(mask: &TissueMask) -> MultiPolygon<f64> {
    let (w, h) = (mask.width as i64, mask.height as i64);
    let on = |x: i64, y: i64| {
        x >= 0 && y >= 0 && x < w && y < h && mask.is_tissue_px(x as usize, y as usize)
    };
    let rings = trace(w, h, on);
    let scale = |p: (i64, i64)| Coord {
        x: p.0 as f64 / 2.0 * mask.downsample[0],
        y: p.1 as f64 / 2.0 * mask.downsample[1],
    };
    assemble(
        rings
            .into_iter()
            .map(|r| LineString::from(r.into_iter().map(scale).collect::<Vec<_>>()))
            .collect(),
    )
}

/// Closed rings (last vertex not repeated) in half-pixel units: pixel `(x, y)`'s centre is
/// `(2x + 1, 2y + 1)`. Tissue lies to the left of each ring in the y-up sense.
fn trace(w: i64, h: i64, on: impl Fn(i64, i64) -> bool) -> Vec<Vec<(i64, i64)>> {
    // Directed segments, start → end; each crossing point starts exactly one segment.
    let mut next: HashMap<(i64, i64), (i64, i64)> = HashMap::new();
    // Cells between pixel centres (i, j) – (i + 1, j + 1), one cell beyond each border so that
    // every outline closes.
    for j in -1..h {
        for i in -1..w {
            let corners = [on(i, j), on(i + 1, j), on(i + 1, j + 1), on(i, j + 1)];
            if corners.iter().all(|&c| c) || corners.iter().all(|&c| !c) {
                continue;
            }
            // Edge k joins corner k and corner k + 1 (clockwise on screen: top, right, bottom,
            // left); its crossing point is the midpoint of the two pixel centres.
            let mid = [
                (2 * i + 2, 2 * j + 1),
                (2 * i + 3, 2 * j + 2),
                (2 * i + 2, 2 * j + 3),
                (2 * i + 1, 2 * j + 2),
            ];
            let crossing = |k: usize| corners[k] != corners[(k + 1) % 4];
            for k in 0..4 {
                // Leaving tissue (clockwise) here: the segment runs to the next crossing
                // clockwise, which keeps tissue on the right on screen and joins diagonal
                // tissue corners at a saddle.
                if corners[k] && !corners[(k + 1) % 4] {
                    let end = (1..4).map(|d| (k + d) % 4).find(|&e| crossing(e));
                    if let Some(e) = end {
                        next.insert(mid[k], mid[e]);
                    }
                }
            }
        }
    }
    let mut rings = Vec::new();
    while let Some(&start) = next.keys().next() {
        let mut ring = vec![start];
        let mut at = next.remove(&start).unwrap_or(start);
        while at != start {
            ring.push(at);
            match next.remove(&at) {
                Some(n) => at = n,
                None => break,
            }
        }
        rings.push(drop_collinear(ring));
    }
    rings
}

/// The ring without the vertices that lie on a straight line between their neighbours.
fn drop_collinear(ring: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    let n = ring.len();
    if n < 4 {
        return ring;
    }
    (0..n)
        .filter(|&i| {
            let (a, b, c) = (ring[(i + n - 1) % n], ring[i], ring[(i + 1) % n]);
            (b.0 - a.0) * (c.1 - b.1) != (b.1 - a.1) * (c.0 - b.0)
        })
        .map(|i| ring[i])
        .collect()
}

/// Exteriors (positive area) become polygons; each hole (negative area) goes to the smallest
/// exterior that contains it.
fn assemble(rings: Vec<LineString<f64>>) -> MultiPolygon<f64> {
    let mut outers: Vec<(Polygon<f64>, f64)> = Vec::new();
    let mut holes = Vec::new();
    for r in rings {
        let p = Polygon::new(r, vec![]);
        let a = p.signed_area();
        if a > 0.0 {
            outers.push((p, a));
        } else if a < 0.0 {
            holes.push(p.exterior().clone());
        }
    }
    outers.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut interiors: Vec<Vec<LineString<f64>>> = vec![Vec::new(); outers.len()];
    for hole in holes {
        let probe = Point::from(hole.0[0]);
        let owner = outers
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| {
                p.bounding_rect().is_some_and(|b| {
                    b.min().x <= probe.x()
                        && probe.x() <= b.max().x
                        && b.min().y <= probe.y()
                        && probe.y() <= b.max().y
                }) && p.contains(&probe)
            })
            .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|(i, _)| i);
        if let Some(i) = owner {
            interiors[i].push(hole);
        }
    }
    MultiPolygon(
        outers
            .into_iter()
            .zip(interiors)
            .map(|((p, _), holes)| Polygon::new(p.into_inner().0, holes))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::Validation;

    fn polygons(rows: &[&str]) -> MultiPolygon<f64> {
        let h = rows.len() as i64;
        let w = rows[0].len() as i64;
        let on = |x: i64, y: i64| {
            x >= 0 && y >= 0 && x < w && y < h && rows[y as usize].as_bytes()[x as usize] == b'#'
        };
        let rings = trace(w, h, on);
        assemble(
            rings
                .into_iter()
                .map(|r| {
                    LineString::from(
                        r.into_iter()
                            .map(|(x, y)| Coord {
                                x: x as f64 / 2.0,
                                y: y as f64 / 2.0,
                            })
                            .collect::<Vec<_>>(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn random_masks_give_valid_disjoint_polygons_covering_every_tissue_pixel() {
        // A fixed linear congruential sequence: 40 masks of 24 × 16, half tissue.
        let mut state = 12345u64;
        for _ in 0..40 {
            let rows: Vec<String> = (0..16)
                .map(|_| {
                    (0..24)
                        .map(|_| {
                            state = state
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            if (state >> 33).is_multiple_of(2) {
                                '#'
                            } else {
                                '.'
                            }
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<&str> = rows.iter().map(|r| r.as_str()).collect();
            let m = polygons(&refs);
            assert!(
                m.is_valid(),
                "{:?}\n{}",
                m.validation_errors(),
                rows.join("\n")
            );
            for (y, r) in rows.iter().enumerate() {
                for (x, c) in r.bytes().enumerate() {
                    let centre = Point::new(x as f64 + 0.5, y as f64 + 0.5);
                    let covered = m.0.iter().any(|p| p.contains(&centre));
                    assert_eq!(covered, c == b'#', "pixel ({x}, {y})\n{}", rows.join("\n"));
                }
            }
        }
    }

    #[test]
    fn one_pixel_is_a_diamond_around_its_centre() {
        let m = polygons(&["#"]);
        assert_eq!(m.0.len(), 1);
        // Vertices at the edge midpoints of pixel (0, 0): a diamond of area ½.
        assert_eq!(m.0[0].unsigned_area(), 0.5);
        assert!(m.0[0].interiors().is_empty());
    }

    #[test]
    fn holes_islands_and_diagonal_touches_give_valid_polygons() {
        let m = polygons(&[
            "#######.....",
            "#.....#..#..",
            "#.###.#.#.#.",
            "#.#.#.#..#..",
            "#.###.#.....",
            "#.....#.##..",
            "#######.##..",
            "..........#.",
        ]);
        for p in &m.0 {
            assert!(p.is_valid(), "{:?}", p.validation_errors());
        }
        // The frame (with one hole), the island in its hole (with its own hole), the diamond of
        // four diagonal pixels (one region with a hole: tissue is 8-connected), and the 2×2
        // block joined diagonally to the last pixel.
        assert_eq!(m.0.len(), 4, "{m:?}");
        let mut holes: Vec<usize> = m.0.iter().map(|p| p.interiors().len()).collect();
        holes.sort();
        assert_eq!(holes, vec![0, 1, 1, 1], "{m:?}");
        // Largest first; the frame's hole contains the island, not the island's hole.
        assert!(m.0[0].unsigned_area() > m.0[1].unsigned_area());
        assert!(m.0[0].contains(&Point::new(0.5, 0.5)));
        assert!(!m.0[0].contains(&Point::new(3.5, 3.5)));
        assert!(m.0.iter().any(|p| p.contains(&Point::new(2.5, 2.5))));
        assert!(!m.0.iter().any(|p| p.contains(&Point::new(3.5, 3.5))));
    }
}
