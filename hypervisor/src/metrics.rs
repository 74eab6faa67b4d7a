//! The node's Prometheus metrics (`GET /metrics`, the Prometheus text format 0.0.4, encoded by the
//! `prometheus-client` crate).
//!
//! Nothing is counted twice: at each scrape the daemon takes a [`Snapshot`] of the counters it keeps anyway (the
//! proxy's per-port, per-DC and per-peer counters, the instances' views and their guests' counters, the image
//! store) and encodes it as metric families. Every name starts with `dvs_`; labels are `dc` (number), `name`
//! (an instance: `instance` is Prometheus's own label for the scraped target), `peer` (a node id), and
//! `direction`, `reason`, `code`, `kind`, `state` where a family splits. The families are listed in
//! hypervisor/README.md ("Metrics").

use std::fmt;

use dvs_proxy::counters::{Drops, Flow, Histogram};
use dvs_proxy::switch::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::instances::{InstanceView, State};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape reports: the node's counters at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// This node's id.
    pub node: u16,
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// The proxy's counters.
    pub stats: Stats,
    /// The node's instances.
    pub instances: Vec<InstanceView>,
    /// Images in the store.
    pub images: u64,
    /// Bytes of the kernels in the store.
    pub image_bytes: u64,
}

/// The snapshot in the Prometheus text format.
pub fn render(snapshot: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Labels of one sample: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// Writes metric families, one descriptor each, from rows of labels and values.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    /// A counter family (`_total` is appended to `name`).
    fn counter<N: EncodeCounterValue + fmt::Debug>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, N)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge family.
    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A histogram family in seconds, from histograms in µs.
    fn histogram<'h>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, &'h Histogram)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in rows {
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    h.sum_us as f64 / 1e6,
                    h.count,
                    &h.buckets_seconds(),
                    None,
                )?;
        }
        Ok(())
    }
}

/// `labels` plus `direction="in"` for `inward` and `"out"` for `outward`, for frames and for bytes.
fn flows(labels: &Labels, inward: Flow, outward: Flow) -> [Vec<(Labels, u64)>; 2] {
    let with = |dir: &str| {
        let mut l = labels.clone();
        l.push(("direction", dir.into()));
        l
    };
    [
        vec![(with("in"), inward.frames), (with("out"), outward.frames)],
        vec![(with("in"), inward.bytes), (with("out"), outward.bytes)],
    ]
}

/// `labels` plus `reason` for each reason of `drops`.
fn drops(labels: &Labels, drops: &Drops) -> Vec<(Labels, u64)> {
    drops
        .by_reason()
        .into_iter()
        .map(|(reason, n)| {
            let mut l = labels.clone();
            l.push(("reason", reason.into()));
            (l, n)
        })
        .collect()
}

/// The states an instance can be in, as `dvs ps` names them.
const STATES: [(State, &str); 5] = [
    (State::Starting, "starting"),
    (State::Running, "running"),
    (State::Stopped, "stopped"),
    (State::Exited, "exited"),
    (State::Failed, "failed"),
];

impl Collector for Snapshot {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut f = Families(encoder);
        let node_labels = vec![
            ("node", self.node.to_string()),
            ("version", self.version.clone()),
        ];
        f.gauge(
            "dvs_node_info",
            "The node: id and daemon version (always 1).",
            [(node_labels, 1.0)],
        )?;
        f.gauge(
            "dvs_node_uptime_seconds",
            "Seconds since the node daemon started.",
            [(vec![], self.uptime_s)],
        )?;
        self.encode_instances(&mut f)?;
        self.encode_dcs(&mut f)?;
        self.encode_peers(&mut f)?;
        f.gauge(
            "dvs_images",
            "Images in the node's store.",
            [(vec![], self.images as f64)],
        )?;
        f.gauge(
            "dvs_image_store_bytes",
            "Bytes of the kernels in the node's image store.",
            [(vec![], self.image_bytes as f64)],
        )
    }
}

