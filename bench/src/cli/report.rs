//! What `shmpipe bench` reports: the tables as text and as Markdown, the headline, the JSON
//! document and the plot's data.

use std::error::Error as StdError;
use std::fmt::Write as _;

use serde::Serialize;

use super::machine::Machine;
use super::{BenchArgs, Settings, Summary, best_of, find};
use crate::Workload;
use crate::transport::{Kind, MEMCPY_BLOCK, Transport};

/// Write the files the arguments ask for (`--json`, `--markdown`, `--plot`), each followed
/// by a line that names it.
pub(super) fn write_files(
    args: &BenchArgs,
    summaries: &[Summary],
    settings: &Settings,
    machine: &Machine,
) -> Result<(), Box<dyn StdError>> {
    if let Some(path) = &args.json {
        let doc = JsonDoc {
            machine,
            settings,
            results: summaries,
        };
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("JSON: {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, render_markdown(summaries, settings, machine))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("Markdown: {}", path.display());
    }
    if let Some(path) = &args.plot {
        crate::plot::draw(path, &plot_data(summaries), &machine.describe_short())
            .map_err(|e| format!("drawing {}: {e}", path.display()))?;
        println!("Plot: {}", path.display());
    }
    Ok(())
}

/// The best OS baseline for `w`: highest msgs/s (thr) or lowest p50 (rtt).
fn best_os(all: &[Summary], w: Workload) -> Option<&Summary> {
    best_of(all, w, Kind::OsBaseline)
}

fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ns(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.1} us", v / 1e3),
        Some(v) if v >= 1e3 => format!("{:.2} us", v / 1e3),
        Some(v) => format!("{v:.0} ns"),
    }
}

fn ratio(x: Option<f64>) -> String {
    match x {
        Some(r) if r >= 10.0 => format!("{r:.0}x"),
        Some(r) if r >= 0.1 => format!("{r:.2}x"),
        Some(r) => format!("{r:.3}x"),
        None => "-".into(),
    }
}

fn check(s: &Summary) -> &'static str {
    if s.verified { "ok" } else { "FAILED" }
}

/// A table that prints as aligned text or as Markdown.
struct Table {
    title: String,
    head: Vec<&'static str>,
    /// Left-aligned columns (the rest are right-aligned).
    left: usize,
    rows: Vec<Vec<String>>,
    note: Option<String>,
}

impl Table {
    fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.head.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if i > 0 {
                    l.push_str("  ");
                }
                if i < self.left {
                    l.push_str(c);
                    l.push_str(&" ".repeat(pad));
                } else {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(c);
                }
            }
            l.trim_end().to_string()
        };
        let mut o = format!("\n{}\n", self.title);
        o.push_str(&line(self.head.clone()));
        o.push('\n');
        for r in &self.rows {
            o.push_str(&line(r.iter().map(String::as_str).collect()));
            o.push('\n');
        }
        if let Some(n) = &self.note {
            o.push_str(n);
            o.push('\n');
        }
        o
    }

    fn markdown(&self) -> String {
        let mut o = format!("\n**{}**\n\n", self.title);
        o.push_str(&format!("| {} |\n", self.head.join(" | ")));
        let align: Vec<&str> = (0..self.head.len())
            .map(|i| if i < self.left { "---" } else { "---:" })
            .collect();
        o.push_str(&format!("|{}|\n", align.join("|")));
        for r in &self.rows {
            o.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        if let Some(n) = &self.note {
            o.push_str(&format!("\n{n}\n"));
        }
        o
    }
}

