//! Admission control, per component: up to `max_concurrency` instances run
//! at once; up to `max_queue` more requests wait for one in FIFO order
//! (tokio's semaphore hands permits out in the order they were asked for);
//! anything beyond is turned away at once (429), and a request that waited
//! past `queue_timeout_ms` gives up (503). Both carry `Retry-After`.
//!
//! A [`Permit`] stands for one running instance. The server hands it to
//! [`crate::invoke::Runnable::handle_with`], which holds it until the instance
//! is gone, response body included, so `max_concurrency` bounds instances
//! alive and not merely responses being computed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{self, ComponentLabel};
use crate::runtime_config::Scaling;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `max_concurrency` running and `max_queue` already waiting.
    QueueFull,
    /// No instance came free within `queue_timeout_ms`.
    QueueTimeout(Duration),
}

/// One component's gate. Kept across hot reloads while the component's
/// `max_concurrency` and `max_queue` stay the same, so that the limits hold
/// for calls on the old and the new app together.
pub struct Admission {
    label: ComponentLabel,
    max_concurrency: u32,
    max_queue: u32,
    /// Running plus waiting: `max_concurrency + max_queue` permits.
    admitted: Arc<Semaphore>,
    /// Running: `max_concurrency` permits.
    running: Arc<Semaphore>,
    /// When the component was last called or last finished a call, in ms
    /// since `epoch`; scale to zero reads it.
    last_used_ms: AtomicU64,
    epoch: Instant,
}

impl Admission {
    pub fn new(component: &str, scaling: &Scaling) -> Arc<Self> {
        let capacity = scaling.max_concurrency as usize + scaling.max_queue as usize;
        Arc::new(Self {
            label: metrics::component(component),
            max_concurrency: scaling.max_concurrency,
            max_queue: scaling.max_queue,
            admitted: Arc::new(Semaphore::new(capacity)),
            running: Arc::new(Semaphore::new(scaling.max_concurrency as usize)),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Whether this gate enforces `scaling` (so a reload may keep it).
    pub fn fits(&self, component: &str, scaling: &Scaling) -> bool {
        self.label.component == component
            && self.max_concurrency == scaling.max_concurrency
            && self.max_queue == scaling.max_queue
    }

    /// Waits (FIFO, at most `queue_timeout`) for a free instance slot.
    pub async fn admit(self: &Arc<Self>, queue_timeout: Duration) -> Result<Permit, Rejected> {
        self.touch();
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Rejected::QueueFull)?;
        let running = match self.running.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let pending = metrics::global().pending.get_or_create_owned(&self.label);
                pending.inc();
                // Decrements even if the client goes away while it waits.
                let _waiting = scopeguard(move || {
                    pending.dec();
                });
                match tokio::time::timeout(queue_timeout, self.running.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed.
                    Ok(Err(_)) | Err(_) => return Err(Rejected::QueueTimeout(queue_timeout)),
                }
            }
        };
        metrics::global().instances.get_or_create(&self.label).inc();
        Ok(Permit {
            gate: self.clone(),
            _admitted: admitted,
            _running: running,
        })
    }

    /// True when no call is running or waiting.
    pub fn is_idle(&self) -> bool {
        self.admitted.available_permits() == self.max_concurrency as usize + self.max_queue as usize
    }

    /// How long since the component was last called or finished a call.
    pub fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.fetch_max(now, Ordering::Relaxed);
    }
}

/// A running instance's slot, released when dropped.
pub struct Permit {
    gate: Arc<Admission>,
    _admitted: OwnedSemaphorePermit,
    _running: OwnedSemaphorePermit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.touch();
        metrics::global()
            .instances
            .get_or_create(&self.gate.label)
            .dec();
    }
}

struct ScopeGuard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(max_concurrency: u32, max_queue: u32) -> Scaling {
        Scaling {
            max_concurrency,
            max_queue,
            queue_timeout: Duration::from_millis(50),
            idle_unload: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn full_queue_is_rejected_and_waiters_time_out() {
        let gate = Admission::new("unit-a", &scaling(1, 1));
        let first = gate.admit(Duration::from_secs(1)).await.unwrap();
        assert!(!gate.is_idle());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(Duration::from_millis(50)).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // One running, one waiting: the third is turned away at once.
        assert_eq!(
            gate.admit(Duration::from_secs(1)).await.err(),
            Some(Rejected::QueueFull)
        );
        assert_eq!(
            waiter.await.unwrap().err(),
            Some(Rejected::QueueTimeout(Duration::from_millis(50)))
        );
        drop(first);
        assert!(gate.is_idle());
    }

    #[tokio::test]
    async fn waiters_are_served_in_order() {
        let gate = Admission::new("unit-b", &scaling(1, 8));
        let first = gate.admit(Duration::from_secs(1)).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let p = gate.admit(Duration::from_secs(5)).await.unwrap();
                order.lock().unwrap().push(i);
                drop(p);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