impl Snapshot {
    fn encode_instances(&self, f: &mut Families) -> fmt::Result {
        let of =
            |i: &InstanceView| vec![("dc", i.spec.dc.to_string()), ("name", i.spec.name.clone())];
        let all = &self.instances;
        f.gauge(
            "dvs_instance_state",
            "1 for the state the instance is in, 0 for the others.",
            all.iter().flat_map(|i| {
                STATES.iter().map(move |(s, name)| {
                    let mut l = of(i);
                    l.push(("state", (*name).into()));
                    (l, f64::from(u8::from(i.state == *s)))
                })
            }),
        )?;
        f.counter(
            "dvs_instance_boots",
            "Times the instance was booted since the daemon started.",
            all.iter().map(|i| (of(i), u64::from(i.boots))),
        )?;
        f.counter(
            "dvs_instance_restarts",
            "Times the instance was booted again (boots after the first).",
            all.iter()
                .map(|i| (of(i), u64::from(i.boots.saturating_sub(1)))),
        )?;
        let used: Vec<_> = all.iter().filter_map(|i| Some((of(i), i.usage?))).collect();
        f.counter(
            "dvs_instance_cpu_seconds",
            "CPU time of the instance's machine process (all threads), seconds (clock-tick resolution).",
            used.iter().map(|(l, u)| (l.clone(), u.cpu_ns as f64 / 1e9)),
        )?;
        f.gauge(
            "dvs_instance_memory_bytes",
            "Resident memory of the instance's machine process, bytes.",
            used.iter().map(|(l, u)| (l.clone(), u.memory_bytes as f64)),
        )?;
        // The proxy's port of the instance: "out" is what the instance sent, "in" what was delivered to it.
        let ports: Vec<_> = all
            .iter()
            .filter_map(|i| Some((of(i), self.stats.ports.get(&i.spec.name)?)))
            .collect();
        let [frames, bytes]: [Vec<_>; 2] = ports.iter().map(|(l, p)| flows(l, p.tx, p.rx)).fold(
            [vec![], vec![]],
            |[mut fa, mut ba], [fr, by]| {
                fa.extend(fr);
                ba.extend(by);
                [fa, ba]
            },
        );
        f.counter("dvs_instance_frames", "Ethernet frames through the instance's VM port (in: delivered to it, out: sent by it).", frames)?;
        f.counter(
            "dvs_instance_bytes",
            "Bytes through the instance's VM port (in: delivered to it, out: sent by it).",
            bytes,
        )?;
        f.counter(
            "dvs_instance_drops",
            "Frames from the instance that the proxy dropped, by reason.",
            ports.iter().flat_map(|(l, p)| drops(l, &p.drops)),
        )?;
        let guests: Vec<_> = all
            .iter()
            .filter_map(|i| Some((of(i), i.guest.counters.as_ref()?)))
            .collect();
        f.counter(
            "dvs_guest_retransmits",
            "M3-IPC frames the instance's engine retransmitted (as its guest reports).",
            guests.iter().map(|(l, c)| (l.clone(), c.retransmits)),
        )?;
        f.counter(
            "dvs_guest_duplicates",
            "Duplicate M3-IPC requests the instance's engine answered from its dedup table.",
            guests.iter().map(|(l, c)| (l.clone(), c.duplicates)),
        )?;
        f.counter(
            "dvs_guest_bad_frames",
            "Frames the instance's engine could not decode.",
            guests.iter().map(|(l, c)| (l.clone(), c.bad_frames)),
        )
    }

