//! thinlto-backend.
