//! The machine description: what the numbers were measured on.

use serde::Serialize;

use super::Settings;

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    pub(super) load_average_start: Option<[f64; 3]>,
    pub(super) load_average_end: Option<[f64; 3]>,
    pinned_cpus: Vec<usize>,
    /// Whether shmpipe sleeps with membarrier(2) here, so that publications need no fence
    /// (`shmpipe_ring::membarrier_available()`, asked in the parent: the workers run the same
    /// kernel under the same sandbox).
    membarrier: bool,
    /// The same, in words.
    wake_up_fence: &'static str,
    shmpipe_version: &'static str,
    unix_time: u64,
}

impl Machine {
    pub(super) fn probe(s: &Settings) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let membarrier = shmpipe_ring::membarrier_available();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            load_average_start: loadavg(),
            load_average_end: None,
            pinned_cpus: s.cpus.clone(),
            membarrier,
            wake_up_fence: if membarrier {
                "membarrier (asymmetric)"
            } else {
                "SeqCst fences (membarrier unavailable)"
            },
            shmpipe_version: env!("CARGO_PKG_VERSION"),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    pub(super) fn finish(mut self) -> Machine {
        self.load_average_end = loadavg();
        self
    }

    pub(super) fn describe(&self, s: &Settings) -> String {
        let pin = match s.cpus.as_slice() {
            [a, b] => format!("producer pinned to CPU {a}, consumer to CPU {b}"),
            [a] => {
                format!("both sides pinned to CPU {a} (one CPU: spinning transports will crawl)")
            }
            _ => "not pinned".into(),
        };
        let load = self
            .load_average_start
            .map(|l| format!("; load average {:.2} {:.2} {:.2}", l[0], l[1], l[2]))
            .unwrap_or_default();
        format!(
            "shmpipe bench: {} CPUs ({}), Linux {}; wake-up fence: {}{load}\n{pin}; rings of {} bytes connected by {}; {} ms warm-up + {} ms per cell{}",
            self.cpus,
            self.cpu_model,
            self.kernel,
            self.wake_up_fence,
            s.capacity,
            "the handshake",
            s.warmup_ms,
            s.measure_ms,
            if s.batch > 1 {
                format!(
                    "; shmpipe and shmem-ipc producers publish every {} messages",
                    s.batch
                )
            } else {
                String::new()
            }
        )
    }

    pub(super) fn describe_short(&self) -> String {
        format!(
            "{} CPUs, {}, Linux {}, wake-up fence: {}",
            self.cpus, self.cpu_model, self.kernel, self.wake_up_fence
        )
    }
}

fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}
