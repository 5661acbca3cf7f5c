//! Several instances as one, beyond tenants' key-value state: cache purges and bans made on one
//! instance reach every instance that names the same Redis in `[cluster]`, over its pub/sub.
//!
//! Each instance publishes what it does (a purge through the admin API, a ban or a lift from the
//! admin API or a filter) on one channel, `<key_prefix>:cluster`, and applies what the others
//! publish. Bans are also kept in a hash, `<key_prefix>:bans`, which an instance reads whenever it
//! (re)subscribes, so that one starting late, or cut off for a while, learns the bans in force.
//! Delivery is at most once: an instance that is cut off from Redis misses the purges meanwhile
//! (its cache entries expire by themselves), never the bans. Nothing here is on a request's path:
//! publishing is a bounded queue drained by one task, applying is another task.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sluice_access::{Ban, BanOrigin, BanRequest, BanScope, BlockChange, BlockList};
use sluice_cache::{HttpCache, PurgeTarget};
use sluice_runtime::kv::RedisKv;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages waiting to be published; past this, new ones are dropped (and logged).
const OUTBOX: usize = 4096;

/// One thing an instance did that the others should do too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Message {
    Purge { key: Option<String>, prefix: Option<String>, tag: Option<String>, route: Option<String> },
    Ban(SharedBan),
    Lift { network: String, tenant: Option<String>, every_scope: bool },
}

/// A ban as instances exchange it: its end in wall-clock time, which every instance reads alike.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SharedBan {
    network: String,
    tenant: Option<String>,
    reason: String,
    until_unix_ms: u64,
    route: Option<String>,
    filter: Option<String>,
}

/// A message with the instance that sent it (which ignores its own).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    message: Message,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

impl SharedBan {
    fn of(ban: &Ban) -> Self {
        let (route, filter) = match &ban.origin {
            BanOrigin::Admin => (None, None),
            BanOrigin::Filter { route, filter } => (Some(route.to_string()), Some(filter.to_string())),
        };
        Self {
            network: ban.network.to_string(),
            tenant: match &ban.scope {
                BanScope::All => None,
                BanScope::Tenant(name) => Some(name.to_string()),
            },
            reason: ban.reason.clone(),
            until_unix_ms: unix_ms(ban.until_wall),
            route,
            filter,
        }
    }

    /// The field it is kept under in the bans hash: one per network and scope.
    fn field(&self) -> String {
        format!("{}|{}", self.tenant.as_deref().unwrap_or("*"), self.network)
    }

    /// The request that sets it here, or `None` once it has ended (or does not parse).
    fn request(&self) -> Option<BanRequest> {
        let left = self.until_unix_ms.checked_sub(unix_ms(SystemTime::now())).filter(|left| *left > 0)?;
        let origin = match (&self.route, &self.filter) {
            (Some(route), Some(filter)) => {
                BanOrigin::Filter { route: route.as_str().into(), filter: filter.as_str().into() }
            }
            _ => BanOrigin::Admin,
        };
        Some(BanRequest {
            network: self.network.parse().ok()?,
            scope: scope(self.tenant.as_deref()),
            duration: Duration::from_millis(left),
            reason: self.reason.clone(),
            origin,
            tenant_limit: usize::MAX,
        })
    }
}

fn scope(tenant: Option<&str>) -> BanScope {
    match tenant {
        Some(name) => BanScope::Tenant(name.into()),
        None => BanScope::All,
    }
}

/// This instance's end of the cluster.
#[derive(Debug)]
pub struct Cluster {
    instance: String,
    outbox: mpsc::Sender<Message>,
}

struct Names {
    channel: String,
    bans: String,
}

impl Cluster {
    /// Joins the cluster of `redis`: publishes this instance's purges and `blocks`' changes, and
    /// applies the others' to `cache` and `blocks`, until `stop`.
    pub fn join(redis: &RedisKv, cache: Arc<HttpCache>, blocks: Arc<BlockList>, stop: CancellationToken) -> Arc<Self> {
        let prefix = &redis.settings().key_prefix;
        let names = Arc::new(Names { channel: format!("{prefix}:cluster"), bans: format!("{prefix}:bans") });
        let instance = uuid::Uuid::new_v4().to_string();
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let cluster = Arc::new(Self { instance: instance.clone(), outbox });
        let client = redis.client().clone();
        tokio::spawn(publish(client.clone(), names.clone(), instance.clone(), queued, stop.clone()));
        tokio::spawn(subscribe(client, names, instance, cache, blocks.clone(), stop));
        let publisher = cluster.clone();
        blocks.observe(Box::new(move |change| {
            let message = match change {
                BlockChange::Banned(ban) => Message::Ban(SharedBan::of(ban)),
                BlockChange::Lifted { network, scope } => Message::Lift {
                    network: network.to_string(),
                    tenant: match scope {
                        Some(BanScope::Tenant(name)) => Some(name.to_string()),
                        _ => None,
                    },
                    every_scope: scope.is_none(),
                },
            };
            publisher.send(message);
        }));
        cluster
    }

    /// Tells the others of a purge made here.
    pub fn purged(&self, target: PurgeTarget<'_>, route: Option<&str>) {
        let (mut key, mut prefix, mut tag) = (None, None, None);
        match target {
            PurgeTarget::Key(value) => key = Some(value.to_owned()),
            PurgeTarget::Prefix(value) => prefix = Some(value.to_owned()),
            PurgeTarget::Tag(value) => tag = Some(value.to_owned()),
        }
        self.send(Message::Purge { key, prefix, tag, route: route.map(str::to_owned) });
    }