fn tables(all: &[Summary], settings: &Settings) -> Vec<Table> {
    let mut out = Vec::new();
    let workloads: Vec<Workload> = {
        let mut w: Vec<Workload> = all.iter().filter_map(|s| s.cell.map(|c| c.1)).collect();
        w.dedup();
        w
    };
    let runs = settings.runs;
    let dash = || "-".to_string();
    if workloads.iter().any(|w| matches!(w, Workload::Thr(_))) {
        let memcpy = find(all, Transport::MemcpyCeiling, Workload::Thr(MEMCPY_BLOCK))
            .and_then(|m| m.mb_per_sec);
        let mut rows = Vec::new();
        for w in workloads.iter().filter(|w| matches!(w, Workload::Thr(_))) {
            let best = best_os(all, *w);
            for s in all.iter().filter(|s| s.cell.map(|c| c.1) == Some(*w)) {
                let reference = s.cell.map(|c| c.0.kind()) == Some(Kind::Reference);
                let vs_os = match (s.msgs_per_sec, best) {
                    (Some(m), Some(b)) if !reference => {
                        format!("{} {}", ratio(b.msgs_per_sec.map(|bm| m / bm)), b.transport)
                    }
                    _ => dash(),
                };
                let vs_memcpy = match (s.mb_per_sec, memcpy) {
                    (Some(m), Some(c)) if *w == Workload::Thr(MEMCPY_BLOCK) => ratio(Some(m / c)),
                    _ => dash(),
                };
                let vs_peer = match (&s.best_peer, s.vs_best_peer) {
                    (Some(p), Some(r)) => format!("{} {p}", ratio(Some(r))),
                    _ => dash(),
                };
                rows.push(vec![
                    s.workload.clone(),
                    s.transport.clone(),
                    s.msgs_per_sec.map(si).unwrap_or_else(dash),
                    s.mb_per_sec.map(|m| format!("{m:.1}")).unwrap_or_else(dash),
                    format!("{:.1}%", s.spread * 100.0),
                    vs_os,
                    s.vs_ring_floor.map_or_else(dash, |r| ratio(Some(r))),
                    vs_peer,
                    vs_memcpy,
                    s.wakeups_per_million
                        .map(|w| format!("{w:.0}"))
                        .unwrap_or_else(dash),
                    check(s).to_string(),
                ]);
            }
        }
        out.push(Table {
            title: format!(
                "Throughput: one-way, back-to-back, every byte checked; median of {runs} runs, spread = (max-min)/median"
            ),
            head: vec![
                "workload",
                "transport",
                "msgs/s",
                "MB/s",
                "spread",
                "vs best OS baseline",
                "vs ring-floor",
                "vs best shmem-ipc",
                "vs memcpy",
                "wakeups/M",
                "check",
            ],
            left: 2,
            rows,
            note: Some(
                "(vs ring-floor: msgs/s over ring-floor's, the median of the ratios run by run; 1.00x is the floor itself. vs best shmem-ipc: the same, over the shmem-ipc mode with the higher median)"
                    .into(),
            ),
        });
    }
    for w in workloads.iter().filter(|w| matches!(w, Workload::Rtt(_))) {
        let best = best_os(all, *w);
        let floor = |t| find(all, t, *w).and_then(|s| s.p50_ns);
        let (spin, efd) = (floor(Transport::SpinFloor), floor(Transport::EventfdFloor));
        let mut rows = Vec::new();
        for s in all.iter().filter(|s| s.cell.map(|c| c.1) == Some(*w)) {
            let reference = s.cell.map(|c| c.0.kind()) == Some(Kind::Reference);
            let vs_os = match (s.p50_ns, best) {
                (Some(p), Some(b)) if !reference => format!(
                    "{} faster than {}",
                    ratio(b.p50_ns.map(|bp| bp / p)),
                    b.transport
                ),
                _ => dash(),
            };
            let over = |f: Option<f64>| match (s.p50_ns, f) {
                (Some(p), Some(f)) => ratio(Some(p / f)),
                _ => dash(),
            };
            let vs_peer = match (&s.best_peer, s.vs_best_peer) {
                (Some(p), Some(r)) => format!("{} faster than {p}", ratio(Some(r))),
                _ => dash(),
            };
            rows.push(vec![
                s.transport.clone(),
                ns(s.p50_ns),
                ns(s.p99_ns),
                ns(s.p999_ns),
                ns(s.max_ns),
                format!("{:.1}%", s.spread * 100.0),
                vs_os,
                vs_peer,
                s.vs_ring_floor.map_or_else(dash, |r| ratio(Some(r))),
                over(spin),
                over(efd),
                check(s).to_string(),
            ]);
        }
        out.push(Table {
            title: format!(
                "Round trip ({w}): ping-pong after a warm-up; median of {runs} runs of each percentile"
            ),
            head: vec![
                "transport",
                "p50",
                "p99",
                "p99.9",
                "max",
                "spread",
                "vs best OS baseline",
                "vs best shmem-ipc",
                "p50/ring-floor",
                "p50/spin-floor",
                "p50/eventfd-floor",
                "check",
            ],
            left: 1,
            rows,
            note: Some(
                "(p50/floor: the median of the ratios run by run; 1.00x is the floor itself. vs best shmem-ipc: the same, against the shmem-ipc mode with the lower median p50)"
                    .into(),
            ),
        });
    }
    if workloads.contains(&Workload::Idle) {
        let rows = all
            .iter()
            .filter(|s| s.cell.map(|c| c.1) == Some(Workload::Idle))
            .map(|s| {
                vec![
                    s.transport.clone(),
                    s.idle_cpu_percent
                        .map(|c| format!("{c:.2}%"))
                        .unwrap_or_else(dash),
                    check(s).to_string(),
                ]
            })
            .collect();
        out.push(Table {
            title: format!(
                "Idle: the consumer blocks on an empty transport for {} ms; CPU it used meanwhile",
                settings.measure_ms.max(200)
            ),
            head: vec!["transport", "CPU", "check"],
            left: 1,
            rows,
            note: None,
        });
    }
    out
}

pub(super) fn render(all: &[Summary], settings: &Settings) -> String {
    let mut o: String = tables(all, settings).iter().map(Table::text).collect();
    let _ = writeln!(o, "{}", headline(all));
    o
}

fn render_markdown(all: &[Summary], settings: &Settings, machine: &Machine) -> String {
    let mut o = format!(
        "Machine: {}; load average {} at the start, {} at the end. Settings: {}.\n",
        machine.describe_short(),
        machine
            .load_average_start
            .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
            .unwrap_or_else(|| "?".into()),
        machine
            .load_average_end
            .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
            .unwrap_or_else(|| "?".into()),
        serde_json::to_string(settings).unwrap_or_default()
    );
    for t in tables(all, settings) {
        o.push_str(&t.markdown());
    }
    let h = headline(all);
    if !h.trim().is_empty() {
        let _ = writeln!(o, "\n{}", h.trim());
    }
    o
}

