//! Host-side harness for tests that boot real images (work in progress).
