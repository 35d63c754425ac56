//! shmring's benchmark drivers: the workloads behind `shmring bench` and the criterion benches.

pub mod cli;
