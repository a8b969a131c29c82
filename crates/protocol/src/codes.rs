//! Error codes (carried in replies and pushes) and close codes (carried by the WebSocket close
//! frame and by the `disconnect` push that precedes it). The tables in docs/protocol.md list the
//! same values; a unit test below keeps the names unique.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal, $text:literal $(, $extra:expr)?;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every code, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The numeric code on the wire.
            pub const fn code(self) -> u16 {
                match self { $($name::$variant => $value,)* }
            }

            /// The stable snake_case name on the wire.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Looks a code up by its number.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $($value => Some($name::$variant),)* _ => None }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u16(self.code())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let code = u16::deserialize(d)?;
                $name::from_code(code).ok_or_else(|| serde::de::Error::custom(format!("unknown code {code}")))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} {}", self.code(), self.name())
            }
        }
    };
}

codes! {
    /// Why a command (or a subscription) failed.
    ErrorCode {
        /// A fault inside the hub; the command may be retried.
        Internal = 100, "internal";
        /// No valid credentials: a command other than `connect` before `connect`, or a bad token.
        Unauthorized = 101, "unauthorized";
        /// The channel's namespace is not configured.
        UnknownNamespace = 102, "unknown_namespace";
        /// The principal may not do this on this channel.
        Forbidden = 103, "forbidden";
        /// The `cmd` is not one this protocol version knows.
        UnknownCommand = 104, "unknown_command";
        /// `subscribe` on a channel this connection is already subscribed to.
        AlreadySubscribed = 105, "already_subscribed";
        /// The per-connection channel limit is reached.
        TooManyChannels = 106, "too_many_channels";
        /// Malformed JSON, a missing or mistyped field.
        BadRequest = 107, "bad_request";
        /// `unsubscribe` (or similar) on a channel this connection is not subscribed to.
        NotSubscribed = 108, "not_subscribed";
        /// The token has expired; refresh it.
        TokenExpired = 109, "token_expired";
        /// Too many commands per second on this connection, or too many requests.
        RateLimited = 110, "rate_limited";
        /// A publication's data is larger than its namespace allows.
        MessageTooLarge = 111, "message_too_large";
        /// A keyed publish would make the channel's state larger than its limit.
        StateLimitExceeded = 112, "state_limit_exceeded";
        /// The engine (Redis) is unreachable; nothing was done.
        Unavailable = 113, "unavailable";
        /// The channel name is empty, too long or has forbidden characters.
        InvalidChannel = 114, "invalid_channel";
        /// `connect` on a connection that is already authenticated.
        AlreadyConnected = 115, "already_connected";
        /// `key`/`op`/`state`/`snapshot` on a channel whose namespace is not keyed, or a bad op.
        NotKeyed = 116, "not_keyed";
        /// The subscription saw a gap in offsets and was dropped: subscribe again with `since`.
        Resubscribe = 117, "resubscribe";
        /// A view subscription's filter does not parse or does not type against the entity, the
        /// view is unknown, or ad-hoc filters are not allowed on the namespace.
        InvalidFilter = 118, "invalid_filter";
        /// A per-user connection limit was reached.
        TooManyConnections = 119, "too_many_connections";
        /// A publication to an entity's channel does not fit the entity's schema (the message
        /// names the field); nothing was stored or delivered.
        InvalidRecord = 120, "invalid_record";
        /// `POST /sse/session/{id}` names no open multiplexed SSE session (unknown, or ended).
        UnknownSession = 121, "unknown_session";
    }
}

codes! {
    /// Why the hub closed a connection. 4000–4499: reconnect (with backoff); 4500–4999: final.
    CloseCode {
        /// The hub is shutting down or restarting; reconnect (to another node).
        Shutdown = 4000, "shutdown";
        /// The connection's outbound queue overflowed; reconnect and resume.
        SlowConsumer = 4001, "slow_consumer";
        /// No pong within the heartbeat timeout.
        HeartbeatTimeout = 4002, "heartbeat_timeout";
        /// No `connect` within the auth timeout.
        AuthTimeout = 4003, "auth_timeout";
        /// The token lapsed without a refresh; get a new token, then reconnect.
        TokenExpired = 4004, "token_expired";
        /// The per-user connection limit was reached; back off. (Over the per-IP attempt limit
        /// an upgrade is refused before it happens: HTTP 429 with error 110.)
        TooManyConnections = 4005, "too_many_connections";
        /// Too many commands per second; back off.
        RateLimited = 4006, "rate_limited";
        /// Reserved, not sent: when the node loses its engine (Redis), connections stay open and
        /// each subscription gets an `unsubscribe` push with 117, then 113 until Redis is back.
        EngineUnavailable = 4007, "engine_unavailable";
        /// The token is missing, malformed, badly signed, or for another audience or issuer.
        Unauthorized = 4500, "unauthorized";
        /// The Origin is not allowed.
        Forbidden = 4501, "forbidden";
        /// The client broke the protocol (binary frame, too many malformed messages).
        BadRequest = 4502, "bad_request";
        /// An operator disconnected this user through the API.
        Kicked = 4503, "kicked";
        /// An inbound frame was larger than the limit.
        MessageTooLarge = 4504, "message_too_large";
    }
}

impl CloseCode {
    /// Whether a client should reconnect after this close.
    pub const fn reconnect(self) -> bool {
        self.code() < 4500
    }

    /// Whether a raw WebSocket close code means "reconnect". Unknown and standard codes (1000,
    /// 1001, 1006, 1011…) are treated as transient.
    pub fn should_reconnect(code: u16) -> bool {
        match CloseCode::from_code(code) {
            Some(c) => c.reconnect(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_numbers_are_unique() {
        let names: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        let nums: HashSet<_> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(nums.len(), CloseCode::ALL.len());
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(*c));
        }
    }

    #[test]
    fn reconnect_split() {
        assert!(CloseCode::SlowConsumer.reconnect());
        assert!(!CloseCode::Unauthorized.reconnect());
        assert!(CloseCode::should_reconnect(1006));
        assert!(!CloseCode::should_reconnect(4503));
    }
}
