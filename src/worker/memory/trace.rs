//! What the adapters did, line by line with the virtual time: the simulation prints it for a
//! schedule that broke an invariant, and compares two runs of one seed.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// A shared, append-only log; a disabled trace costs nothing but a branch.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    inner: Option<Arc<TraceInner>>,
}

#[derive(Debug)]
struct TraceInner {
    start: Instant,
    lines: Mutex<Vec<String>>,
}

impl Trace {
    /// A trace whose times count from now.
    pub fn recording() -> Self {
        Trace {
            inner: Some(Arc::new(TraceInner {
                start: Instant::now(),
                lines: Mutex::new(Vec::new()),
            })),
        }
    }

    /// Adds one line, `who` being the worker or actor that made the call.
    pub fn note(&self, who: &str, what: impl FnOnce() -> String) {
        if let Some(inner) = &self.inner {
            let ms = inner.start.elapsed().as_millis();
            let line = format!("{:>6}.{:03}s {who:<8} {}", ms / 1000, ms % 1000, what());
            if let Ok(mut lines) = inner.lines.lock() {
                lines.push(line);
            }
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner
            .as_ref()
            .and_then(|inner| inner.lines.lock().ok().map(|lines| lines.clone()))
            .unwrap_or_default()
    }
}
