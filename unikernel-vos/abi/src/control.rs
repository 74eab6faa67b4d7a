//! The guest -> host control channel: typed records, each postcard-encoded and COBS-framed (a
//! `0x00` byte ends a record and never occurs inside one). The human console is separate and
//! carries only log text; nothing a guest prints there is taken as a record.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::boot::Service;

/// Version of the record set; sent in [`Ready`].
pub const CONTROL_VERSION: u16 = 1;

/// Largest encoded record, framing included. A longer run of bytes without a `0x00` is dropped.
pub const MAX_RECORD: usize = 1024;

/// One thing a guest tells its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRecord {
    /// The instance is up: endpoints bound, services started, NICs live.
    Ready(Ready),
    /// A service started (on an endpoint, for M3-IPC services).
    ServiceUp {
        /// The service.
        service: Service,
        /// Its endpoint, if it has one.
        endpoint: Option<u32>,
    },
    /// A service stopped.
    ServiceDown {
        /// The service.
        service: Service,
        /// Why.
        reason: String,
    },
    /// The guest cannot go on; it exits after this record.
    Fatal {
        /// What failed, with the values involved.
        reason: String,
    },
    /// The guest's counters (sent when they change, at most once per stats interval).
    Counters(Counters),
    /// A result of a measurement or test service.
    Report(Report),
}

/// The ready record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// [`CONTROL_VERSION`] of the guest.
    pub version: u16,
    /// DC.
    pub dc: u16,
    /// Endpoints bound.
    pub endpoints: Vec<u32>,
    /// Services started.
    pub services: Vec<Service>,
    /// MAC addresses of the NICs, fabric first.
    pub macs: Vec<[u8; 6]>,
    /// Calibrated TSC rate in MHz.
    pub tsc_mhz: u32,
    /// Microseconds from kernel entry to ready.
    pub init_us: u64,
}

/// The guest's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Messages the echo servers received.
    pub echo_received: u64,
    /// Replies the echo servers sent.
    pub echo_replied: u64,
    /// Notifications the echo servers received (coalesced ones count once).
    pub notify_received: u64,
    /// M3-IPC frames handed to the engine.
    pub frames_in: u64,
    /// M3-IPC frames the engine sent.
    pub frames_out: u64,
    /// Frames that failed to decode.
    pub bad_frames: u64,
    /// Frames of another DC.
    pub wrong_dc: u64,
    /// Frames whose source claims one of our own endpoints.
    pub spoofed: u64,
    /// Frames for endpoints not bound here.
    pub not_here: u64,
    /// Frames of an old incarnation.
    pub stale: u64,
    /// Duplicate requests answered from the dedup table.
    pub duplicates: u64,
    /// Frames retransmitted.
    pub retransmits: u64,
    /// Ethernet frames that were neither M3-IPC nor for the IP stack.
    pub bad_ethernet: u64,
    /// HTTP requests served.
    pub http_requests: u64,
    /// HTTP requests refused as malformed.
    pub http_bad: u64,
    /// NIC frames received.
    pub nic_rx: u64,
    /// NIC frames sent.
    pub nic_tx: u64,
    /// NIC receive errors.
    pub nic_rx_errors: u64,
    /// Times a NIC's transmit queue was full.
    pub nic_tx_full: u64,
    /// NIC notifications (kicks) to the host.
    pub nic_kicks: u64,
    /// Current TSC rate estimate in kHz.
    pub tsc_khz: u64,
    /// Times the clock was seen going backwards (and held).
    pub clock_back: u64,
    /// Longest gap between two busy loop turns, µs.
    pub loop_gap_max_us: u64,
    /// HTTP connections closed by a timeout (idle keep-alive, request head, body progress, a
    /// client that stops reading).
    pub http_timeouts: u64,
    /// Idle HTTP connections closed to make room for a new client (every slot was taken).
    pub http_evicted: u64,
    /// New HTTP clients answered 503 because every slot was busy with a request.
    pub http_busy: u64,
    /// `Read` requests the disk server carried out.
    pub disk_reads: u64,
    /// `Write` requests the disk server carried out.
    pub disk_writes: u64,
    /// `Flush` requests the disk server carried out.
    pub disk_flushes: u64,
    /// Disk requests answered with an error (malformed, out of range, vcopy or device failure).
    pub disk_errors: u64,
    /// Requests the fs server answered (errors included).
    pub fs_requests: u64,
    /// fs requests answered with an error, and messages the fs server dropped.
    pub fs_errors: u64,
}

