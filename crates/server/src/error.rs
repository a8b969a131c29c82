//! Why a hub could not be built: one small error type for the library's constructors, so an
//! embedding application can tell a bad configuration from an unusable key or Redis URL.

use crate::auth::AuthError;
use crate::config::ConfigError;
use crate::engine::EngineError;

/// Why [`crate::Hub::new`], [`crate::memory_hub`] or [`crate::hub_from_config`] refused.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The configuration is invalid (or names an engine this build lacks).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token verification settings cannot be used (an unreadable public key, a leeway out
    /// of range).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The engine could not be set up (a malformed `engine.redis_url`).
    #[error(transparent)]
    Engine(#[from] EngineError),
}