    fn send(&self, message: Message) {
        if self.outbox.try_send(message).is_err() {
            tracing::warn!(instance = %self.instance, "cluster: the outbox is full; a purge or ban was not shared");
        }
    }
}

/// Publishes queued messages; bans also go into the bans hash.
async fn publish(
    client: redis::Client,
    names: Arc<Names>,
    instance: String,
    mut queued: mpsc::Receiver<Message>,
    stop: CancellationToken,
) {
    let mut connection = None;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = queued.recv() => match message { Some(message) => message, None => return },
        };
        if connection.is_none() {
            connection = client.get_connection_manager().await.ok();
        }
        let Some(redis) = connection.as_mut() else {
            tracing::warn!("cluster: Redis unreachable; a purge or ban was not shared");
            continue;
        };
        let text = match serde_json::to_string(&Envelope { from: instance.clone(), message: message.clone() }) {
            Ok(text) => text,
            Err(_) => continue,
        };
        let mut pipeline = redis::pipe();
        match &message {
            Message::Ban(ban) => {
                pipeline.hset(&names.bans, ban.field(), serde_json::to_string(ban).unwrap_or_default()).ignore();
            }
            Message::Lift { network, tenant, every_scope } => {
                let fields: Vec<String> = if *every_scope {
                    let held: Vec<String> = redis.hkeys(&names.bans).await.unwrap_or_default();
                    held.into_iter().filter(|field| field.ends_with(&format!("|{network}"))).collect()
                } else {
                    vec![format!("{}|{network}", tenant.as_deref().unwrap_or("*"))]
                };
                if !fields.is_empty() {
                    pipeline.hdel(&names.bans, fields).ignore();
                }
            }
            Message::Purge { .. } => {}
        }
        pipeline.publish(&names.channel, text).ignore();
        if let Err(error) = pipeline.query_async::<()>(redis).await {
            tracing::warn!(error = %error, "cluster: could not publish a purge or ban");
        }
    }
}

/// Applies the others' messages, (re)subscribing with a pause after each failure, and reading
/// the bans in force each time it has subscribed.
async fn subscribe(
    client: redis::Client,
    names: Arc<Names>,
    instance: String,
    cache: Arc<HttpCache>,
    blocks: Arc<BlockList>,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&names.channel).await?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let held: std::collections::HashMap<String, String> = connection.hgetall(&names.bans).await?;
            let mut ended = Vec::new();
            for (field, text) in held {
                match serde_json::from_str::<SharedBan>(&text).ok().and_then(|ban| ban.request()) {
                    Some(request) => {
                        let _ = blocks.apply(request);
                    }
                    None => ended.push(field),
                }
            }
            if !ended.is_empty() {
                let _: redis::RedisResult<()> = connection.hdel(&names.bans, ended).await;
            }
            tracing::info!(channel = %names.channel, "cluster: joined");
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(text) = message.get_payload::<String>() else { continue };
                let Ok(envelope) = serde_json::from_str::<Envelope>(&text) else { continue };
                if envelope.from != instance {
                    apply(envelope.message, &cache, &blocks);
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = session => outcome,
        };
        if let Err(error) = outcome {
            tracing::warn!(error = %error, "cluster: lost Redis; purges and bans from other instances wait until it is back");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn apply(message: Message, cache: &HttpCache, blocks: &BlockList) {
    match message {
        Message::Purge { key, prefix, tag, route } => {
            let target = match (&key, &prefix, &tag) {
                (Some(key), None, None) => PurgeTarget::Key(key),
                (None, Some(prefix), None) => PurgeTarget::Prefix(prefix),
                (None, None, Some(tag)) => PurgeTarget::Tag(tag),
                _ => return,
            };
            let purged = cache.purge(target, route.as_deref());
            tracing::info!(?target, purged, "cache purged by another instance");
        }
        Message::Ban(ban) => {
            if let Some(request) = ban.request() {
                let _ = blocks.apply(request);
            }
        }
        Message::Lift { network, tenant, every_scope } => {
            if let Ok(network) = network.parse::<IpNet>() {
                let scope = (!every_scope).then(|| scope(tenant.as_deref()));
                blocks.apply_lift(network, scope.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_written() {
        let ban = SharedBan {
            network: "192.0.2.7/32".into(),
            tenant: Some("shop".into()),
            reason: "waf".into(),
            until_unix_ms: unix_ms(SystemTime::now()) + 60_000,
            route: Some("shop".into()),
            filter: Some("waf".into()),
        };
        let text = serde_json::to_string(&Envelope { from: "a".into(), message: Message::Ban(ban.clone()) }).unwrap();
        let read: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(read.message, Message::Ban(ban.clone()));
        assert_eq!(ban.field(), "shop|192.0.2.7/32");
        let request = ban.request().unwrap();
        assert_eq!(request.scope, BanScope::Tenant("shop".into()));
        assert!(request.duration <= Duration::from_secs(60));
        let ended = SharedBan { until_unix_ms: 1, ..ban };
        assert!(ended.request().is_none(), "an ended ban is not applied");
    }
}
