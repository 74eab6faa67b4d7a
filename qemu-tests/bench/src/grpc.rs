//! The gRPC baseline of scripts/bench-cluster.sh (feature `grpc`): a unary echo call with tonic, written by
//! hand (no protoc). `dvs-netbench grpc-server ADDR` / `grpc-pingpong ADDR N SIZE` call it.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use anyhow::Context;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The request and the answer: some bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Blob {
    /// Payload.
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

const PATH: &str = "/dvsbench.Echo/Ping";

#[derive(Clone, Copy)]
struct Ping;

impl tonic::server::UnaryService<Blob> for Ping {
    type Response = Blob;
    type Future = Ready<Result<Response<Blob>, Status>>;
    fn call(&mut self, req: Request<Blob>) -> Self::Future {
        ready(Ok(Response::new(req.into_inner())))
    }
}

/// The echo service as tonic's router wants it.
#[derive(Clone, Copy)]
struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "dvsbench.Echo";
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != PATH {
                return Ok(Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Blob, Blob>::default());
            Ok(grpc.unary(Ping, req).await)
        })
    }
}

/// Serves the echo call on `addr` until killed.
pub fn server(addr: &str) -> anyhow::Result<()> {
    let addr = addr.parse().context("address")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve(addr)
            .await
    })?;
    Ok(())
}

/// `n` unary calls of `size` bytes: prints median and p99.
pub fn pingpong(addr: &str, n: usize, size: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            grpc.ready().await?;
            let path = http::uri::PathAndQuery::from_static(PATH);
            let r: Response<Blob> = grpc
                .unary(
                    Request::new(Blob {
                        data: vec![7; size],
                    }),
                    path,
                    ProstCodec::default(),
                )
                .await?;
            anyhow::ensure!(r.get_ref().data.len() == size, "short answer");
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let (med, p99) = crate::median_p99_u64(lat);
        println!("grpc-pingpong n={n} size={size} median_ns={med} p99_ns={p99}");
        Ok(())
    })
}
