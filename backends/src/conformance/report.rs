//! Suite results: one row per case, printed as an aligned table with a summary line.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Pass,
    /// Wrong numbers, a backend error, or a panic; the message says which.
    Fail(String),
    /// The backend declined a node (`Backend::supports`): never counted as passed.
    Unsupported(String),
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail(_) => "FAIL",
            Status::Unsupported(_) => "unsupported",
        }
    }
    fn detail(&self) -> Option<&str> {
        match self {
            Status::Pass => None,
            Status::Fail(m) | Status::Unsupported(m) => Some(m),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub op: String,
    pub case: String,
    pub backend: String,
    /// Worst NMSE over the compared values; `None` if the case did not get that far.
    pub nmse: Option<f64>,
    pub threshold: f64,
    pub status: Status,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == Status::Pass)
            .count()
    }
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.status, Status::Fail(_)))
            .count()
    }
    pub fn unsupported(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.status, Status::Unsupported(_)))
            .count()
    }
    pub fn failures(&self) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(|r| matches!(r.status, Status::Fail(_)))
    }
    /// No failures and at least one pass (an all-unsupported run proves nothing).
    pub fn is_ok(&self) -> bool {
        self.failed() == 0 && self.passed() > 0
    }
}

fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.2e}")
    }
}

impl fmt::Display for Report {
    /// `op  case  backend  NMSE  threshold  status`, then `N passed, N failed, N unsupported`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["op", "case", "backend", "NMSE", "threshold", "status"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                let status = match r.status.detail() {
                    Some(d) => format!("{}: {}", r.status.label(), d.lines().next().unwrap_or("")),
                    None => r.status.label().to_string(),
                };
                [
                    r.op.clone(),
                    r.case.clone(),
                    r.backend.clone(),
                    r.nmse.map(sci).unwrap_or_else(|| "-".into()),
                    sci(r.threshold),
                    status,
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, row: &[&str]| -> fmt::Result {
            for (i, (c, w)) in row.iter().zip(width).enumerate() {
                if i + 1 == row.len() {
                    writeln!(f, "{c}")?;
                } else {
                    write!(f, "{c:<w$}  ")?;
                }
            }
            Ok(())
        };
        line(f, &header)?;
        for row in &cells {
            line(f, &row.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        writeln!(
            f,
            "{} passed, {} failed, {} unsupported",
            self.passed(),
            self.failed(),
            self.unsupported()
        )
    }
}
