//! The Postgres outbox source (feature `postgres`): the application inserts a row into an outbox
//! table in the same transaction as its data change; the bridge reads the rows in id order,
//! publishes them, and deletes each one once everything it maps to was published.
//!
//! ```toml
//! [[bridge]]
//! name = "decisions"
//! source = "postgres"
//! url = "postgres://herald@127.0.0.1:5432/app"  # or key=value (host=… dbname=…)
//! table = "herald_outbox"                      # the outbox (`schema.table` allowed)
//! dead_letter_table = "herald_outbox_dead"     # default: TABLE_dead
//! channel = "herald_outbox"                    # LISTEN channel; default: the table's name
//! poll = "1s"                                  # reads this often without a notification
//! batch = 100                                  # rows per read
//! ```
//!
//! # Tables
//!
//! [`schema`] gives the SQL (also in docs/bridge.md, "Postgres outbox"): the outbox
//! `(id bigserial primary key, subject text, payload jsonb, created_at timestamptz)`, the
//! dead-letter table `(id bigint primary key, subject, payload, reason, failed_at)`, a statement
//! trigger that `NOTIFY`s the channel after inserts (delivered at commit), and a statement
//! trigger that serializes outbox writers (see below). The bridge never creates or alters them.
//!
//! # Reading, acknowledging, dead letters
//!
//! A read is `SELECT id, subject, payload FROM TABLE ORDER BY id LIMIT batch`: the rows still
//! there are exactly the events not acknowledged, so a restart or a takeover starts with the
//! first unacknowledged one, whoever read it before. The rows read are kept in the source and
//! returned one at a time; `ack` deletes the row (`DELETE … WHERE id = $1`) and moves on. When
//! the read comes back empty the source waits for a notification on `channel` (`LISTEN`), or
//! `poll` at most (a missed notification, a writer without the trigger). The event's id is the
//! row id; its subject the `subject` column; its payload the `payload` column.
//!
//! `dead_letter` moves the row in one statement (`WITH moved AS (DELETE … RETURNING …) INSERT
//! INTO dead … ON CONFLICT (id) DO NOTHING`): a crash can neither lose it nor write it twice;
//! the runner's `ack` afterwards finds nothing left to delete.
//!
//! `next()` is cancel-safe: the source changes its state only after a query completed, and a
//! row returned but not acknowledged is returned again. A row someone else already deleted (the
//! node that took the source over while this one was away) makes the source drop what it read
//! and read again (the publication it led to was a duplicate).
//!
//! # Order
//!
//! `bigserial` ids are taken when a row is inserted, not when its transaction commits: without
//! more, a transaction that inserted id 7 may commit after one that inserted id 8, and the bridge
//! may then publish 8 before 7. Nothing is lost (7 is still in the table and read next), but
//! the channel's order is not the id order. The schema's `TABLE_order` trigger prevents it: a
//! `BEFORE INSERT … FOR EACH STATEMENT` trigger takes `pg_advisory_xact_lock(hashtext('TABLE'))`
//! before the statement draws its ids, and the lock is held until the transaction ends, so
//! outbox-writing transactions draw ids and commit one after the other, and rows become visible
//! in id order. The cost: those transactions are serialized from their first outbox insert to
//! their commit (insert outbox rows last in the transaction, and keep it short).
//!
//! # Outages and lag
//!
//! The connection (and its `LISTEN`) is made by the first read and again after it broke: while
//! the server is away every call answers [`SourceError::Unavailable`] (the bridge reports
//! `up: false`), and a waiting `next()` is woken with it when the connection ends. TLS is not
//! supported (`sslmode=require` is refused by `check`). A table whose columns are not the
//! documented ones (a NULL subject, a `text` payload) is reported the same way, naming the table.
//! The lag is `SELECT count(*)` of the outbox, at most once a second.

use crate::config::BridgeConfig;
use crate::source::{Event, EventSource, SourceError};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;

/// The options of a `source = "postgres"` bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresOptions {
    /// The database, `postgres://USER@HOST:PORT/DB` (or libpq's `key=value` form).
    pub url: String,
    /// The outbox table (lowercase identifiers, `schema.table` allowed).
    #[serde(default = "default_table")]
    pub table: String,
    /// Where refused rows are moved, with the reason; default `TABLE_dead`.
    #[serde(default)]
    pub dead_letter_table: Option<String>,
    /// The `LISTEN` channel the outbox's trigger notifies; default the table's name.
    #[serde(default)]
    pub channel: Option<String>,
    /// How long the source waits for a notification before reading anyway.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// Rows per read.
    #[serde(default = "default_batch")]
    pub batch: u32,
}

fn default_table() -> String {
    "herald_outbox".into()
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_batch() -> u32 {
    100
}

/// How often the lag is counted at most.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `name` is a lowercase SQL identifier (so quoted or not it names the same thing).
fn identifier(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `name` is `table` or `schema.table`, both lowercase identifiers.
fn table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| identifier(p))
}

