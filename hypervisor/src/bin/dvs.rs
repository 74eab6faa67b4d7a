//! `dvs`: the node daemon and the client CLI. See `dvs --help` and hypervisor/README.md.

use clap::Parser;
use dvs_hypervisor::cli;

fn main() {
    let args = cli::Cli::parse();
    if !args.is_daemon() {
        // A client piped into `head` ends quietly, like other Unix tools.
        // SAFETY: setting a signal disposition to its default before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dvs: cannot start the runtime: {e}");
            std::process::exit(cli::exit::FAILED);
        }
    };
    if let Err(e) = rt.block_on(cli::main(args)) {
        eprintln!("dvs: {e:#}");
        std::process::exit(cli::exit_code(&e));
    }
}
