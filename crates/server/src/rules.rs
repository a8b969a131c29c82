//! The rules that are the product, decided here once for every engine: whether a resume from a
//! position is served (the recover verdict), what a history page holds, and when a keyed
//! subscriber gets a snapshot instead. Engines only store and fetch ([`Engine::read`]).
//!
//! # The recover verdict
//!
//! A subscriber resuming from `since` in a stream at `epoch`/`offset` is served the publications
//! after `since` when all of them are still kept; otherwise it is told why not:
//!
//! - `epoch_changed`: another epoch, or a `since` ahead of the stream (the stream the client
//!   knew is gone, e.g. Redis restored from an older snapshot; an engine that finds acknowledged
//!   writes lost starts a new epoch for the channel, so that is read here as another epoch);
//! - `too_many`: more than the namespace's `max_recover` publications to catch up;
//! - `history_trimmed`: some of them are no longer kept.
//!
//! A keyed subscriber whose resume fails gets the records at the current position instead (and
//! one that asks for a snapshot gets them in any case), so its state is never silently wrong.

use crate::config::Namespace;
use crate::engine::{Engine, EngineError, StreamRead, Window};
use crate::frame::Encoded;
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::NotRecovered;
use herald_protocol::{Position, Record};
use std::sync::Arc;

/// Publications in a history page when the query names no limit.
pub const DEFAULT_HISTORY_PAGE: usize = 100;

/// The answer to a subscribe: where the stream is, and what the subscriber needs to catch up.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Current epoch.
    pub epoch: String,
    /// Current offset; live delivery continues at `offset + 1`.
    pub offset: u64,
    /// Whether the channel is keyed.
    pub keyed: bool,
    /// Present when a `since` was given.
    pub recovered: Option<bool>,
    /// Why not recovered.
    pub reason: Option<NotRecovered>,
    /// Publications after `since`, when recovered.
    pub publications: Vec<Arc<Encoded>>,
    /// Records at `offset`, when asked or when a keyed resume failed.
    pub snapshot: Option<Vec<Record>>,
}

/// A page of history.
#[derive(Debug, Default)]
pub struct History {
    /// Current epoch.
    pub epoch: String,
    /// Current offset.
    pub offset: u64,
    /// Lowest kept offset (0 when empty).
    pub earliest: u64,
    /// The page, oldest first.
    pub publications: Vec<Arc<Encoded>>,
    /// Why `since` could not be served.
    pub reason: Option<NotRecovered>,
}

/// A keyed channel's state.
#[derive(Debug, Default)]
pub struct State {
    /// Epoch of the state.
    pub epoch: String,
    /// Offset the records correspond to.
    pub offset: u64,
    /// Records sorted by key.
    pub records: Vec<Record>,
}

/// Whether a resume from `since` can be served from `read` (a read of the publications after
/// `since.offset`, at most `max_recover` of them).
pub fn resume_verdict(
    read: &StreamRead,
    since: &Position,
    max_recover: usize,
) -> Result<(), NotRecovered> {
    if since.epoch != read.epoch || since.offset > read.offset {
        return Err(NotRecovered::EpochChanged);
    }
    let missing = read.offset - since.offset;
    if missing > max_recover as u64 {
        return Err(NotRecovered::TooMany);
    }
    if missing == 0 {
        return Ok(());
    }
    if !kept_after(read, since.offset) || read.publications.len() as u64 != missing {
        return Err(NotRecovered::HistoryTrimmed);
    }
    Ok(())
}

/// Whether the stream still keeps the publication right after `after`.
fn kept_after(read: &StreamRead, after: u64) -> bool {
    read.earliest != 0 && read.earliest <= after.saturating_add(1)
}