/// The table's name without its schema.
fn unqualified(table: &str) -> &str {
    table.rsplit('.').next().unwrap_or(table)
}

/// The options, checked, with defaults filled in.
#[derive(Debug, Clone)]
struct Resolved {
    /// The parsed connection settings.
    connect: tokio_postgres::Config,
    /// The outbox.
    table: String,
    /// The dead-letter table.
    dead: String,
    /// The `LISTEN` channel.
    channel: String,
    /// The fallback read interval.
    poll: Duration,
    /// Rows per read.
    batch: i64,
}

/// Parses and checks a bridge's options, without connecting.
pub fn options(config: &BridgeConfig) -> Result<PostgresOptions, String> {
    resolve(config).map(|(o, _)| o)
}

fn resolve(config: &BridgeConfig) -> Result<(PostgresOptions, Resolved), String> {
    let o: PostgresOptions =
        config.options.clone().try_into().map_err(|e: toml::de::Error| {
            format!("postgres options: {}", e.message().trim_end())
        })?;
    let is_url = o.url.starts_with("postgres://") || o.url.starts_with("postgresql://");
    if !is_url && !o.url.contains('=') {
        return Err(format!("url: {:?} is not postgres://USER@HOST:PORT/DB", o.url));
    }
    let mut connect = tokio_postgres::Config::from_str(&o.url)
        .map_err(|e| format!("url: {:?} is not a Postgres connection string: {e}", o.url))?;
    if connect.get_hosts().is_empty() {
        return Err(format!("url: {:?} names no host", o.url));
    }
    if connect.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err("url: sslmode=require: TLS to Postgres is not supported".into());
    }
    if connect.get_connect_timeout().is_none() {
        connect.connect_timeout(CONNECT_TIMEOUT);
    }
    connect.application_name(format!("herald-bridge {}", config.name));
    // A server that vanishes without a reset (host down, network cut) is noticed within about
    // a minute rather than the OS default of two hours: the source then reports `up: false`
    // and reconnects.
    connect
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    if !table_name(&o.table) {
        return Err(format!("table: {:?} is not a lowercase table name ([schema.]name)", o.table));
    }
    let dead = o.dead_letter_table.clone().unwrap_or_else(|| format!("{}_dead", o.table));
    if !table_name(&dead) {
        return Err(format!("dead_letter_table: {dead:?} is not a lowercase table name"));
    }
    if dead == o.table {
        return Err("dead_letter_table: must not be the outbox table".into());
    }
    let channel = o.channel.clone().unwrap_or_else(|| unqualified(&o.table).to_string());
    if !identifier(&channel) {
        return Err(format!("channel: {channel:?} is not a lowercase identifier"));
    }
    if o.poll < Duration::from_millis(10) || o.poll > Duration::from_secs(60) {
        return Err("poll: between 10ms and 60s".into());
    }
    if !(1..=10_000).contains(&o.batch) {
        return Err("batch: between 1 and 10000".into());
    }
    let resolved = Resolved {
        connect,
        table: o.table.clone(),
        dead,
        channel,
        poll: o.poll,
        batch: i64::from(o.batch),
    };
    Ok((o, resolved))
}

/// Checks a bridge's options without connecting (for [`crate::sources::check`]).
pub fn check(config: &BridgeConfig) -> Result<(), String> {
    resolve(config).map(drop)
}

/// The SQL that creates an outbox `table`, its dead-letter table `dead` and the triggers that
/// notify `channel` and keep ids in commit order (what docs/bridge.md shows for the defaults).
pub fn schema(table: &str, dead: &str, channel: &str) -> String {
    format!(
        r#"CREATE TABLE {table} (
    id         bigserial   PRIMARY KEY,
    subject    text        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {dead} (
    id        bigint      PRIMARY KEY,  -- the outbox row's id
    subject   text        NOT NULL,
    payload   jsonb       NOT NULL,
    reason    text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);

-- Wakes the bridge when a transaction that inserted rows commits.
CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END $$;
CREATE TRIGGER {table_bare}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();

-- Serializes the transactions that write the outbox, from before their first insert draws an
-- id to their commit, so that rows become visible in id order.
CREATE FUNCTION {table}_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('{table}'));
    RETURN NULL;
END $$;
CREATE TRIGGER {table_bare}_order BEFORE INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_order();
"#,
        table_bare = unqualified(table),
    )
}

/// The connection, once made.
struct Connection {
    /// The client.
    client: tokio_postgres::Client,
    /// Told by the connection's task on every notification (a stored permit when nobody waits).
    notified: Arc<Notify>,
    /// False once the connection's task ended (the server went away).
    alive: watch::Receiver<bool>,
}

