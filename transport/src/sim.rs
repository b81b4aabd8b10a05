//! Simulated UDP adapter (filled in below).
