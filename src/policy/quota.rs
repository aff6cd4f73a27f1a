//! The upload quota, behind the [`Quota`] trait: uploads of an account running at once and the bytes
//! they may hold, as the upstream's per-member quota allows, so uploads wait here for room instead
//! of being refused upstream. [`LocalQuota`] counts in this process; one that shares the counts
//! between sidecars slots in behind the same trait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Semaphore;

use super::pacing::BoxFuture;
use crate::config::QuotaConfig;

/// Room for one upload, given back when dropped.
pub struct Lease(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Lease {
    /// A lease that gives its room back by dropping `held`.
    pub fn holding(held: impl Send + Sync + 'static) -> Self {
        Self(Box::new(held))
    }
}

/// Whose quota an upload counts against: its account, and its member (the user behind the token,
/// named by a digest of the token, never the token itself).
#[derive(Clone, Copy, Debug)]
pub struct Holder<'a> {
    pub account: &'a str,
    pub member: &'a str,
}

pub trait Quota: Send + Sync {
    /// Waits up to `wait` for room for one more upload of `bytes` for `holder`; `None` when the
    /// wait runs out.
    fn lease<'a>(&'a self, holder: Holder<'a>, bytes: u64, wait: Duration) -> BoxFuture<'a, Option<Lease>>;
}

/// Per account: uploads running and the KiB they hold, as semaphores.
struct AccountRoom {
    uploads: Arc<Semaphore>,
    /// KiB (a semaphore counts in u32).
    kib: Arc<Semaphore>,
}

/// This process's own counts, per account (`quota.uploads_per_account`, `quota.bytes_per_account`).
pub struct LocalQuota {
    config: QuotaConfig,
    accounts: Mutex<HashMap<String, Arc<AccountRoom>>>,
}

// === impl LocalQuota ===

impl LocalQuota {
    pub fn new(config: QuotaConfig) -> Self {
        Self { config, accounts: Mutex::new(HashMap::new()) }
    }

    /// The account byte quota in KiB, the unit of its semaphore.
    fn quota_kib(&self) -> u64 {
        (self.config.bytes_per_account / 1024).clamp(1, u32::MAX as u64)
    }

    fn room(&self, account: &str) -> Arc<AccountRoom> {
        let mut map = self.accounts.lock().unwrap();
        map.entry(account.to_owned())
            .or_insert_with(|| {
                Arc::new(AccountRoom {
                    uploads: Arc::new(Semaphore::new(self.config.uploads_per_account as usize)),
                    kib: Arc::new(Semaphore::new(self.quota_kib() as usize)),
                })
            })
            .clone()
    }
}

impl Quota for LocalQuota {
    fn lease<'a>(&'a self, holder: Holder<'a>, bytes: u64, wait: Duration) -> BoxFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let room = self.room(holder.account);
            let kib = bytes.min(self.config.bytes_per_account).div_ceil(1024).clamp(1, self.quota_kib()) as u32;
            let turn = tokio::time::timeout(wait, async {
                let upload = room.uploads.clone().acquire_owned().await.expect("never closed");
                let bytes = room.kib.clone().acquire_many_owned(kib).await.expect("never closed");
                (upload, bytes)
            });
            turn.await.ok().map(Lease::holding)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_account_gets_room_for_its_uploads_and_bytes_and_no_more() {
        let q = LocalQuota::new(QuotaConfig { uploads_per_account: 2, bytes_per_account: 10 * 1024, wait_secs: 0 });
        let short = Duration::from_millis(20);
        let one = Holder { account: "1", member: "m" };
        let a = q.lease(one, 1024, short).await.expect("room");
        let b = q.lease(one, 1024, short).await.expect("room");
        assert!(q.lease(one, 1024, short).await.is_none(), "two uploads at most");
        let two = Holder { account: "2", member: "m" };
        assert!(q.lease(two, 10 * 1024, short).await.is_some(), "accounts are counted apart");
        drop(a);
        assert!(q.lease(one, 10 * 1024, short).await.is_none(), "10 KiB do not fit beside 1 KiB in 10");
        drop(b);
        assert!(q.lease(one, 10 * 1024, short).await.is_some());
    }
}
