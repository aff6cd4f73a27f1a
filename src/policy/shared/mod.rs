//! Limits and quotas shared by the sidecars of an account through Redis (`[cluster] redis_url`):
//! per account, the hourly count and the plans reserved against it, the burst limiter and the
//! pauses learned from the upstream; per member, the quota ledger. Every update is one Lua script,
//! run atomically by Redis on its own clock. Every plan and lease a sidecar holds has a TTL that it
//! renews while its upload runs, so what a killed sidecar held comes back within
//! `cluster.lease_ttl_secs`. Keys (all under `cluster.key_prefix`, all expiring):
//!
//! | key | what |
//! |---|---|
//! | `{p}:a:{account}:hour` | the clock hour and the calls made in it |
//! | `{p}:a:{account}:plans`, `…:plans:x` | calls left per plan, and each plan's expiry |
//! | `{p}:a:{account}:gcra` | the burst limiter's theoretical arrival time |
//! | `{p}:a:{account}:pause` | the end of a pause learned from the upstream |
//! | `{p}:m:{member}:e`, `…:x` | the member's leases and unused uploads (bytes), and their expiries |
//! | `{p}:u:{upload}` | the member of an unused upload, until it expires |
//! | `{p}:epoch` | a token of the data Redis holds: another than last seen means it was lost |
//!
//! **Redis down or slow** (an operation takes longer than `cluster.op_timeout_ms`): the sidecar
//! falls back to its share (`1/replicas`) of every limit and quota, counted in process, logs it
//! once, sets `chunkgate_cluster_fallback` to 1, and looks every second until Redis answers again.
//! It never falls back to the whole account's limits.

mod pacing;
mod quota;
mod store;

use std::{sync::Arc, time::Duration};

use self::store::{PROBE_EVERY, Redis};
pub use self::{pacing::SharedPacing, quota::SharedQuota};
use crate::{
    config::Config,
    policy::{pacing::Pacing, quota::Quota},
};

/// The pacing and the quota a gateway runs under.
pub type Policies = (Arc<dyn Pacing>, Arc<dyn Quota>);

/// The policies of a gateway with `[cluster] redis_url` set: shared through Redis, with this
/// sidecar's share counted locally while Redis cannot be reached.
pub fn policies(config: &Config) -> Result<Policies, String> {
    let redis = Redis::connect(config)?;
    let pacing = SharedPacing::new(redis.clone(), config);
    let quota = SharedQuota::new(redis.clone(), config);
    // Renewals and the probe run for as long as the policies live.
    let (weak_pacing, weak_quota, weak_redis) =
        (Arc::downgrade(&pacing), Arc::downgrade(&quota), Arc::downgrade(&redis));
    let every = (redis.ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(20));
    tokio::spawn(async move {
        let mut renew = tokio::time::interval(every);
        let mut probe = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let (Some(p), Some(q)) = (weak_pacing.upgrade(), weak_quota.upgrade()) else { return };
                    q.restore_if_lost().await;
                    p.renew().await;
                    q.renew().await;
                    q.refresh_held().await;
                }
                _ = probe.tick() => {
                    let Some(r) = weak_redis.upgrade() else { return };
                    r.probe().await;
                }
            }
        }
    });
    Ok((pacing, quota))
}
