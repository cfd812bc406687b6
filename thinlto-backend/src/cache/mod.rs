//! The backend-job cache.

pub mod remote;
