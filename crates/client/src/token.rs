//! Where the client's token comes from.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The boxed future an async token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// How the client authenticates.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// No token (the hub must allow anonymous connections).
    #[default]
    None,
    /// One token for the client's whole life; it cannot be refreshed.
    Static(String),
    /// Called for the first connection, again when the server says the token expired (close
    /// 4004, error 109), and before `expires_at` for an in-band `refresh`.
    Provider(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl TokenSource {
    /// Wraps an async closure as a provider. Its error is shown in logs; the attempt counts as a
    /// failed connection attempt.
    pub fn provider<F, Fut, E>(f: F) -> TokenSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        TokenSource::Provider(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }))
    }

    /// Whether a fresh token can be obtained (only a provider can).
    pub fn refreshable(&self) -> bool {
        matches!(self, TokenSource::Provider(_))
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::None => "TokenSource::None",
            TokenSource::Static(_) => "TokenSource::Static(..)",
            TokenSource::Provider(_) => "TokenSource::Provider(..)",
        })
    }
}
