//! dvs proxy (work in progress, see README).