    fn encode_dcs(&self, f: &mut Families) -> fmt::Result {
        let dcs: Vec<_> = self
            .stats
            .dcs
            .iter()
            .map(|(dc, c)| (vec![("dc", dc.to_string())], c))
            .collect();
        let flow = |pick: fn(&Flow) -> u64, lan: bool| {
            dcs.iter()
                .map(move |(l, c)| (l.clone(), pick(if lan { &c.lan } else { &c.m3ipc })))
        };
        f.counter(
            "dvs_dc_m3ipc_frames",
            "M3-IPC frames of the DC that the node's proxy routed.",
            flow(|x| x.frames, false),
        )?;
        f.counter(
            "dvs_dc_m3ipc_bytes",
            "Bytes of M3-IPC frames of the DC that the node's proxy routed.",
            flow(|x| x.bytes, false),
        )?;
        f.counter(
            "dvs_dc_lan_frames",
            "Virtual-LAN frames of the DC that the node's proxy switched.",
            flow(|x| x.frames, true),
        )?;
        f.counter(
            "dvs_dc_lan_bytes",
            "Bytes of virtual-LAN frames of the DC that the node's proxy switched.",
            flow(|x| x.bytes, true),
        )?;
        f.counter(
            "dvs_dc_drops",
            "Frames of the DC that the node's proxy dropped, by reason.",
            dcs.iter().flat_map(|(l, c)| drops(l, &c.drops)),
        )?;
        f.counter(
            "dvs_dc_refusals",
            "Error or Migrated answers the proxy sent to the DC's callers, by code (other_dc is a part of unknown_destination).",
            dcs.iter().flat_map(|(l, c)| {
                c.refused.by_code().into_iter().map(move |(code, n)| {
                    let mut l = l.clone();
                    l.push(("code", code.into()));
                    (l, n)
                })
            }),
        )?;
        fn kinds(c: &dvs_proxy::counters::DcCounters) -> [(&'static str, &Histogram); 3] {
            [
                ("sendrec", &c.calls.sendrec),
                ("send", &c.calls.send),
                ("vcopy", &c.calls.vcopy),
            ]
        }
        let calls: Vec<_> = dcs
            .iter()
            .flat_map(|(l, c)| {
                kinds(c).into_iter().map(move |(kind, h)| {
                    let mut l = l.clone();
                    l.push(("kind", kind.into()));
                    (l, h)
                })
            })
            .collect();
        f.histogram(
            "dvs_dc_call_seconds",
            "Calls of the DC through this node, from the request passing its proxy to the answer coming back (a retransmission keeps the first time), by kind.",
            calls.iter().map(|(l, h)| (l.clone(), *h)),
        )?;
        f.counter(
            "dvs_dc_calls_failed",
            "Calls of the DC through this node that were answered with an Error.",
            dcs.iter().map(|(l, c)| (l.clone(), c.calls.failed)),
        )
    }

    fn encode_peers(&self, f: &mut Families) -> fmt::Result {
        let peers: Vec<_> = self
            .stats
            .peers
            .iter()
            .map(|(id, c)| (vec![("peer", id.to_string())], c))
            .collect();
        f.gauge(
            "dvs_peer_up",
            "1 while the peer link to the node is up.",
            peers
                .iter()
                .map(|(l, c)| (l.clone(), f64::from(u8::from(c.up)))),
        )?;
        f.gauge(
            "dvs_peer_rtt_seconds",
            "The peer link's latest round trip (a Ping every heartbeat period to its Pong, through both proxies' queues).",
            peers.iter().filter_map(|(l, c)| Some((l.clone(), c.rtt_us? as f64 / 1e6))),
        )?;
        let (mut frames, mut bytes) = (vec![], vec![]);
        for (l, c) in &peers {
            let [fr, by] = flows(l, c.rx, c.tx);
            frames.extend(fr);
            bytes.extend(by);
        }
        f.counter(
            "dvs_peer_frames",
            "Frames over the peer link (in: received, out: sent).",
            frames,
        )?;
        f.counter(
            "dvs_peer_bytes",
            "Bytes over the peer link (in: received, out: sent).",
            bytes,
        )?;
        f.counter(
            "dvs_peer_connects",
            "Times the peer link came up.",
            peers.iter().map(|(l, c)| (l.clone(), c.connects)),
        )?;
        f.counter(
            "dvs_peer_drops",
            "Frames to or from the peer that were dropped, by reason.",
            peers.iter().flat_map(|(l, c)| drops(l, &c.drops)),
        )?;
        f.counter(
            "dvs_peer_directory_refused",
            "Directory messages from the peer that were refused (an endpoint it does not own, a forged handover).",
            peers.iter().map(|(l, c)| (l.clone(), c.dir_refused)),
        )?;
        let links = &self.stats.links;
        f.counter(
            "dvs_peer_links_refused",
            "Peer links refused before they carried anything, by reason.",
            [
                ("tls", links.tls_refused),
                ("id_mismatch", links.id_mismatch),
                ("hello", links.hello_refused),
            ]
            .into_iter()
            .map(|(r, n)| (vec![("reason", r.to_string())], n)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
    }

    fn value(
        scrape: &prometheus_parse::Scrape,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    #[test]
    fn proxy_counters_become_labelled_families() {
        let mut stats = Stats::default();
        let dc = stats.dcs.entry(3).or_default();
        dc.m3ipc.add(100);
        dc.m3ipc.add(50);
        dc.drops.rate_limited = 4;
        dc.refused.other_dc = 2;
        dc.calls.sendrec.observe(300);
        dc.calls.sendrec.observe(7_000);
        let peer = stats.peers.entry(2).or_default();
        peer.up = true;
        peer.rtt_us = Some(250);
        peer.tx.add(60);
        stats.links.tls_refused = 5;
        let text = render(Snapshot {
            node: 1,
            version: "0.1.0".into(),
            stats,
            images: 2,
            image_bytes: 4096,
            ..Snapshot::default()
        })
        .unwrap();
        let s = parse(&text);
        assert_eq!(
            value(&s, "dvs_dc_m3ipc_frames_total", &[("dc", "3")]),
            Some(2.0)
        );
        assert_eq!(
            value(&s, "dvs_dc_m3ipc_bytes_total", &[("dc", "3")]),
            Some(150.0)
        );
        assert_eq!(
            value(
                &s,
                "dvs_dc_drops_total",
                &[("dc", "3"), ("reason", "rate_limited")]
            ),
            Some(4.0)
        );
        assert_eq!(
            value(&s, "dvs_dc_refusals_total", &[("code", "other_dc")]),
            Some(2.0)
        );
        assert_eq!(value(&s, "dvs_peer_up", &[("peer", "2")]), Some(1.0));
        assert_eq!(
            value(&s, "dvs_peer_rtt_seconds", &[("peer", "2")]),
            Some(0.00025)
        );
        assert_eq!(
            value(
                &s,
                "dvs_peer_bytes_total",
                &[("peer", "2"), ("direction", "out")]
            ),
            Some(60.0)
        );
        assert_eq!(
            value(&s, "dvs_peer_links_refused_total", &[("reason", "tls")]),
            Some(5.0)
        );
        assert_eq!(value(&s, "dvs_image_store_bytes", &[]), Some(4096.0));
        let hist = s
            .samples
            .iter()
            .find(|x| x.metric == "dvs_dc_call_seconds" && x.labels.get("kind") == Some("sendrec"))
            .expect("a sendrec histogram");
        let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
            panic!("not a histogram: {:?}", hist.value);
        };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(at(0.00025), Some(0.0));
        assert_eq!(at(0.0005), Some(1.0));
        assert_eq!(at(0.01), Some(2.0));
        assert_eq!(at(f64::INFINITY), Some(2.0));
        assert!(
            text.contains("dvs_dc_call_seconds_sum{dc=\"3\",kind=\"sendrec\"} 0.0073"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut stats = Stats::default();
        stats.ports.insert("x".into(), Default::default());
        let text = render(Snapshot {
            version: "a\"b\\c\nd".into(),
            stats,
            ..Snapshot::default()
        })
        .unwrap();
        assert!(text.contains(r#"version="a\"b\\c\nd""#), "{text}");
        parse(&text);
    }
}
