//! Placeholder, replaced as the part is built.