/// Which step of a benchmark failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BenchStep {
    /// A sendrec.
    Sendrec,
    /// A vcopy to the peer or back.
    Vcopy,
    /// A notify.
    Notify,
}

/// A result of a measurement or test service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// The in-guest local sendrec loop.
    LocalSendrec {
        /// Calls made.
        calls: u32,
        /// Nanoseconds per call.
        ns_per_call: u64,
    },
    /// The ipc-bench client's sendrecs, all answered with the right payload.
    Sendrecs {
        /// Calls made.
        n: u32,
        /// Median latency.
        median_ns: u64,
        /// 99th percentile latency.
        p99_ns: u64,
        /// Calls per second over the run.
        ops_per_s: u64,
    },
    /// The ipc-bench client's vcopy to the peer and back, both verified.
    Vcopy {
        /// Bytes each way.
        bytes: u64,
        /// Duration of the push.
        push_us: u64,
        /// Duration of the pull.
        pull_us: u64,
    },
    /// The ipc-bench client sent its notifications.
    Notifies {
        /// How many.
        sent: u32,
    },
    /// A benchmark step failed; the client stops there.
    Failed {
        /// The step.
        step: BenchStep,
        /// Index of the failing call in its step.
        index: u32,
        /// The peer endpoint.
        peer: u32,
        /// The M3-IPC error code (0 when the failure is not an IPC error).
        code: u16,
        /// The error, in words (`NodeUnreachable`, `reply payload differs`).
        error: String,
    },
    /// An ARP probe's answer. Sent only by the host-side test double `arp-probe`
    /// (qemu-tests/support), never by a VOS.
    Arp {
        /// The IPv4 address asked for.
        target: [u8; 4],
        /// The MAC address that answered, or None if nothing did before the probe gave up.
        answer: Option<[u8; 6]>,
    },
    /// Frames a host-side test double sent that no VOS would (`spoofer`: as another endpoint;
    /// `garbage`: malformed). Sent only by the doubles of qemu-tests/support, never by a VOS.
    Injected {
        /// Frames sent.
        frames: u32,
        /// What they were, in words (`as endpoint 301 to 301`).
        what: String,
    },
    /// Where the ipc-bench client's sendrecs spent their time, from its own TSC (medians over the
    /// calls of the `Sendrecs` report before it; 0 where the kernel set no stamp).
    Hops {
        /// Calls measured.
        n: u32,
        /// Call issued → the loop handed the request to the NIC, notify included.
        issue_to_tx_ns: u64,
        /// Request handed to the NIC → the reply frame seen by the guest: everything outside it.
        tx_to_rx_ns: u64,
        /// Reply frame seen → the calling task running again.
        rx_to_woken_ns: u64,
        /// Calls during which the guest halted, per mille.
        halted_permille: u32,
        /// Over the calls that halted: wake-up (after `hlt`) → the reply frame seen.
        wake_to_rx_ns: u64,
    },
    /// A server instance's side of the calls it answered (sent at most once a second while
    /// there are new samples; cumulative over the instance's life).
    ServerHops {
        /// Request frames answered (a frame seen, then frames handed to the NIC).
        n: u64,
        /// Median frame seen → answer handed to the NIC, notify included.
        rx_to_tx_ns: u64,
        /// 99th percentile of the same.
        rx_to_tx_p99_ns: u64,
        /// Requests that found the guest halted, per mille.
        halted_permille: u32,
        /// Over those: wake-up (after `hlt`) → the frame seen.
        wake_to_rx_ns: u64,
    },
    /// Sendrecs from a second endpoint of the ipc-bench client while its first one runs a vcopy
    /// of `vcopy_bytes` to the same peer (both verified); compare with the `Sendrecs` report.
    LoadedSendrecs {
        /// Calls made while the vcopy ran.
        n: u32,
        /// Median latency.
        median_ns: u64,
        /// 99th percentile latency.
        p99_ns: u64,
        /// Bytes the concurrent vcopy moved.
        vcopy_bytes: u64,
        /// Duration of that vcopy.
        vcopy_us: u64,
    },
    /// The guest's timer wake-up: the task asked to run at a time, the loop halted with the
    /// LAPIC timer armed for it; how late the task ran.
    TimerWake {
        /// Sleeps measured.
        n: u32,
        /// Median lateness.
        median_ns: u64,
        /// 99th percentile lateness.
        p99_ns: u64,
    },
    /// Service net-probe's attempt at one target: whether a TCP connection to it was made.
    Probe {
        /// The IPv4 address tried.
        target: [u8; 4],
        /// The TCP port tried.
        port: u16,
        /// True when the connection was made.
        reached: bool,
        /// How it ended (`connected`, `refused`, `timed out`, `no route`, ...).
        detail: String,
    },
}

