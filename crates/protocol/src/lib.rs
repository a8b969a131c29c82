//! Herald wire protocol (versions 1 and 2): the messages a client and the hub exchange, and their codes.
//!
//! This crate does no IO. `docs/protocol.md` is normative; these types follow it.
//!
//! # Layout
//!
//! - [`codes`]: numeric error codes (in replies) and WebSocket close codes.
//! - [`publication`]: what a channel carries: [`Publication`], [`Position`], [`Op`], [`Meta`].
//! - [`command`]: client → server commands and their parser.
//! - [`reply`]: server → client replies and pushes.
//! - [`compact`]: version 2's compact live publication frame.
//! - [`chunk`]: version 2's large publications in parts, and truncated previews.
//! - [`json`]: the hand-written JSON of the per-publication path (frames, tails, replies).
//!
//! A WebSocket text frame holds one or more messages separated by `\n` (JSON never contains a raw
//! newline), so a busy sender can batch.

pub mod chunk;
pub mod codes;
pub mod command;
pub mod compact;
pub mod json;
pub mod publication;
pub mod reply;

pub use codes::{CloseCode, ErrorCode};
pub use command::{Command, ParseError, PresenceMode, PresenceQuery, Request, Since, ViewQuery};
pub use publication::{Continuity, Meta, Op, Position, Publication, Record};
pub use reply::{ErrorBody, LeaveReason, ServerMessage, ViewEvent, ViewOperation};

/// The newest protocol version the hub speaks; a `connect` asks for one (default 1) and the
/// reply says which is in use (docs/protocol.md §17).
pub const PROTOCOL_VERSION: u32 = 2;

/// Splits a frame into its messages (one per non-empty line).
pub fn split_frame(frame: &str) -> impl Iterator<Item = &str> {
    frame.split('\n').map(str::trim).filter(|line| !line.is_empty())
}
