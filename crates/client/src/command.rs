//! The commands the handles ([`crate::Client`], [`crate::Subscription`]) send to the connection
//! task. The channel of [`Cmd`]s is the only link from the handles to the state machine, so the
//! handles never import the module that runs it.

use crate::error::Error;
use crate::event::{SubEvent, SubscribeOptions, ViewFeed};
use herald_protocol::Command;
use herald_protocol::command::ViewQuery;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

/// Where a request's reply goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<Box<RawValue>, Error>>;

/// The sending end of the connection task's command channel; every handle holds a clone.
pub(crate) type CommandTx = mpsc::UnboundedSender<Cmd>;

/// Messages from handles to the background task.
pub(crate) enum Cmd {
    /// Register a subscription and subscribe on the current (or next) connection.
    Subscribe {
        /// Tells this subscription apart from a later one to the same channel.
        id: u64,
        /// The channel to subscribe to.
        channel: String,
        /// Where to start.
        opts: SubscribeOptions,
        /// Where the subscription's events go.
        tx: mpsc::UnboundedSender<SubEvent>,
    },
    /// A [`crate::Subscription`] was dropped.
    Unsubscribe {
        /// Which subscription, so that a stale drop does not end a newer one to the channel.
        id: u64,
        /// Its channel.
        channel: String,
    },
    /// Register a view subscription and subscribe on the current (or next) connection.
    SubscribeView {
        /// Tells this view apart from a later one with the same name.
        id: u64,
        /// The keyed channel viewed.
        channel: String,
        /// What is viewed; its `sub` is always set (the name events are matched by).
        query: ViewQuery,
        /// Where the view's rows and events go.
        tx: mpsc::UnboundedSender<ViewFeed>,
    },
    /// A [`crate::View`] was dropped (or gave up on a record it cannot decode).
    UnsubscribeView {
        /// Which view, so that a stale drop does not end a newer one with the same name.
        id: u64,
        /// Its name on the connection.
        name: String,
    },
    /// A [`crate::Subscription`] changes its presence `info`: remember it for resubscribes and
    /// send `presence_update` when subscribed.
    SetPresence {
        /// Which subscription, so that a stale handle does not change a newer one.
        id: u64,
        /// Its channel.
        channel: String,
        /// The new `info`.
        info: serde_json::Value,
        /// Where the outcome goes.
        reply: ReplyTx,
    },
    /// Send any command and route its reply back.
    Request {
        /// The command to send.
        command: Command,
        /// Where its reply goes.
        reply: ReplyTx,
    },
    /// Reset the backoff and connect again now.
    Reconnect,
    /// Close the connection and stop the task.
    Close,
}
