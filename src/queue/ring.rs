//! Where bytes go in the queue's ring. Offsets are logical: they only grow, and a byte's place
//! is its offset modulo the ring's capacity, so a stretch may wrap past the end. Pure
//! arithmetic, tested without a server.

/// A stretch of `first + rest` bytes at a logical offset: `first` bytes from `at` to (at most)
/// the end of the ring, then `rest` from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub at: usize,
    pub first: usize,
    pub rest: usize,
}

/// Where `len` bytes at logical `offset` lie in a ring of `capacity` bytes (`len <= capacity`).
pub fn span(capacity: u64, offset: u64, len: usize) -> Span {
    debug_assert!(len as u64 <= capacity);
    let cap = capacity as usize;
    let at = (offset % capacity) as usize;
    let first = len.min(cap - at);
    Span {
        at,
        first,
        rest: len - first,
    }
}

/// Bytes free in a ring of `capacity` with `head` written and `tail` consumed.
pub fn free(capacity: u64, head: u64, tail: u64) -> u64 {
    capacity - (head - tail)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_stretch_wraps_past_the_end_and_nowhere_else() {
        // Inside, touching the end, across it, and starting exactly on a multiple.
        assert_eq!(
            span(10, 3, 4),
            Span {
                at: 3,
                first: 4,
                rest: 0
            }
        );
        assert_eq!(
            span(10, 6, 4),
            Span {
                at: 6,
                first: 4,
                rest: 0
            }
        );
        assert_eq!(
            span(10, 8, 5),
            Span {
                at: 8,
                first: 2,
                rest: 3
            }
        );
        assert_eq!(
            span(10, 30, 10),
            Span {
                at: 0,
                first: 10,
                rest: 0
            }
        );
        assert_eq!(
            span(10, 39, 10),
            Span {
                at: 9,
                first: 1,
                rest: 9
            }
        );
        // Offsets keep growing for the life of the server.
        let late = u64::MAX / 2 / 10 * 10 - 1;
        assert_eq!(
            span(10, late, 2),
            Span {
                at: 9,
                first: 1,
                rest: 1
            }
        );
    }

    #[test]
    fn every_stretch_fits_the_ring_once() {
        for capacity in [1u64, 2, 7, 64, 1000] {
            for offset in (0..3 * capacity).chain([u64::MAX / 4, u64::MAX / 4 + 1]) {
                for len in 0..=capacity as usize {
                    let s = span(capacity, offset, len);
                    assert_eq!(s.first + s.rest, len);
                    assert!(s.at < capacity as usize && s.first <= capacity as usize - s.at);
                    // The wrapped part ends where the first began: nothing is written twice.
                    assert!(
                        s.rest <= s.at || s.rest == 0,
                        "{capacity} {offset} {len}: {s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn free_space_is_what_the_consumer_has_not_caught_up_with() {
        assert_eq!(free(100, 0, 0), 100);
        assert_eq!(free(100, 250, 180), 30);
        assert_eq!(free(100, 300, 300), 100);
    }
}
