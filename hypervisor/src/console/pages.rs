//! The console's HTML (maud: every interpolated value is escaped).

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};

use super::session::{Flash, Session};
use super::Gathered;
use crate::auth::Role;
use crate::instances::{InstanceView, State};

fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — dvs console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/console" { "dvs" }
                    span.title { (title) }
                    @if let Some(s) = session {
                        span.who { "signed in: " (s.role.as_str()) }
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn flash_box(flash: Option<&Flash>) -> Markup {
    html! {
        @if let Some(f) = flash {
            div id="flash" class=(if f.ok { "flash ok" } else { "flash err" }) {
                @for l in &f.lines { div { (l) } }
            }
        }
    }
}

/// The page for a browser without a session.
pub fn signed_out() -> Markup {
    page(
        "sign in",
        None,
        html! {
            section {
                h1 { "Not signed in" }
                p { "The console is opened with a one-time login link, valid for two minutes. Ask a node for one with the "
                    code { "dvs" } " CLI and its credentials:" }
                pre { "dvs console" }
                p { "A link works once; a session lasts eight hours, with the role (admin or read-only) of the credentials that asked for it." }
            }
        },
    )
}

/// A page that says what went wrong.
pub fn error_page(status: StatusCode, why: &str) -> Markup {
    page(
        status.canonical_reason().unwrap_or("error"),
        None,
        html! {
            section {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.err { (why) }
                p { a href="/console" { "back to the console" } }
            }
        },
    )
}

fn state_class(s: &State) -> &'static str {
    match s {
        State::Running => "state running",
        State::Starting => "state starting",
        State::Stopped | State::Exited => "state stopped",
        State::Failed => "state failed",
    }
}

fn state_name(s: &State) -> &'static str {
    match s {
        State::Running => "running",
        State::Starting => "starting",
        State::Stopped => "stopped",
        State::Exited => "exited",
        State::Failed => "failed",
    }
}

