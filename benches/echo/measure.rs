//! Reading what the kernel knows about a server: CPU time and RSS from
//! `/proc/PID`, open descriptors, and loopback drops from
//! `/proc/net/softnet_stat`.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of the whole process (all its threads), in seconds.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // utime and stime are fields 14 and 15; fields[0] is field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Number of open descriptors.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Waits until the process holds at least `want` descriptors; returns the
/// last count seen.
pub fn wait_fds(pid: i32, want: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = fd_count(pid).unwrap_or(0);
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Packets dropped by the receive path, summed over CPUs (2nd column of
/// `/proc/net/softnet_stat`, hexadecimal).
pub fn softnet_dropped() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/softnet_stat").ok()?;
    let mut sum = 0;
    for line in text.lines() {
        let field = line.split_whitespace().nth(1)?;
        sum += u64::from_str_radix(field, 16).ok()?;
    }
    Some(sum)
}

/// Watches loopback drops across one measurement.
pub struct Drops(Option<u64>);

impl Drops {
    pub fn start() -> Drops {
        Drops(softnet_dropped())
    }

    /// Drops since `start` (0 when the file cannot be read).
    pub fn since(&self) -> u64 {
        match (self.0, softnet_dropped()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }
}

/// Samples a process's CPU time every few milliseconds on a thread, so the
/// CPU used over a window known only afterwards (the load's measured
/// window) can be read back.
pub struct CpuSampler {
    samples: Arc<Mutex<Vec<(Instant, f64)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl CpuSampler {
    pub fn start(pid: i32) -> CpuSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&samples), Arc::clone(&stop));
        let handle = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(cpu) = cpu_secs(pid) {
                    s.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((Instant::now(), cpu));
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        CpuSampler {
            samples,
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns the server CPU seconds between `from` and
    /// `to` (from the last sample at or before `from` to the first at or
    /// after `to`).
    pub fn window(mut self, from: Instant, to: Instant) -> Option<f64> {
        self.finish();
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let before = samples.iter().rev().find(|s| s.0 <= from)?;
        let after = samples.iter().find(|s| s.0 >= to)?;
        Some(after.1 - before.1)
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Median of a list (0 for an empty one).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Machine facts for the report.
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
}

pub fn machine() -> Machine {
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // SAFETY: sysconf has no memory effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    Machine {
        nproc: usize::try_from(online).unwrap_or(1).max(1),
        kernel,
        cpu_model,
    }
}

/// Pins the calling thread (and the threads it starts later) to one CPU.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is its empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
