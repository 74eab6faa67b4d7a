//! Engine tuning: retransmission, limits and vcopy windows.

use crate::ids::DcId;
use crate::wire::VCOPY_CHUNK;
use core::time::Duration;

/// How an engine behaves. `EngineConfig::new` gives defaults suited to VMs on one LAN.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The DC every local endpoint belongs to; frames of other DCs are refused and counted.
    pub dc: DcId,
    /// Distinguishes this boot of the host from earlier ones: the high 32 bits of every seq.
    /// Must grow from one boot to the next (the hypervisor passes a boot counter or the time).
    pub incarnation: u32,
    /// First retransmission interval for calls and vcopy data.
    pub rto: Duration,
    /// Cap of the exponential retransmission backoff.
    pub max_rto: Duration,
    /// After a SendRec was delivered: how often to ask the peer whether the reply is ready.
    pub probe_interval: Duration,
    /// Delay before resending a frame refused with Migrated (gives the directory time to settle).
    pub migrated_retry: Duration,
    /// How long a notification is retried before it is reported as failed.
    pub notify_timeout: Duration,
    /// Messages queued for one endpoint before further senders must retransmit.
    pub queue_limit: usize,
    /// Sources remembered per endpoint for duplicate suppression and reply caching.
    pub peer_limit: usize,
    /// Most vcopy chunks in flight per transfer (the window adapts below this and
    /// `vcopy_max_inflight`, to twice the measured bandwidth-delay product).
    pub vcopy_window: u32,
    /// Most vcopy bytes in flight per transfer.
    pub vcopy_max_inflight: u64,
    /// The largest vcopy chunk (VcopyData payload) this engine sends and receives: from its
    /// link's MTU ([`crate::wire::chunk_for_mtu`]), clamped to
    /// [`VCOPY_CHUNK`]..=[`crate::wire::MAX_DATA_PAYLOAD`]. Each transfer uses the smaller of
    /// both ends' values. Above [`VCOPY_CHUNK`], `poll_transmit` needs buffers of up to
    /// `HEADER_LEN + vcopy_chunk` bytes ([`crate::wire::MAX_JUMBO_FRAME`] always suffices).
    pub vcopy_chunk: u32,
    /// A vcopy transfer the peer drives is dropped after this long without progress.
    pub transfer_idle_timeout: Duration,
    /// Finished vcopy transfers remembered to re-answer duplicates.
    pub finished_limit: usize,
}

impl EngineConfig {
    /// Defaults for DC `dc`, boot `incarnation`.
    pub fn new(dc: DcId, incarnation: u32) -> EngineConfig {
        EngineConfig {
            dc,
            incarnation,
            rto: Duration::from_millis(10),
            max_rto: Duration::from_millis(200),
            probe_interval: Duration::from_millis(100),
            migrated_retry: Duration::from_millis(2),
            notify_timeout: Duration::from_secs(5),
            queue_limit: 64,
            peer_limit: 4096,
            vcopy_window: 64,
            vcopy_max_inflight: 2 * 1024 * 1024,
            vcopy_chunk: VCOPY_CHUNK as u32,
            transfer_idle_timeout: Duration::from_secs(10),
            finished_limit: 256,
        }
    }
}