/// Reads an outbox table.
pub struct PostgresSource {
    /// The bridge's name (logs).
    bridge: String,
    /// Its options, resolved.
    options: Resolved,
    /// The connection, made by the first call and again after it broke.
    connection: Option<Connection>,
    /// Rows read and not yet acknowledged, smallest id first; the front is the event in hand.
    rows: VecDeque<(i64, Event)>,
    /// The last count of the outbox and when it was taken.
    lag: Option<(Instant, u64)>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(format!("postgres: {what}: {e}"))
}

impl PostgresSource {
    /// A source for `config` (it connects on its first call).
    pub fn new(config: &BridgeConfig) -> Result<PostgresSource, String> {
        let (_, options) = resolve(config)?;
        Ok(PostgresSource {
            bridge: config.name.clone(),
            options,
            connection: None,
            rows: VecDeque::new(),
            lag: None,
        })
    }

    /// The connection, made (with its `LISTEN`) when missing or broken.
    async fn connection(&mut self) -> Result<&Connection, SourceError> {
        if self.connection.as_ref().is_some_and(|c| !*c.alive.borrow() || c.client.is_closed()) {
            self.connection = None;
        }
        if self.connection.is_none() {
            let (client, mut connection) = self
                .options
                .connect
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| unavailable("connect", e))?;
            let notified = Arc::new(Notify::new());
            let (alive_tx, alive) = watch::channel(true);
            let (tell, bridge) = (notified.clone(), self.bridge.clone());
            // Drives the connection (it must be polled for queries and notifications alike).
            tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(_))) => tell.notify_one(),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(bridge = %bridge, error = %e, "postgres: connection ended");
                            break;
                        }
                        None => break,
                    }
                }
                alive_tx.send_replace(false);
            });
            client
                .batch_execute(&format!("LISTEN \"{}\"", self.options.channel))
                .await
                .map_err(|e| unavailable("listen", e))?;
            self.connection = Some(Connection { client, notified, alive });
        }
        Ok(self.connection.as_ref().expect("made above"))
    }

    /// Forgets a connection a query failed on when it is gone (the next call reconnects).
    fn failed(&mut self, what: &str, e: tokio_postgres::Error) -> SourceError {
        if e.is_closed() || self.connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.connection = None;
        }
        unavailable(what, e)
    }

    /// Reads the first `batch` rows of the outbox into `rows`.
    async fn read(&mut self) -> Result<(), SourceError> {
        let sql =
            format!("SELECT id, subject, payload FROM {} ORDER BY id LIMIT $1", self.options.table);
        let batch = self.options.batch;
        let result = self.connection().await?.client.query(&sql, &[&batch]).await;
        let found = result.map_err(|e| self.failed("read", e))?;
        let mut read = Vec::with_capacity(found.len());
        for row in found {
            // A table unlike the documented one (nullable or other column types) is an error
            // to fix, reported like an outage rather than a panic.
            let column = |e: tokio_postgres::Error| {
                SourceError::Unavailable(format!(
                    "postgres: outbox row of {}: {e}",
                    self.options.table
                ))
            };
            let id: i64 = row.try_get(0).map_err(column)?;
            let subject: String = row.try_get(1).map_err(column)?;
            let payload: serde_json::Value = row.try_get(2).map_err(column)?;
            read.push((id, Event { id: id.to_string(), subject, payload }));
        }
        self.rows.extend(read);
        Ok(())
    }

    /// Waits for a notification, `poll`, or the connection's end.
    async fn wait(&mut self) -> Result<(), SourceError> {
        let poll = self.options.poll;
        let connection = self.connection().await?;
        let (notified, mut alive) = (connection.notified.clone(), connection.alive.clone());
        tokio::select! {
            _ = notified.notified() => Ok(()),
            _ = tokio::time::sleep(poll) => Ok(()),
            _ = alive.wait_for(|up| !*up) => {
                self.connection = None;
                Err(SourceError::Unavailable("postgres: connection lost".into()))
            }
        }
    }

    /// The row in hand, when `event` is it.
    fn in_hand(&self, event: &Event) -> Option<i64> {
        self.rows.front().filter(|(_, e)| e.id == event.id).map(|(id, _)| *id)
    }

    /// The row in hand is done: `removed` is whether this call removed it from the outbox.
    fn settled(&mut self, removed: bool) {
        if removed {
            self.rows.pop_front();
        } else {
            // Someone else removed it (a node that read the source meanwhile): what was read
            // is stale.
            tracing::info!(bridge = %self.bridge, "postgres: row already gone; reading again");
            self.rows.clear();
        }
    }
}

#[async_trait]
impl EventSource for PostgresSource {
    async fn next(&mut self) -> Result<Event, SourceError> {
        loop {
            if let Some((_, event)) = self.rows.front() {
                return Ok(event.clone());
            }
            self.read().await?;
            if self.rows.is_empty() {
                self.wait().await?;
            }
        }
    }

