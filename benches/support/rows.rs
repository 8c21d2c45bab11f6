//! The rows of the one summary table `bench/run` prints at its end: each benchmark appends its
//! headline figures, each next to its reference and goal, as tab-separated lines to the file
//! `WAKEGATE_BENCH_ROWS` names (`bench/run` sets it; a bench run alone writes none), and
//! `bench/summary` joins them.

use std::io::Write;

use anyhow::Context;

/// Whether more or less of a figure is better: says which way the ratio to its reference reads.
#[derive(Clone, Copy)]
pub enum Better {
    Higher,
    Lower,
}

/// One headline figure, its reference measured in the same run, and its goal.
pub struct Row {
    /// Orders the summary (see `bench/summary`): `stream`, `tcp-keepalive`, `tcp-newconn`,
    /// `http-keepalive`, `http-newconn`, `events`, `scale-memory`, `scale-asleep-rss`,
    /// `scale-asleep-wakeups`, `scale-herd`, `gateways-handoff`, `gateways-failover-5s`,
    /// `gateways-failover-15s`.
    pub key: &'static str,
    /// What is measured, as the summary names it (unit included).
    pub what: String,
    /// The reference's name ("haproxy", "direct"…) and its figure.
    pub reference: &'static str,
    pub reference_value: f64,
    pub value: f64,
    pub better: Better,
    /// Decimals shown for the two figures.
    pub decimals: usize,
    /// The goal, in words ("≥ 1.1× haproxy"), and whether this run reached it (`None`: the
    /// issue sets no goal for the row).
    pub goal: String,
    pub met: Option<bool>,
}

/// Appends `rows` to the file `WAKEGATE_BENCH_ROWS` names, if any.
pub fn record(rows: &[Row]) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("WAKEGATE_BENCH_ROWS") else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.to_string_lossy()))?;
    for row in rows {
        let ratio = if row.reference_value > 0.0 {
            format!("{:.2}", row.value / row.reference_value)
        } else {
            "-".into()
        };
        let d = row.decimals;
        let line = [
            row.key.to_string(),
            row.what.clone(),
            row.reference.to_string(),
            format!("{:.d$}", row.reference_value),
            format!("{:.d$}", row.value),
            ratio,
            match row.better {
                Better::Higher => "higher".into(),
                Better::Lower => "lower".into(),
            },
            row.goal.clone(),
            match row.met {
                Some(true) => "met".into(),
                Some(false) => "NOT MET".into(),
                None => "-".into(),
            },
        ];
        // A tab in a cell would shift the columns.
        let line: Vec<String> = line.into_iter().map(|c| c.replace('\t', " ")).collect();
        writeln!(file, "{}", line.join("\t"))?;
    }
    Ok(())
}
