//! dvs hypervisor (work in progress, see README).