    async fn ack(&mut self, event: &Event) -> Result<(), SourceError> {
        let Some(id) = self.in_hand(event) else { return Ok(()) };
        let sql = format!("DELETE FROM {} WHERE id = $1", self.options.table);
        let result = self.connection().await?.client.execute(&sql, &[&id]).await;
        let deleted = result.map_err(|e| self.failed("ack", e))?;
        self.settled(deleted == 1);
        Ok(())
    }

    async fn dead_letter(&mut self, event: &Event, reason: &str) -> Result<(), SourceError> {
        let Some(id) = self.in_hand(event) else { return Ok(()) };
        let sql = format!(
            "WITH moved AS (DELETE FROM {table} WHERE id = $1 RETURNING id, subject, payload) \
             INSERT INTO {dead} (id, subject, payload, reason) \
             SELECT id, subject, payload, $2 FROM moved ON CONFLICT (id) DO NOTHING",
            table = self.options.table,
            dead = self.options.dead,
        );
        let result = self.connection().await?.client.execute(&sql, &[&id, &reason]).await;
        result.map_err(|e| self.failed("dead letter", e))?;
        // The row is gone from the outbox either way; the runner's ack finds nothing to do.
        self.rows.pop_front();
        Ok(())
    }

    async fn lag(&mut self) -> Option<u64> {
        if let Some((at, count)) = self.lag
            && at.elapsed() < LAG_EVERY
        {
            return Some(count);
        }
        let sql = format!("SELECT count(*) FROM {}", self.options.table);
        let counted = match self.connection().await {
            Ok(connection) => connection.client.query_one(&sql, &[]).await.ok(),
            Err(_) => None,
        };
        if let Some(row) = counted {
            let count = row.try_get::<_, i64>(0).ok().and_then(|n| u64::try_from(n).ok());
            let Some(count) = count else { return self.lag.map(|(_, count)| count) };
            self.lag = Some((Instant::now(), count));
        }
        self.lag.map(|(_, count)| count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &str) -> Result<(PostgresOptions, Resolved), String> {
        let text = format!(
            "[[bridge]]\nname = \"b\"\nsource = \"postgres\"\n{keys}\n[[bridge.rule]]\nchannels = [\"s:x\"]\n"
        );
        #[derive(Deserialize)]
        struct Doc {
            bridge: Vec<toml::Table>,
        }
        let doc: Doc = toml::from_str(&text).unwrap();
        let config = BridgeConfig::parse_all(&doc.bridge, |_| true).unwrap().remove(0);
        resolve(&config)
    }

    const OK: &str = "url = \"postgres://postgres@127.0.0.1:5432/app\"";

    #[test]
    fn options_and_defaults() {
        let (o, r) = config(OK).unwrap();
        assert_eq!((o.table.as_str(), r.dead.as_str()), ("herald_outbox", "herald_outbox_dead"));
        assert_eq!(r.channel, "herald_outbox");
        assert_eq!((r.poll, r.batch), (Duration::from_secs(1), 100));
        assert_eq!(r.connect.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let (_, r) = config(&format!(
            "{OK}\ntable = \"app.events\"\npoll = \"200ms\"\nbatch = 5\nchannel = \"wake\""
        ))
        .unwrap();
        assert_eq!((r.dead.as_str(), r.channel.as_str()), ("app.events_dead", "wake"));
        assert_eq!((r.poll, r.batch), (Duration::from_millis(200), 5));
        let (_, r) =
            config("url = \"host=/tmp port=5 user=postgres\"\ntable = \"app.events\"").unwrap();
        assert_eq!(r.channel, "events");
    }

    #[test]
    fn bad_options_name_the_key() {
        let err = |extra: &str| config(&format!("{OK}\n{extra}")).unwrap_err();
        assert!(err("colour = 1").contains("colour"));
        assert!(config("table = \"t\"").unwrap_err().contains("url"));
        assert!(config("url = \"http://x\"").unwrap_err().contains("url"));
        let tls = config("url = \"postgres://h/db?sslmode=require\"").unwrap_err();
        assert!(tls.contains("sslmode"), "{tls}");
        assert!(err("table = \"Outbox\"").contains("table"));
        assert!(err("table = \"a.b.c\"").contains("table"));
        assert!(err("table = \"x; drop table y\"").contains("table"));
        assert!(err("dead_letter_table = \"herald_outbox\"").contains("dead_letter_table"));
        assert!(err("dead_letter_table = \"a-b\"").contains("dead_letter_table"));
        assert!(err("channel = \"a.b\"").contains("channel"));
        assert!(err("poll = \"1ms\"").contains("poll"));
        assert!(err("batch = 0").contains("batch"));
    }
}
