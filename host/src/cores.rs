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

/// The core threads, started on first use (or this thread, see [`run_here`]).
static CORES: OnceLock<Vec<Core>> = OnceLock::new();

fn cores() -> &'static [Core] {
    CORES.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).map(start).collect()
    })
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building an instance runtime")
}

/// Makes the calling thread the only core and runs `f` on it, with every
/// instance it spawns: for `edgeinfer bench`, which then times its native
/// ways, warm instances and cold ones on one thread, one CPU and its caches.
/// Across two vCPUs of a small VM, cold calls carried their CPU's own noise
/// (embed's paired cold − warm p50: 0.8–1.1 ms across CPUs, 0.2–0.5 ms on
/// one), and a model run on the instance thread after native tract ran on
/// another ran 1.4× slower (ppocr-cls). Fails if the cores have started.
/// No other core starts afterwards: instances spawned once `f` has returned
/// never run.
pub fn run_here<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let runtime = new_runtime();
    let mut installed = false;
    CORES.get_or_init(|| {
        installed = true;
        vec![Core {
            handle: runtime.handle().clone(),
            load: AtomicUsize::new(0),
        }]
    });
    if !installed {
        anyhow::bail!("the instance threads have already started");
    }
    ON_CORE.with(|c| c.set(true));
    Ok(runtime.block_on(f))
}

fn start(i: usize) -> Core {
    let runtime = new_runtime();
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

/// One more in `count` for as long as it lives: counted out when the work
/// it stands for ends, however it ends (finished, failed or dropped).
pub struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted<'_> {
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
    let loaded = Counted::enter(&core.load);
    core.handle.spawn(async move {
        let _loaded = loaded;
        task.await
    })
}

/// How many core threads run instances.
pub fn count() -> usize {
    cores().len()
}

/// Runs native code `f` on this thread and then clears the upper halves of
/// the vector registers, so that the guest code a core runs next is not
/// slowed by them. tract's x86 assembly kernels return without `vzeroupper`;
/// Cranelift mixes legacy-SSE moves into its AVX code, and on Intel CPUs
/// with AVX-512 each such move then waits on a merge with the dirty upper
/// state: a guest's tract ran 80× slower (ppocr-cls 5.4 ms → 415 ms) after a
/// `wasi:nn` compute on the same core.
pub fn run_native<R>(f: impl FnOnce() -> R) -> R {
    let result = f();
    zero_upper_vector_state();
    result
}

#[cfg(target_arch = "x86_64")]
fn zero_upper_vector_state() {
    #[target_feature(enable = "avx")]
    fn vzeroupper() {
        std::arch::x86_64::_mm256_zeroupper();
    }
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        unsafe { vzeroupper() }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn zero_upper_vector_state() {}

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

    /// Dirties the upper halves of ymm0 as tract's kernels leave them: a
    /// 256-bit instruction in a function the compiler does not know uses AVX,
    /// so it adds no `vzeroupper` of its own.
    #[cfg(target_arch = "x86_64")]
    fn dirty_upper_vector_state() {
        // SAFETY: only called when the CPU has AVX; clobbers xmm0 (ymm0).
        unsafe { std::arch::asm!("vpcmpeqd ymm0, ymm0, ymm0", out("xmm0") _) };
    }

    /// Whether the upper halves of ymm0–15 are in use (XINUSE bit 2).
    #[cfg(target_arch = "x86_64")]
    fn upper_vector_state_in_use() -> bool {
        let (lo, _hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 1 is supported (checked by the caller).
        unsafe { std::arch::asm!("xgetbv", in("ecx") 1, out("eax") lo, out("edx") _hi) };
        lo & (1 << 2) != 0
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn native_code_leaves_the_upper_vector_state_clean() {
        // CPUID.(EAX=0Dh, ECX=1):EAX bit 2: XGETBV can report XINUSE.
        let xinuse = std::arch::x86_64::__cpuid_count(0xd, 1).eax & (1 << 2) != 0;
        assert!(
            std::arch::is_x86_feature_detected!("avx") && xinuse,
            "this test needs an x86-64 CPU with AVX and XGETBV's XINUSE"
        );
        dirty_upper_vector_state();
        assert!(upper_vector_state_in_use(), "the probe did not dirty ymm0");
        run_native(dirty_upper_vector_state);
        assert!(!upper_vector_state_in_use());
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
