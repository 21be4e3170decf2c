use clap::Parser;
use dos::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "dos=info",
        1 => "dos=debug",
        _ => "dos=trace",
    };
    // Plain lines by default (they end up in CI logs); levels with -v.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_level(cli.verbose > 0)
        .without_time()
        .with_env_filter(
            dos::settings::log_filter()
                .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
                .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    // The far side is I/O and a light decoder: on one thread, no chunk is
    // handed between threads on its way from stdin to the daemon (a few
    // thousand context switches per image instead of ~15 000 measured).
    // The pushing side compresses, and its zstd calls block while the
    // workers are busy: the link must be fed from another thread then.
    let rt = match cli.command {
        Command::Pull(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Push(_) => tokio::runtime::Runtime::new(),
    }
    .expect("starting the tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Push(a) => {
                let mut opts = dos::push::PushOptions::new(a.image, strip_dashdash(a.command));
                opts.registry_port = a.registry_port;
                opts.via = a.via;
                opts.idle = a.link.idle();
                opts.hello = a.link.hello();
                if a.explain {
                    // The push side's stdout is the user's: the plan goes there.
                    print!("{}", opts.plan());
                    print!("{}", dos::push::explain_engines(&opts).await);
                    return Ok(());
                }
                dos::push::push(opts).await.map(|r| {
                    tracing::info!(
                        "dos: {} is on the far daemon{}{} (via {}{}; {} bytes sent, {} received, {:.1}s)",
                        r.image_id,
                        r.far_engine.as_deref().map(|e| format!(", {e}")).unwrap_or_default(),
                        r.local_id
                            .as_deref()
                            .map(|l| format!("; {l} here, on {}: the same config and layers", r.local_engine))
                            .unwrap_or_default(),
                        r.path,
                        r.source.map(|s| format!(", read by {s}")).unwrap_or_default(),
                        r.wire_out,
                        r.wire_in,
                        r.elapsed.as_secs_f64()
                    )
                })
            }
            Command::Pull(a) => {
                dos::pull::pull(dos::pull::PullOptions {
                    image: a.image,
                    allow: dos::allow::AllowList::new(a.allow),
                    original_command: dos::settings::ssh_original_command(),
                    idle: a.link.idle(),
                    hello: a.link.hello(),
                })
                .await
            }
        }
    });
    // Don't wait for stray tasks (a stuck stdin read) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    dos::stdio::restore();
    if let Err(e) = result {
        eprintln!("dos: error: {e:#}");
        std::process::exit(dos::error::exit_code(&e));
    }
}

fn strip_dashdash(mut v: Vec<String>) -> Vec<String> {
    if v.first().map(String::as_str) == Some("--") {
        v.remove(0);
    }
    v
}
