//! The parent's side of one cell: spawn the workers, send each its job and fds, run rounds,
//! stop them, and kill them if anything takes longer than the cell's deadline.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::ctl::Ctl;
use crate::transport::Wiring;
use crate::worker::{FromWorker, Job, Round, RoundReport, ToWorker};
use crate::{Counters, Error, Percentiles, Role, Workload};

/// How to start a worker process: a program and its arguments. The worker reads its job from
/// stdin.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Launcher {
    /// Run `program` with `args`.
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Launcher {
        Launcher {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
        }
    }

    /// Re-execute this program with `args` (`shmpipe bench --worker`, or a criterion bench
    /// binary's worker flag).
    ///
    /// # Errors
    ///
    /// If the path of the running executable is unknown.
    pub fn current_exe(args: &[&str]) -> Result<Launcher, Error> {
        let program = std::env::current_exe().map_err(|e| Error::Io {
            op: "readlink(/proc/self/exe)",
            source: e,
        })?;
        Ok(Launcher::new(program, args))
    }
}

/// What runs in a cell, besides the wiring.
#[derive(Debug, Clone)]
pub struct CellSpec {
    /// Transport name.
    pub transport: String,
    /// The workload.
    pub workload: Workload,
    /// Ring capacity in bytes (rings), kernel buffer size (pipes, sockets).
    pub capacity: usize,
    /// Messages per publication for batching senders.
    pub batch: usize,
    /// Ring consumers take at most this many messages per `drain` (0: all there are).
    pub drain_max: usize,
    /// Spin budget of the `shmpipe`, `shmpipe-tokio` and `shmem-ipc-spin` transports, in
    /// microseconds (None: each one's default).
    pub spin_us: Option<u64>,
    /// CPUs: the producer's, then the consumer's. Empty: no pinning.
    pub cpus: Vec<usize>,
    /// A fault to inject (tests, `shmpipe bench --inject`).
    pub fault: Option<crate::worker::Fault>,
}

/// The outcome of one round, both workers' reports combined.
#[derive(Debug, Clone)]
pub struct RoundOutcome {
    /// Messages, round trips or copies in the round.
    pub n: u64,
    /// `thr`: from the producer's first send to the consumer's last receive; `rtt`: the
    /// producer's whole round; solo: the round.
    pub elapsed: Duration,
    /// Round-trip percentiles (`rtt`).
    pub latency: Option<Percentiles>,
    /// Messages that failed their check.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Both sides' counters during this round.
    pub counters: Counters,
    /// `idle`: CPU time the blocked consumer used.
    pub idle_cpu: Option<Duration>,
}

#[derive(Debug)]
struct Proc {
    role: Role,
    child: Child,
    ctl: Ctl,
}

/// Two running workers (or one solo worker) connected for one cell.
#[derive(Debug)]
pub struct Session {
    procs: Vec<Proc>,
    /// The cell's directory (the handshake's socket), removed after the workers.
    _dir: Option<tempfile::TempDir>,
    deadline: Instant,
    workload: Workload,
    counters: Counters,
}

