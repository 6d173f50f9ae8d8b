//! Where instances run: one thread per core, each driving a current-thread
//! runtime. An instance's guest code and its `wasi:nn` computes run on the
//! same thread, so a call crosses threads only to enter and to leave the
//! instance (a cross-CPU wake-up costs ~40 µs on a small VM), and the HTTP
//! runtime's threads never run guest code or models.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

struct Core {
    handle: Handle,
    /// Tasks spawned here and not yet finished.
    load: AtomicUsize,
}

thread_local! {
    static ON_CORE: Cell<bool> = const { Cell::new(false) };
}

fn cores() -> &'static [Core] {
    static CORES: OnceLock<Vec<Core>> = OnceLock::new();
    CORES.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).map(start).collect()
    })
}

fn start(i: usize) -> Core {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building an instance runtime");
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("core-{i}"))
        .spawn(move || {
            ON_CORE.with(|c| c.set(true));
            // Runs the tasks spawned onto `handle` for the life of the process.
            runtime.block_on(std::future::pending::<()>());
        })
        .expect("spawning an instance thread");
    Core {
        handle,
        load: AtomicUsize::new(0),
    }
}

/// Decrements a core's load when its task ends, however it ends.
struct Loaded(&'static AtomicUsize);

impl Drop for Loaded {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `task` on the least busy core.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let core = cores()
        .iter()
        .min_by_key(|c| c.load.load(Ordering::Relaxed))
        .expect("at least one core");
    core.load.fetch_add(1, Ordering::Relaxed);
    let loaded = Loaded(&core.load);
    core.handle.spawn(async move {
        let _loaded = loaded;
        task.await
    })
}

/// True on a core's thread: blocking work here holds up only the instances
/// of this core, which is where their CPU time would go anyway.
pub fn on_core() -> bool {
    ON_CORE.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cores are the process's: these tests would see each other's load.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn thread_name() -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn tasks_run_on_a_core_thread() {
        let _serial = ONE_AT_A_TIME.lock().await;
        assert!(!on_core());
        let (on, name) = spawn(async { (on_core(), thread_name()) }).await.unwrap();
        assert!(on);
        assert!(name.starts_with("core-"), "ran on {name}");
    }

    #[tokio::test]
    async fn a_busy_core_is_passed_over() {
        let _serial = ONE_AT_A_TIME.lock().await;
        assert!(!cores().is_empty());
        // Occupy every core but one; the next task must go to the free one.
        let (release, held) = tokio::sync::watch::channel(false);
        let mut busy = Vec::new();
        for _ in 1..cores().len() {
            let mut held = held.clone();
            busy.push(spawn(async move {
                let _ = held.wait_for(|go| *go).await;
                thread_name()
            }));
        }
        let free = spawn(async { thread_name() }).await.unwrap();
        release.send(true).unwrap();
        for task in busy {
            assert_ne!(task.await.unwrap(), free);
        }
    }
}
