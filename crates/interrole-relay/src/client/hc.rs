//! Hybrid Connections clients.