impl Session {
    /// Spawn and connect the workers; everything must be ready before `deadline`, which
    /// also bounds every later round and the stop.
    ///
    /// # Errors
    ///
    /// A spawn failure, a worker's failure report, or [`Error::Deadline`]; any worker
    /// started is killed.
    pub fn start(
        launcher: &Launcher,
        spec: &CellSpec,
        wiring: Wiring,
        deadline: Instant,
    ) -> Result<Session, Error> {
        let parent_pid = rustix::process::getpid().as_raw_nonzero().get();
        let roles: Vec<(Role, Vec<OwnedFd>, Vec<usize>)> = if wiring.solo {
            vec![(Role::Solo, wiring.producer, spec.cpus.clone())]
        } else {
            let cpu = |i: usize| spec.cpus.get(i).or(spec.cpus.first()).copied();
            vec![
                (
                    Role::Producer,
                    wiring.producer,
                    cpu(0).into_iter().collect(),
                ),
                (
                    Role::Consumer,
                    wiring.consumer,
                    cpu(1).into_iter().collect(),
                ),
            ]
        };
        let mut s = Session {
            procs: Vec::new(),
            _dir: wiring.dir,
            deadline,
            workload: spec.workload,
            counters: Counters::default(),
        };
        for (role, fds, cpus) in roles {
            let (ctl, theirs) = Ctl::pair()?;
            let child = Command::new(&launcher.program)
                .args(&launcher.args)
                .stdin(Stdio::from(theirs))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| Error::Io {
                    op: "spawn(worker)",
                    source: e,
                })?;
            s.procs.push(Proc { role, child, ctl });
            let job = Job {
                transport: spec.transport.clone(),
                workload: spec.workload,
                role,
                cpus,
                parent_pid,
                capacity: spec.capacity,
                batch: spec.batch,
                drain_max: spec.drain_max,
                spin_us: spec.spin_us,
                tag: wiring.tag.clone(),
                fault: spec.fault,
            };
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            s.procs
                .last()
                .expect("pushed")
                .ctl
                .send(&ToWorker::Job(job), &borrowed)?;
        }
        for m in s.collect()? {
            if !matches!(m, FromWorker::Ready) {
                return Err(Error::Protocol(format!("expected Ready, got {m:?}")));
            }
        }
        let pids: Vec<i32> = s.procs.iter().map(|p| p.child.id() as i32).collect();
        for (i, p) in s.procs.iter().enumerate() {
            let peer_pid = pids.get(1 - i.min(1)).copied().filter(|_| pids.len() == 2);
            p.ctl.send(&ToWorker::Go { peer_pid }, &[])?;
        }
        Ok(s)
    }

    /// Run one round of `n` messages (`idle`: stay quiet for `idle` first).
    ///
    /// # Errors
    ///
    /// A worker's failure, a lost control channel, or [`Error::Deadline`].
    pub fn round(&mut self, n: u64, idle: Duration) -> Result<RoundOutcome, Error> {
        let r = Round {
            n,
            idle_ms: idle.as_millis() as u64,
        };
        for p in &self.procs {
            p.ctl.send(&ToWorker::Round(r), &[])?;
        }
        let mut reports = Vec::new();
        for m in self.collect()? {
            match m {
                FromWorker::RoundDone(rep) => reports.push(rep),
                other => {
                    return Err(Error::Protocol(format!(
                        "expected RoundDone, got {other:?}"
                    )));
                }
            }
        }
        let (prod, cons) = match reports.as_slice() {
            [solo] => (solo, solo),
            [p, c] => (p, c),
            _ => unreachable!("one or two workers"),
        };
        let (start, end) = match self.workload {
            Workload::Rtt(_) => (prod.start_ns, prod.end_ns),
            _ => (prod.start_ns, cons.end_ns),
        };
        let counters = reports
            .iter()
            .fold(Counters::default(), |a, r: &RoundReport| a.plus(r.counters));
        let outcome = RoundOutcome {
            n,
            elapsed: Duration::from_nanos(end.saturating_sub(start)),
            latency: prod.latency,
            errors: reports.iter().map(|r| r.errors).sum(),
            first_error: reports.iter().find_map(|r| r.first_error.clone()),
            counters: counters.since(self.counters),
            idle_cpu: cons.cpu_ns.map(Duration::from_nanos),
        };
        self.counters = counters;
        Ok(outcome)
    }

    /// Tell the workers to close their transports and exit; wait for them.
    ///
    /// # Errors
    ///
    /// As for [`Session::round`]; workers still running at the deadline are killed.
    pub fn stop(mut self) -> Result<Counters, Error> {
        for p in &self.procs {
            p.ctl.send(&ToWorker::Stop, &[])?;
        }
        let mut total = Counters::default();
        for m in self.collect()? {
            match m {
                FromWorker::Done(c) => total = total.plus(c),
                other => return Err(Error::Protocol(format!("expected Done, got {other:?}"))),
            }
        }
        for p in &mut self.procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        return Err(Error::Worker {
                            role: p.role.name(),
                            message: format!("exited with {status}"),
                        });
                    }
                    Ok(None) if Instant::now() < self.deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(None) => return Err(Error::Deadline),
                    Err(e) => {
                        return Err(Error::Io {
                            op: "waitpid",
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(total)
    }

    /// One message from every worker, in worker order; the first failure wins at once.
    fn collect(&mut self) -> Result<Vec<FromWorker>, Error> {
        let mut got: Vec<Option<FromWorker>> = self.procs.iter().map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Deadline);
            }
            let pending: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_none()).collect();
            let mut fds: Vec<PollFd<'_>> = pending
                .iter()
                .map(|&i| PollFd::new(&self.procs[i].ctl, PollFlags::IN))
                .collect();
            let ts = Timespec::try_from(left.min(Duration::from_secs(1))).expect("small");
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::os("poll(control)")(e)),
            }
            let ready: Vec<usize> = pending
                .iter()
                .zip(&fds)
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(&i, _)| i)
                .collect();
            drop(fds);
            for i in ready {
                let p = &mut self.procs[i];
                match p.ctl.recv::<FromWorker>(Some(self.deadline)) {
                    Ok((FromWorker::Failed(message), _)) => {
                        return Err(Error::Worker {
                            role: p.role.name(),
                            message,
                        });
                    }
                    Ok((m, _)) => got[i] = Some(m),
                    Err(Error::ControlClosed) => {
                        // Give the kernel a moment to make the exit status available.
                        std::thread::sleep(Duration::from_millis(20));
                        let status = match p.child.try_wait() {
                            Ok(Some(s)) => s.to_string(),
                            _ => "closed its control socket".into(),
                        };
                        return Err(Error::Worker {
                            role: p.role.name(),
                            message: format!("died: {status}"),
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(got.into_iter().map(|m| m.expect("all collected")).collect())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}