/// Why bytes from the control channel did not make a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// More than [`MAX_RECORD`] bytes without a frame end.
    TooLong,
    /// The frame does not decode to a record.
    Malformed,
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::TooLong => write!(f, "control record longer than {MAX_RECORD} bytes"),
            RecordError::Malformed => f.write_str("malformed control record"),
        }
    }
}

impl ControlRecord {
    /// Encodes the record, framing included, into `buf`; the encoded bytes, or None if they do
    /// not fit.
    pub fn encode<'a>(&self, buf: &'a mut [u8]) -> Option<&'a mut [u8]> {
        postcard::to_slice_cobs(self, buf).ok()
    }

    /// Encodes the record, framing included, into a new vector.
    pub fn to_frame(&self) -> Vec<u8> {
        postcard::to_allocvec_cobs(self).unwrap_or_default()
    }
}

/// Splits a control byte stream into records. Feed it whatever arrives; it keeps partial records
/// between calls, drops over-long ones, and resynchronises at the next `0x00`.
#[derive(Debug, Default)]
pub struct RecordReader {
    buf: Vec<u8>,
    overlong: bool,
}

impl RecordReader {
    /// A reader with nothing buffered.
    pub fn new() -> RecordReader {
        RecordReader::default()
    }

    /// Takes `bytes` and returns the records (or errors) they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<ControlRecord, RecordError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != 0 {
                if self.buf.len() < MAX_RECORD {
                    self.buf.push(b);
                } else if !self.overlong {
                    self.overlong = true;
                    out.push(Err(RecordError::TooLong));
                }
                continue;
            }
            if self.overlong {
                self.overlong = false;
                self.buf.clear();
                continue;
            }
            if self.buf.is_empty() {
                continue; // an empty frame: line noise or a flush
            }
            self.buf.push(0);
            let rec = postcard::from_bytes_cobs::<ControlRecord>(&mut self.buf)
                .map_err(|_| RecordError::Malformed);
            out.push(rec);
            self.buf.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn ready() -> ControlRecord {
        ControlRecord::Ready(Ready {
            version: CONTROL_VERSION,
            dc: 1,
            endpoints: vec![101, 102],
            services: vec![Service::Echo],
            macs: vec![[2, 0x64, 1, 2, 3, 4]],
            tsc_mhz: 2400,
            init_us: 31_000,
        })
    }

    #[test]
    fn records_round_trip_in_pieces() {
        let recs = [
            ready(),
            ControlRecord::Counters(Counters {
                echo_received: 12,
                frames_in: 1 << 40,
                ..Counters::default()
            }),
            ControlRecord::Report(Report::Failed {
                step: BenchStep::Sendrec,
                index: 0,
                peer: 301,
                code: 3,
                error: "NotInDc".into(),
            }),
            ControlRecord::Fatal {
                reason: "bind endpoint 7: Busy".into(),
            },
        ];
        let mut stream = Vec::new();
        for r in &recs {
            let mut buf = [0u8; MAX_RECORD];
            let n = r.encode(&mut buf).unwrap().len();
            assert_eq!(buf[..n], r.to_frame()[..]);
            stream.extend_from_slice(&buf[..n]);
        }
        let mut reader = RecordReader::new();
        let mut got = Vec::new();
        for piece in stream.chunks(7) {
            got.extend(reader.feed(piece).into_iter().map(Result::unwrap));
        }
        assert_eq!(got, recs);
    }

    #[test]
    fn garbage_is_reported_and_skipped() {
        let mut reader = RecordReader::new();
        let mut stream = vec![0x55u8; 3];
        stream.push(0);
        stream.extend(vec![1u8; MAX_RECORD + 10]);
        stream.push(0);
        stream.extend(ready().to_frame());
        let got = reader.feed(&stream);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], Err(RecordError::Malformed));
        assert_eq!(got[1], Err(RecordError::TooLong));
        assert_eq!(got[2], Ok(ready()));
    }

    proptest::proptest! {
        #[test]
        fn hostile_streams_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let mut reader = RecordReader::new();
            let _ = reader.feed(&b);
            let after = reader.feed(&ready().to_frame());
            // Whatever came before, a whole record after a frame end decodes.
            if b.last() == Some(&0) || b.is_empty() {
                proptest::prop_assert_eq!(after.last(), Some(&Ok(ready())));
            }
        }
    }
}
