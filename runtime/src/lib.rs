//! npurt runtime (being written).