/// "3d 4h", "5m 2s": how long since `since` (Unix seconds).
fn uptime(since: Option<u64>) -> String {
    let Some(since) = since else {
        return "—".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    human_secs(now.saturating_sub(since))
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn short_image(v: &InstanceView) -> String {
    if v.spec.image.len() == 64 && v.spec.image.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("sha256:{}", &v.spec.image[..12])
    } else {
        v.spec.image.clone()
    }
}

fn endpoints(eps: &[u32]) -> String {
    eps.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The instance table (also served alone, for the script to refresh it).
pub fn instances_table(g: &Gathered, s: &Session) -> Markup {
    let admin = s.role == Role::Admin && g.can_act;
    let node_ids: Vec<u16> = g.nodes.iter().map(|n| n.id).collect();
    html! {
        table.instances {
            thead { tr {
                th { "instance" } th { "DC" } th { "node" } th { "state" } th { "uptime" } th { "boots" }
                th { "image" } th { "endpoints" } th { "CPU" } th { "memory" }
                @if admin { th { "actions" } }
            } }
            tbody {
                @if g.instances.is_empty() {
                    tr { td colspan="11" .empty { "no instances" } }
                }
                @for i in &g.instances {
                    tr data-instance=(i.spec.name) {
                        td { a href=(format!("/console/instances/{}", i.spec.name)) { (i.spec.name) } }
                        td { (g.cluster.dcs.iter().find(|d| d.id == i.spec.dc).map_or_else(|| i.spec.dc.to_string(), |d| format!("{} ({})", d.name, d.id))) }
                        td.node { (i.node) }
                        td { span class=(state_class(&i.state)) { (state_name(&i.state)) }
                            @if let Some(why) = i.last_exit.as_ref().filter(|_| i.state != State::Running) {
                                div.why { (why) }
                            }
                        }
                        td { (uptime(i.started_at)) }
                        td { (i.boots) }
                        td.mono { (short_image(i)) }
                        td { (endpoints(&i.spec.endpoints)) }
                        td { (i.usage.map_or_else(|| "—".into(), |u| format!("{:.1} s", u.cpu_ns as f64 / 1e9))) }
                        td { (i.usage.map_or_else(|| "—".into(), |u| format!("{} MiB", u.memory_bytes >> 20))) }
                        @if admin {
                            td.actions {
                                form.inline method="post" action=(format!("/console/instances/{}/stop", i.spec.name)) {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button.danger type="submit" name="stop" { "stop" }
                                }
                                @if i.state != State::Running && i.state != State::Starting {
                                    form.inline method="post" action=(format!("/console/instances/{}/restart", i.spec.name)) {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        button type="submit" name="restart" { "start" }
                                    }
                                }
                                @if node_ids.len() > 1 {
                                    form.inline method="post" action=(format!("/console/instances/{}/migrate", i.spec.name)) {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        select name="to" aria-label="destination node" {
                                            @for n in node_ids.iter().filter(|n| **n != i.node) {
                                                option value=(n) { "node " (n) }
                                            }
                                        }
                                        button type="submit" name="migrate" { "migrate" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The overview: nodes, DCs (with their message-rate charts), instances, endpoints, and the action forms.
pub fn overview(g: &Gathered, s: &Session, flash: Option<&Flash>) -> Markup {
    let admin = s.role == Role::Admin && g.can_act;
    let body = html! {
        (flash_box(flash))
        @if !g.can_act {
            div.flash.err { "This node has no credentials for the nodes' APIs (api_tls.credentials in node.toml): the console shows this node only and cannot act." }
        }
        section {
            h2 { "Nodes" }
            table {
                thead { tr { th { "node" } th { "API" } th { "proxy" } th { "state" } th { "uptime" } th { "version" } th { "backend" } th { "instances" } th { "peer links" } } }
                tbody {
                    @for n in &g.nodes {
                        tr {
                            td { (n.id) @if n.id == g.me { " (this node)" } }
                            td.mono { (n.api) }
                            td.mono { (n.proxy) }
                            @match &n.status {
                                Ok(st) => {
                                    td { span.state.running { "up" } }
                                    td { (human_secs(st.uptime_s)) }
                                    td { (st.version) }
                                    td { (st.backend) }
                                    td { (st.instances) }
                                    td { @for (peer, up) in &st.peers {
                                        span class=(if *up { "peer up" } else { "peer down" }) { (peer) }
                                    } }
                                }
                                Err(e) => {
                                    td colspan="6" { span.state.failed { "not answering" } " " span.why { (e) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Distributed containers" }
            div.dcs {
                @for d in &g.cluster.dcs {
                    div.dc data-dc=(d.id) {
                        div.dc-head {
                            strong { (d.name) } " DC " (d.id)
                            span.muted { " on nodes " (d.nodes.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")) }
                        }
                        div.muted { (g.instances.iter().filter(|i| i.spec.dc == d.id).count()) " instances" }
                        svg.chart viewBox="0 0 240 48" preserveAspectRatio="none" role="img" aria-label=(format!("frames per second in DC {}", d.id)) {
                            polyline points="" {}
                        }
                        div.rate { "— frames/s" }
                    }
                }
            }
        }
        section {
            h2 { "Instances" }
            div id="instances" data-refresh="/console/fragment/instances" { (instances_table(g, s)) }
        }
        section {
            h2 { "Endpoints" }
            p.muted { "Where each endpoint lives, as this node's directory knows it." }
            table {
                thead { tr { th { "DC" } th { "endpoint" } th { "node" } th { "generation" } th { "port" } } }
                tbody {
                    @for p in &g.placements {
                        tr { td { (p.dc) } td { (p.ep) } td { (p.node) } td { (p.gen) } td.mono { (p.port.as_deref().unwrap_or("—")) } }
                    }
                }
            }
        }
        @if admin {
            section.forms {
                div {
                    h2 { "Start an instance" }
                    form method="post" action="/console/run" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        label { "name " input name="name" required pattern="[a-z0-9][a-z0-9-]{0,62}"; }
                        label { "image "
                            select name="image" {
                                @for im in &g.images {
                                    option value=(format!("{}:{}", im.manifest.name, im.manifest.version)) { (im.manifest.name) ":" (im.manifest.version) }
                                }
                            }
                        }
                        label { "DC "
                            select name="dc" { @for d in &g.cluster.dcs { option value=(d.id) { (d.name) " (" (d.id) ")" } } }
                        }
                        label { "node "
                            select name="node" { @for n in &g.nodes { option value=(n.id) selected[n.id == g.me] { (n.id) } } }
                        }
                        label { "endpoints " input name="endpoints" placeholder="30, 31"; }
                        label { "services " input name="services" placeholder="echo"; }
                        label { "memory (MiB) " input name="memory" inputmode="numeric" placeholder="default"; }
                        button type="submit" name="start" { "start" }
                    }
                }
                div {
                    h2 { "Apply a manifest" }
                    form method="post" action="/console/apply" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        textarea name="manifest" rows="10" spellcheck="false" placeholder="[dc]\nname = \"web\"\n\n[[instance]]\nname = \"echo\"\nimage = \"vos\"\nnode = 1\nendpoints = [30]\nservices = [\"echo\"]" {}
                        label { input type="checkbox" name="prune" value="1"; " stop the DC's instances that it does not list" }
                        button type="submit" name="apply" { "apply" }
                    }
                }
            }
        }
    };
    page(&format!("node {}", g.me), Some(s), body)
}

/// One instance: its spec, what the guest said, and its console log (followed live by the script).
pub fn instance(
    v: &InstanceView,
    log: &str,
    nodes: &[u16],
    s: &Session,
    flash: Option<&Flash>,
) -> Markup {
    let admin = s.role == Role::Admin;
    let here = format!("/console/instances/{}", v.spec.name);
    let body = html! {
        (flash_box(flash))
        section {
            h1 { (v.spec.name) " " span class=(state_class(&v.state)) { (state_name(&v.state)) } }
            dl.facts {
                dt { "node" } dd.node { (v.node) }
                dt { "DC" } dd { (v.spec.dc) }
                dt { "image" } dd.mono { (v.spec.image) }
                dt { "endpoints" } dd { (endpoints(&v.spec.endpoints)) }
                dt { "services" } dd { (v.spec.services.join(", ")) }
                dt { "uptime" } dd { (uptime(v.started_at)) }
                dt { "boots" } dd { (v.boots) }
                dt { "restart" } dd { (format!("{:?}", v.spec.restart).to_lowercase()) }
                dt { "backend" } dd { (v.backend) }
                dt { "binding generation" } dd { (v.gen) }
                @if let Some(why) = &v.last_exit { dt { "last exit" } dd { (why) } }
                @if let Some(r) = &v.guest.ready { dt { "guest" } dd { "ready, TSC " (r.tsc_mhz) " MHz" } }
                @if let Some(u) = v.usage { dt { "CPU / memory" } dd { (format!("{:.2} s", u.cpu_ns as f64 / 1e9)) " / " (u.memory_bytes >> 20) " MiB" } }
            }
            @if admin {
                div.actions {
                    form.inline method="post" action=(format!("{here}/stop")) {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button.danger type="submit" name="stop" { "stop" }
                    }
                    form.inline method="post" action=(format!("{here}/restart")) {
                        input type="hidden" name="csrf" value=(s.csrf);
                        input type="hidden" name="next" value=(here);
                        button type="submit" name="restart" { "restart" }
                    }
                    @if nodes.len() > 1 {
                        form.inline method="post" action=(format!("{here}/migrate")) {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="next" value=(here);
                            select name="to" aria-label="destination node" {
                                @for n in nodes.iter().filter(|n| **n != v.node) { option value=(n) { "node " (n) } }
                            }
                            button type="submit" name="migrate" { "migrate" }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Console log" span.muted { " (last lines; follows live)" } }
            pre id="log" data-follow=(format!("{here}/log")) { (log) }
        }
    };
    page(&v.spec.name, Some(s), body)
}
