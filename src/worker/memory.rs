//! In-memory adapters of the job path's ports, keeping the real systems' rules.
