//! Where one connection stands in a room's stream (rooms with history), and the join
//! that recovers: pure, so the seam between replay and live is tested without sockets.
//!
//! A connection that joins through the client protocol starts **pending**: the
//! positioned publications that arrive while the broker is asked for the history are
//! held, in order. When the answer comes, [`recover`] lays out what the client gets —
//! the replay (publications after its position, when recovered), then the held ones the
//! replay did not cover — and the cursor goes **live**: from then on a publication at
//! or below its offset is a duplicate and skipped, the next ones are sent. Both happen
//! under the rooms' lock, which positioned deliveries also take, so nothing passes
//! between the replay and the live stream, and nothing is sent twice.

use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::{History, Position};

/// A connection's place in a room's stream.
#[derive(Debug)]
pub(super) enum Cursor {
    /// Sent everything up to `last` of `epoch` (`None`: nothing positioned sent yet).
    Live { epoch: Option<Arc<str>>, last: u64 },
    /// Waiting for the history; publications are held here.
    Pending {
        /// Which join this is (a later join or leave makes the answer stale).
        token: u64,
        held: Vec<(Position, Bytes)>,
        bytes: usize,
    },
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::Live {
            epoch: None,
            last: 0,
        }
    }
}

/// What to do with a positioned publication for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send it.
    Send,
    /// Already sent (or covered by a replay): skip.
    Skip,
    /// Its stream lost its past since the last one sent (another epoch): tell the client
    /// its position is void, then send it.
    Reset,
    /// Held for the pending join.
    Held,
    /// Held publications would pass `max_held` bytes: the join cannot complete.
    Overflow,
}

impl Cursor {
    /// Decide for `pos` (holding `bytes` when pending, up to `max_held` bytes).
    pub(super) fn admit(&mut self, pos: &Position, bytes: &Bytes, max_held: usize) -> Admit {
        match self {
            Cursor::Pending {
                held, bytes: used, ..
            } => {
                if *used + bytes.len() > max_held {
                    return Admit::Overflow;
                }
                *used += bytes.len();
                held.push((pos.clone(), bytes.clone()));
                Admit::Held
            }
            Cursor::Live { epoch, last } => match epoch {
                Some(e) if **e == *pos.epoch => {
                    if pos.offset <= *last {
                        Admit::Skip
                    } else {
                        *last = pos.offset;
                        Admit::Send
                    }
                }
                Some(_) => {
                    *epoch = Some(pos.epoch.clone());
                    *last = pos.offset;
                    Admit::Reset
                }
                None => {
                    *epoch = Some(pos.epoch.clone());
                    *last = pos.offset;
                    Admit::Send
                }
            },
        }
    }

    /// The token of a pending join.
    pub(super) fn token(&self) -> Option<u64> {
        match self {
            Cursor::Pending { token, .. } => Some(*token),
            Cursor::Live { .. } => None,
        }
    }
}

/// One thing to send to a recovering client, in order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Out {
    /// A publication (envelope with its offset) at its position.
    Frame(Position, Bytes),
    /// Its stream changed epoch: a `room:joined` with `recovered: false` at this
    /// position minus one, before the publication that follows.
    Reset(Position),
}

/// What a pending join turns into once the broker answered.
#[derive(Debug)]
pub(super) struct Recovery {
    /// `Some` when the client asked to recover.
    pub(super) recovered: Option<bool>,
    /// The replay, then the held publications not covered by it.
    pub(super) out: Vec<Out>,
    /// The connection's cursor from now on.
    pub(super) cursor: Cursor,
}

