//! Herald wire protocol v1: the messages a client and the hub exchange, and their codes.
//!
//! This crate does no IO. `docs/protocol.md` is normative; these types follow it.
//!
//! # Layout
//!
//! - [`codes`]: numeric error codes (in replies) and WebSocket close codes.
//! - [`publication`]: what a channel carries: [`Publication`], [`Position`], [`Op`], [`Meta`].
//! - [`command`]: client → server commands and their parser.
//! - [`reply`]: server → client replies and pushes.
//!
//! A WebSocket text frame holds one or more messages separated by `\n` (JSON never contains a raw
//! newline), so a busy sender can batch.

pub mod codes;
pub mod command;
pub mod publication;
pub mod reply;

pub use codes::{CloseCode, ErrorCode};
pub use command::{Command, ParseError, PresenceMode, PresenceQuery, Request, Since, ViewQuery};
pub use publication::{Continuity, Meta, Op, Position, Publication, Record};
pub use reply::{ErrorBody, LeaveReason, ServerMessage, ViewEvent, ViewOperation};

/// Protocol version announced in the connect reply.
pub const PROTOCOL_VERSION: u32 = 1;

/// Splits a frame into its messages (one per non-empty line).
pub fn split_frame(frame: &str) -> impl Iterator<Item = &str> {
    frame.split('\n').map(str::trim).filter(|line| !line.is_empty())
}
