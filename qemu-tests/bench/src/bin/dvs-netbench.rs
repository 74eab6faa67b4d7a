//! `dvs-netbench`: the host-side baselines of scripts/bench-cluster.sh.
//!   dvs-netbench tcp-server ADDR                 echo fixed-size messages; also sinks throughput runs
//!   dvs-netbench tcp-pingpong ADDR N SIZE        N round trips of SIZE bytes: median and p99
//!   dvs-netbench tcp-throughput ADDR BYTES       send BYTES, wait for the server's acknowledgement: MB/s
//! With the feature `grpc` of dvs-bench (tonic, no protoc needed): `grpc-server ADDR`, `grpc-pingpong ADDR N SIZE`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{bail, Context};

/// First byte of a connection: what the client wants.
const PINGPONG: u8 = 1;
const THROUGHPUT: u8 = 2;

fn serve(mut s: TcpStream) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_be_bytes(len);
    match mode[0] {
        PINGPONG => {
            let mut buf = vec![0u8; len as usize];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf)?;
            }
        }
        THROUGHPUT => {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = s.read(&mut buf[..left.min(1 << 20) as usize])?;
                if n == 0 {
                    bail!("closed early");
                }
                left -= n as u64;
            }
            s.write_all(&[1])?;
        }
        m => bail!("unknown mode {m}"),
    }
    Ok(())
}

fn pingpong(addr: &str, n: usize, size: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.write_all(&[PINGPONG])?;
    s.write_all(&(size as u64).to_be_bytes())?;
    let mut buf = vec![7u8; size];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let (med, p99) = dvs_bench::median_p99_u64(lat);
    println!("tcp-pingpong n={n} size={size} median_ns={med} p99_ns={p99}");
    Ok(())
}

fn throughput(addr: &str, bytes: u64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.write_all(&[THROUGHPUT])?;
    s.write_all(&bytes.to_be_bytes())?;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    let us = t.elapsed().as_micros().max(1) as u64;
    println!("tcp-throughput bytes={bytes} us={us} mb_s={}", bytes / us);
    Ok(())
}

const USAGE: &str = "usage: dvs-netbench tcp-server ADDR | tcp-pingpong ADDR N SIZE | tcp-throughput ADDR BYTES | grpc-server ADDR | grpc-pingpong ADDR N SIZE (grpc-*: feature grpc)";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = || -> anyhow::Result<&str> {
        args.get(1)
            .map(String::as_str)
            .with_context(|| format!("missing ADDR; {USAGE}"))
    };
    let num = |i: usize| -> anyhow::Result<u64> {
        let v = args
            .get(i)
            .with_context(|| format!("missing argument {i}; {USAGE}"))?;
        v.parse()
            .with_context(|| format!("argument {i}: '{v}' is not a number"))
    };
    match args.first().map(String::as_str) {
        Some("tcp-server") => {
            let l = TcpListener::bind(addr()?)
                .with_context(|| format!("binding {}", addr().unwrap_or("?")))?;
            for s in l.incoming() {
                let s = s?;
                std::thread::spawn(move || {
                    let _ = serve(s);
                });
            }
            Ok(())
        }
        Some("tcp-pingpong") => pingpong(addr()?, num(2)? as usize, num(3)? as usize),
        Some("tcp-throughput") => throughput(addr()?, num(2)?),
        #[cfg(feature = "grpc")]
        Some("grpc-server") => dvs_bench::grpc::server(addr()?),
        #[cfg(feature = "grpc")]
        Some("grpc-pingpong") => {
            dvs_bench::grpc::pingpong(addr()?, num(2)? as usize, num(3)? as usize)
        }
        _ => bail!(USAGE),
    }
}
