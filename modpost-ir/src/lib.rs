//! modpost-ir.