/// Lay out a pending join: `history` as the broker answered (asked from `since`'s
/// offset), `held` what arrived meanwhile. The replay is all or nothing: when the
/// history lacks part of what followed `since`, or the replay would pass
/// `max_replay_bytes`, nothing is replayed and `recovered` is `false`.
pub(super) fn recover(
    history: History,
    since: Option<&Position>,
    held: Vec<(Position, Bytes)>,
    max_replay_bytes: usize,
) -> Recovery {
    let mut out = Vec::new();
    let mut cursor = Cursor::Live {
        epoch: Some(history.epoch.clone()),
        last: history.offset,
    };
    let replay = since.and_then(|p| {
        // only its own epoch continues a position (even at offset 0: what the old epoch
        // had after it is unknown)
        let entries = history.since.filter(|_| p.epoch == history.epoch)?;
        let size: usize = entries.iter().map(|(_, b)| b.len()).sum();
        (size <= max_replay_bytes).then_some((p.offset, entries))
    });
    let recovered = since.map(|_| replay.is_some());
    if let Some((from, entries)) = replay {
        let mut last = from;
        for (offset, bytes) in entries {
            last = offset;
            let pos = Position {
                epoch: history.epoch.clone(),
                offset,
            };
            out.push(Out::Frame(pos, bytes));
        }
        cursor = Cursor::Live {
            epoch: Some(history.epoch),
            last,
        };
    }
    for (pos, bytes) in held {
        match cursor.admit(&pos, &bytes, 0) {
            Admit::Send => out.push(Out::Frame(pos, bytes)),
            Admit::Reset => {
                out.push(Out::Reset(pos.clone()));
                out.push(Out::Frame(pos, bytes));
            }
            Admit::Skip | Admit::Held | Admit::Overflow => {}
        }
    }
    Recovery {
        recovered,
        out,
        cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(e: &str, o: u64) -> Position {
        Position {
            epoch: Arc::from(e),
            offset: o,
        }
    }

    fn frame(o: u64) -> Bytes {
        Bytes::from(o.to_string())
    }

    fn offsets(out: &[Out]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Out::Frame(_, b) => std::str::from_utf8(b).ok()?.parse().ok(),
                Out::Reset(_) => None,
            })
            .collect()
    }

    fn history(epoch: &str, top: u64, since: Option<std::ops::RangeInclusive<u64>>) -> History {
        History {
            epoch: Arc::from(epoch),
            offset: top,
            since: since.map(|r| r.map(|o| (o, frame(o))).collect()),
        }
    }

    #[test]
    fn live_cursors_skip_duplicates_and_flag_another_epoch() {
        let mut c = Cursor::default();
        let b = Bytes::new();
        assert_eq!(c.admit(&pos("a", 5), &b, 0), Admit::Send);
        assert_eq!(c.admit(&pos("a", 5), &b, 0), Admit::Skip);
        assert_eq!(c.admit(&pos("a", 7), &b, 0), Admit::Send, "a gap is sent");
        assert_eq!(c.admit(&pos("b", 1), &b, 0), Admit::Reset);
        assert_eq!(c.admit(&pos("b", 2), &b, 0), Admit::Send);
    }

    #[test]
    fn pending_cursors_hold_up_to_their_budget() {
        let mut c = Cursor::Pending {
            token: 1,
            held: Vec::new(),
            bytes: 0,
        };
        let b = Bytes::from_static(b"12345");
        assert_eq!(c.admit(&pos("a", 1), &b, 10), Admit::Held);
        assert_eq!(c.admit(&pos("a", 2), &b, 10), Admit::Held);
        assert_eq!(c.admit(&pos("a", 3), &b, 10), Admit::Overflow);
        assert_eq!(c.token(), Some(1));
    }

    #[test]
    fn not_recovered_replays_nothing_and_continues_after_the_top() {
        // another epoch
        let r = recover(
            history("new", 9, Some(4..=9)),
            Some(&pos("old", 3)),
            vec![(pos("new", 9), frame(9)), (pos("new", 10), frame(10))],
            1 << 20,
        );
        assert_eq!(r.recovered, Some(false));
        assert_eq!(offsets(&r.out), vec![10]);
        // trimmed history
        let r = recover(history("e", 9, None), Some(&pos("e", 1)), vec![], 1 << 20);
        assert_eq!((r.recovered, r.out.len()), (Some(false), 0));
        // over the replay budget: all or nothing
        let r = recover(history("e", 9, Some(2..=9)), Some(&pos("e", 1)), vec![], 4);
        assert_eq!((r.recovered, r.out.len()), (Some(false), 0));
        // no since: no flag, nothing replayed
        let r = recover(
            history("e", 9, None),
            None,
            vec![(pos("e", 10), frame(10))],
            0,
        );
        assert_eq!((r.recovered, offsets(&r.out)), (None, vec![10]));
    }

    #[test]
    fn an_epoch_change_while_pending_is_announced_before_its_publication() {
        let r = recover(
            history("a", 2, None),
            None,
            vec![(pos("b", 1), frame(1))],
            0,
        );
        assert_eq!(
            r.out,
            vec![Out::Reset(pos("b", 1)), Out::Frame(pos("b", 1), frame(1))]
        );
    }

    proptest! {
        /// Whatever the history held and whatever arrived while pending (overlapping
        /// it, in order), a recovered client gets every offset after its position
        /// exactly once, in order.
        #[test]
        fn the_seam_has_no_gap_and_no_duplicate(
            since in 0u64..20, top_extra in 0u64..20, held_from_back in 0u64..10, held_len in 0u64..10,
        ) {
            let top = since + top_extra;
            let first_held = (top + 1).saturating_sub(held_from_back).max(1);
            let held: Vec<_> = (first_held..first_held + held_len)
                .map(|o| (pos("e", o), frame(o)))
                .collect();
            let last_held = first_held + held_len;
            let r = recover(history("e", top, Some(since + 1..=top)), Some(&pos("e", since)), held, 1 << 20);
            prop_assert_eq!(r.recovered, Some(true));
            let want: Vec<u64> = (since + 1..last_held.max(top + 1)).collect();
            prop_assert_eq!(offsets(&r.out), want);
        }
    }
}