/// Where `channel` stands, plus what a subscriber resuming from `since` (or asking for a
/// `snapshot`) needs. Call once the node listens to the channel.
pub async fn recover(
    engine: &dyn Engine,
    ns: &Namespace,
    channel: &str,
    since: Option<&Position>,
    snapshot: bool,
) -> Result<Recovery, EngineError> {
    engine.flowing(channel).await?;
    let window = match since {
        Some(p) => Window::After { after: p.offset, limit: ns.max_recover },
        None => Window::Nothing,
    };
    let snapshot = snapshot && ns.keyed;
    let read = engine.read(ns, channel, window, snapshot).await?;
    let verdict = since.map(|p| resume_verdict(&read, p, ns.max_recover));
    let mut r = Recovery {
        epoch: read.epoch,
        offset: read.offset,
        keyed: ns.keyed,
        recovered: verdict.map(|v| v.is_ok()),
        reason: verdict.and_then(Result::err),
        snapshot: read.records,
        ..Recovery::default()
    };
    if verdict == Some(Ok(())) {
        r.publications = read.publications;
    }
    if ns.keyed && r.recovered == Some(false) && r.snapshot.is_none() {
        // The resume failed: the records at the current position replace it (read again, so
        // that records and position agree; live delivery continues after that position).
        let read = engine.read(ns, channel, Window::Nothing, true).await?;
        r.epoch = read.epoch;
        r.offset = read.offset;
        r.snapshot = Some(read.records.unwrap_or_default());
    }
    Ok(r)
}

/// A page of history: after `since` (reading forward, answered as subscribe would be when
/// `since` cannot be served), or the newest publications before `before` (or the newest of all).
pub async fn history(
    engine: &dyn Engine,
    ns: &Namespace,
    q: &HistoryQuery,
    max_page: usize,
) -> Result<History, EngineError> {
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY_PAGE).min(max_page);
    let window = match &q.since {
        Some(p) => Window::After { after: p.offset, limit },
        None => Window::Before { before: q.before, limit },
    };
    let read = engine.read(ns, &q.channel, window, false).await?;
    let kept = q.since.as_ref().is_none_or(|since| kept_after(&read, since.offset));
    let mut h = History {
        epoch: read.epoch,
        offset: read.offset,
        earliest: read.earliest,
        ..History::default()
    };
    match &q.since {
        Some(since) if since.epoch != h.epoch || since.offset > h.offset => {
            h.reason = Some(NotRecovered::EpochChanged);
        }
        Some(since) if since.offset < h.offset && !kept => {
            h.reason = Some(NotRecovered::HistoryTrimmed);
        }
        _ => h.publications = read.publications,
    }
    Ok(h)
}

/// A keyed channel's records and the position they correspond to.
pub async fn state(
    engine: &dyn Engine,
    ns: &Namespace,
    channel: &str,
) -> Result<State, EngineError> {
    if !ns.keyed {
        return Err(EngineError::NotKeyed(format!("namespace of {channel:?} is not keyed")));
    }
    let read = engine.read(ns, channel, Window::Nothing, true).await?;
    Ok(State { epoch: read.epoch, offset: read.offset, records: read.records.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(epoch: &str, offset: u64, earliest: u64, kept_after_since: usize) -> StreamRead {
        StreamRead {
            epoch: epoch.into(),
            offset,
            earliest,
            publications: (0..kept_after_since)
                .map(|i| Arc::new(Encoded::from_json("c", epoch, offset - i as u64, "{}")))
                .collect(),
            records: None,
        }
    }

    fn at(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    #[test]
    fn verdicts() {
        use NotRecovered::*;
        // Up to date, nothing kept: served.
        assert_eq!(resume_verdict(&read("e", 5, 0, 0), &at("e", 5), 10), Ok(()));
        // Another epoch, or ahead of the stream: the stream the client knew is gone.
        assert_eq!(resume_verdict(&read("e", 5, 1, 0), &at("x", 5), 10), Err(EpochChanged));
        assert_eq!(resume_verdict(&read("e", 5, 1, 0), &at("e", 6), 10), Err(EpochChanged));
        // More than max_recover behind.
        assert_eq!(resume_verdict(&read("e", 50, 1, 10), &at("e", 20), 10), Err(TooMany));
        // The next one is no longer kept, or nothing is.
        assert_eq!(resume_verdict(&read("e", 10, 8, 3), &at("e", 5), 10), Err(HistoryTrimmed));
        assert_eq!(resume_verdict(&read("e", 10, 0, 0), &at("e", 5), 10), Err(HistoryTrimmed));
        // Everything after since is kept.
        assert_eq!(resume_verdict(&read("e", 10, 6, 5), &at("e", 5), 10), Ok(()));
        // Channel never published: its empty position is served.
        assert_eq!(resume_verdict(&read("e", 0, 0, 0), &at("e", 0), 10), Ok(()));
    }
}
