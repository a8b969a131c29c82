//! `ping`: answered at once, echoing the client's `timestamp` (round-trip measurement).

use crate::session::Session;
use herald_protocol::ErrorBody;
use herald_protocol::reply::PingResult;
use serde_json::value::RawValue;

impl Session {
    /// Answers at once; the reply carries the `timestamp` unchanged.
    pub(super) fn ping(&self, id: u64, timestamp: Option<Box<RawValue>>) -> Result<(), ErrorBody> {
        self.reply(id, &PingResult { timestamp });
        Ok(())
    }
}
