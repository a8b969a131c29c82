//! The subscribe-authorization hook: asks the application's backend whether a user may
//! subscribe to a channel (seed 001: "may this user view this campaign"), with a short cache.

use crate::config::HookConfig;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

/// What the hook answered: `{"allow": true}`, optionally with a view `filter` the user is held
/// to on that channel (then only view subscriptions are allowed, each ANDed with it).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Answer {
    /// Whether the user may subscribe.
    pub allow: bool,
    /// The view filter the user is held to, if any.
    #[serde(default)]
    pub filter: Option<String>,
}

/// Client of the hook with its answer cache.
pub struct SubscribeHook {
    /// Where and how long.
    config: HookConfig,
    /// HTTP client with the hook's timeout.
    http: reqwest::Client,
    /// (user, channel) → (answer, when asked).
    cache: Mutex<HashMap<(String, String), (Answer, Instant)>>,
}

impl SubscribeHook {
    /// A hook client.
    pub fn new(config: HookConfig) -> SubscribeHook {
        let http = reqwest::Client::builder().timeout(config.timeout).build().unwrap_or_default();
        SubscribeHook { config, http, cache: Mutex::new(HashMap::new()) }
    }

    /// The hook's answer. Errors and timeouts deny (and are not cached).
    pub async fn answer(&self, user: &str, channel: &str, client: &str) -> Answer {
        let key = (user.to_string(), channel.to_string());
        if let Some((answer, at)) = self.cache.lock().get(&key)
            && at.elapsed() < self.config.cache_ttl
        {
            return answer.clone();
        }
        let body = serde_json::json!({ "user": user, "channel": channel, "client": client });
        let answer = async {
            let resp = self.http.post(&self.config.url).json(&body).send().await.ok()?;
            if resp.status().as_u16() == 403 {
                return Some(Answer::default());
            }
            let resp = resp.error_for_status().ok()?;
            resp.json::<Answer>().await.ok()
        }
        .await;
        match answer {
            Some(answer) => {
                let mut cache = self.cache.lock();
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(key, (answer.clone(), Instant::now()));
                answer
            }
            None => {
                tracing::warn!(target: "herald::audit", user, channel, "subscribe hook failed; denying");
                Answer::default()
            }
        }
    }
}
