//! The subscribe-authorization hook: asks the application's backend whether a user may
//! subscribe to a channel (seed 001: "may this user view this campaign"), with a short cache.

use crate::config::HookConfig;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

/// Client of the hook with its answer cache.
pub struct SubscribeHook {
    /// Where and how long.
    config: HookConfig,
    /// HTTP client with the hook's timeout.
    http: reqwest::Client,
    /// (user, channel) → (allowed, when asked).
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl SubscribeHook {
    /// A hook client.
    pub fn new(config: HookConfig) -> SubscribeHook {
        let http = reqwest::Client::builder().timeout(config.timeout).build().unwrap_or_default();
        SubscribeHook { config, http, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether the hook allows it. Errors and timeouts deny (and are not cached).
    pub async fn allows(&self, user: &str, channel: &str, client: &str) -> bool {
        let key = (user.to_string(), channel.to_string());
        if let Some((allowed, at)) = self.cache.lock().get(&key)
            && at.elapsed() < self.config.cache_ttl
        {
            return *allowed;
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            allow: bool,
        }
        let body = serde_json::json!({ "user": user, "channel": channel, "client": client });
        let answer = async {
            let resp = self.http.post(&self.config.url).json(&body).send().await.ok()?;
            if resp.status().as_u16() == 403 {
                return Some(false);
            }
            let resp = resp.error_for_status().ok()?;
            Some(resp.json::<Answer>().await.ok()?.allow)
        }
        .await;
        match answer {
            Some(allowed) => {
                let mut cache = self.cache.lock();
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(key, (allowed, Instant::now()));
                allowed
            }
            None => {
                tracing::warn!(target: "herald::audit", user, channel, "subscribe hook failed; denying");
                false
            }
        }
    }
}