/// The one-paragraph answer: how much faster than what you would otherwise use.
fn headline(all: &[Summary]) -> String {
    // Only figures that passed their checks make the headline.
    let verified: Vec<Summary> = all.iter().filter(|s| s.verified).cloned().collect();
    let all = verified.as_slice();
    let mut lines = Vec::new();
    let w = Workload::Thr(64);
    if let (Some(s), Some(b)) = (find(all, Transport::Shmpipe, w), best_os(all, w)) {
        if let (Some(m), Some(bm)) = (s.msgs_per_sec, b.msgs_per_sec) {
            lines.push(format!(
                "shmpipe moves {} 64-byte messages/s: {} the best OS baseline ({}, {}).",
                si(m),
                ratio(Some(m / bm)),
                b.transport,
                si(bm)
            ));
        }
    }
    let w = Workload::Rtt(64);
    if let (Some(s), Some(b)) = (find(all, Transport::Shmpipe, w), best_os(all, w)) {
        if let (Some(p), Some(bp)) = (s.p50_ns, b.p50_ns) {
            let mut line = format!(
                "A 64-byte round trip takes {} (p50): {} faster than {} ({})",
                ns(Some(p)),
                ratio(Some(bp / p)),
                b.transport,
                ns(Some(bp))
            );
            if let Some(f) = find(all, Transport::SpinFloor, w).and_then(|f| f.p50_ns) {
                let _ = write!(
                    line,
                    ", {} the spin floor ({})",
                    ratio(Some(p / f)),
                    ns(Some(f))
                );
            }
            line.push('.');
            lines.push(line);
        }
    }
    let w = Workload::Thr(64);
    if let Some(s) = find(all, Transport::Shmpipe, w) {
        let mut parts = Vec::new();
        if let (Some(r), Some(f)) = (
            s.vs_ring_floor,
            find(all, Transport::RingFloor, w).and_then(|f| f.msgs_per_sec),
        ) {
            parts.push(format!("{} ring-floor ({} msgs/s)", ratio(Some(r)), si(f)));
        }
        if let (Some(r), Some(p)) = (s.vs_best_peer, peer_of(all, s)) {
            parts.push(format!(
                "{} shmem-ipc in its better mode ({}, {} msgs/s)",
                ratio(Some(r)),
                p.transport,
                p.msgs_per_sec.map_or_else(|| "?".into(), si)
            ));
        }
        if !parts.is_empty() {
            lines.push(format!("thr-64: shmpipe moves {}.", parts.join("; ")));
        }
    }
    let w = Workload::Rtt(64);
    if let Some(s) = find(all, Transport::Shmpipe, w) {
        let mut parts = Vec::new();
        if let (Some(r), Some(f)) = (
            s.vs_ring_floor,
            find(all, Transport::RingFloor, w).and_then(|f| f.p50_ns),
        ) {
            parts.push(format!("{} ring-floor's ({})", ratio(Some(r)), ns(Some(f))));
        }
        if let (Some(r), Some(p)) = (s.vs_best_peer, peer_of(all, s)) {
            parts.push(format!(
                "{} faster than shmem-ipc in its better mode ({}, {})",
                ratio(Some(r)),
                p.transport,
                ns(p.p50_ns)
            ));
        }
        if !parts.is_empty() {
            lines.push(format!(
                "rtt-64: shmpipe's p50 ({}) is {}.",
                ns(s.p50_ns),
                parts.join("; ")
            ));
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    format!("\n{}", lines.join("\n"))
}

/// The cell `s.best_peer` names.
fn peer_of<'a>(all: &'a [Summary], s: &Summary) -> Option<&'a Summary> {
    let (_, w) = s.cell?;
    let name = s.best_peer.as_deref()?;
    all.iter()
        .find(|p| p.transport == name && p.cell.map(|c| c.1) == Some(w))
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    machine: &'a Machine,
    settings: &'a Settings,
    results: &'a [Summary],
}

fn plot_data(all: &[Summary]) -> crate::plot::Data {
    let mut d = crate::plot::Data::default();
    for t in Transport::ALL {
        let thr: Vec<(f64, f64)> = all
            .iter()
            .filter_map(|s| match s.cell {
                Some((tt, Workload::Thr(n))) if tt == t => s.msgs_per_sec.map(|m| (n as f64, m)),
                _ => None,
            })
            .collect();
        if !thr.is_empty() {
            d.throughput.push((t.name().to_string(), thr));
        }
        if let Some(s) = all
            .iter()
            .find(|s| matches!(s.cell, Some((tt, Workload::Rtt(_))) if tt == t))
        {
            if let (Some(a), Some(b), Some(c), Some(m)) = (s.p50_ns, s.p99_ns, s.p999_ns, s.max_ns)
            {
                d.latency.push((t.name().to_string(), [a, b, c, m]));
            }
        }
    }
    d
}
