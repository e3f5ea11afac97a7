//! The multicast transport.
