use clap::Parser;
use dos::cli::{Cli, Command};
use dos::plugin::{self, Invocation};
use dos::progress::Mode;

fn main() {
    // Run as the Docker CLI plugin (`docker dos …`): the docker CLI's own
    // flags come first, then `dos`, then ours.
    let mut argv: Vec<String> = std::env::args().collect();
    let mut docker_host = None;
    if plugin::invoked_as_plugin(&argv[0]) {
        match plugin::parse(&argv[1..], dos::settings::docker_config_dir().as_deref()) {
            Ok(Invocation::Metadata) => {
                println!("{}", plugin::metadata());
                return;
            }
            Ok(Invocation::Run {
                args,
                docker_host: host,
                debug,
            }) => {
                docker_host = host;
                argv = std::iter::once("docker dos".to_string())
                    .chain(debug.then(|| "-v".to_string()))
                    .chain(args)
                    .collect();
            }
            Err(e) => fail(e),
        }
    }
    let cli = Cli::parse_from(argv);
    let quiet = match &cli.command {
        Command::Push(a) => a.quiet,
        Command::Fetch(a) => a.quiet,
        _ => false,
    };
    // A dos send's stderr reaches the fetcher's terminal: its own story is
    // the fetcher's to tell.
    let sending = matches!(&cli.command, Command::Send(_) | Command::Hub(_));
    let default = match (cli.verbose, quiet || sending) {
        (0, true) => "dos=warn",
        (0, false) => "dos=info",
        (1, _) => "dos=debug",
        _ => "dos=trace",
    };
    // Plain lines by default (they end up in CI logs); levels with -v.
    // Through the progress display's writer: above it, not through it.
    tracing_subscriber::fmt()
        .with_writer(dos::progress::StderrWriter)
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
        Command::Pull(_) | Command::Fetch(_) | Command::Hub(_) | Command::InstallPlugin(_) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        Command::Push(_) | Command::Send(_) => tokio::runtime::Runtime::new(),
    }
    .expect("starting the tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Push(a) => push(a, docker_host).await,
            Command::Pull(a) => {
                dos::pull::pull(dos::pull::PullOptions {
                    image: a.image,
                    allow: dos::allow::AllowList::new(a.allow),
                    original_command: dos::settings::ssh_original_command(),
                    idle: a.link.idle(),
                    hello: a.link.hello(),
                    docker_host,
                    display: Mode::Quiet,
                })
                .await
            }
            Command::Send(a) => dos::send::send(dos::send::SendOptions {
                image: a.image,
                allow: dos::allow::AllowList::new(a.allow),
                original_command: dos::settings::ssh_original_command(),
                idle: a.link.idle(),
                hello: a.link.hello(),
                docker_host,
            })
            .await
            .map(|r| tracing::debug!("dos: sent: {}", r.detail())),
            Command::Fetch(a) => fetch(a, docker_host).await,
            Command::Hub(a) => {
                dos::hub::hub(dos::hub::HubOptions {
                    registry: a.registry,
                    push: dos::allow::Repositories::new(a.push),
                    pull: dos::allow::Repositories::new(a.pull),
                    original_command: dos::settings::ssh_original_command(),
                    idle: a.link.idle(),
                    hello: a.link.hello(),
                })
                .await
            }
            Command::InstallPlugin(a) => {
                let link = plugin::install(&dos::settings::expand_home(&a.dir))?;
                eprintln!(
                    "dos: {} links to this dos: `docker dos push IMAGE --to HOST` works now",
                    link.display()
                );
                Ok(())
            }
        }
    });
    // Don't wait for stray tasks (a stuck stdin read) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    dos::stdio::restore();
    if let Err(e) = result {
        fail(e);
    }
}

async fn push(a: dos::cli::PushArgs, docker_host: Option<String>) -> anyhow::Result<()> {
    let mut targets = a.targets()?;
    let hub = a.hub_target()?;
    let mut opts = dos::push::PushOptions::new(a.image.clone(), strip_dashdash(a.command));
    opts.registry_port = a.registry_port;
    opts.via = a.via;
    opts.idle = a.link.idle();
    opts.hello = a.link.hello();
    opts.docker_host = docker_host;
    opts.display = if a.quiet {
        Mode::Quiet
    } else {
        Mode::for_stderr()
    };
    if a.explain {
        if let Some(t) = targets.first() {
            opts.command = t.pull_command(&a.image);
        }
        // The push side's stdout is the user's: the plan goes there.
        print!("{}", opts.plan());
        print!("{}", dos::push::explain_engines(&opts).await);
        return Ok(());
    }
    if hub.is_some() || targets.len() > 1 {
        // Several hosts ask no one: their prompts would interleave.
        for t in &mut targets {
            if t.install == dos::bootstrap::Install::Ask {
                t.install = dos::bootstrap::Install::No;
            }
        }
    }
    if let Some(hub) = hub {
        let report =
            dos::fanout::through_hub(opts, &hub, targets, a.hub_ssh.as_deref(), a.parallel).await?;
        dos::progress::write_stderr(report.table(&a.image).as_bytes());
        return report.into_result();
    }
    if targets.len() > 1 {
        let report = dos::fanout::push_many(opts, targets, a.parallel).await?;
        for h in &report.hosts {
            match &h.result {
                Ok(r) => tracing::info!("dos: {}: {}", h.host, r.detail()),
                Err(e) => dos::progress::write_stderr(
                    format!("dos: {}: error: {e:#}\n", h.host).as_bytes(),
                ),
            }
        }
        dos::progress::write_stderr(report.table(&a.image).as_bytes());
        return report.into_result();
    }
    let report = match targets.first() {
        Some(t) => dos::bootstrap::push_to(opts, t).await?,
        None => dos::push::push(opts).await?,
    };
    tracing::info!("dos: {}", report.detail());
    let host = targets
        .first()
        .map_or_else(|| "the far side".to_string(), |t| t.host.to_string());
    dos::progress::write_stderr(format!("{}\n", report.summary(&a.image, &host)).as_bytes());
    Ok(())
}

async fn fetch(a: dos::cli::FetchArgs, docker_host: Option<String>) -> anyhow::Result<()> {
    let target = a.target()?;
    let mut opts = dos::fetch::FetchOptions::new(a.image.clone(), strip_dashdash(a.command));
    opts.idle = a.link.idle();
    opts.hello = a.link.hello();
    opts.docker_host = docker_host;
    opts.display = if a.quiet {
        Mode::Quiet
    } else {
        Mode::for_stderr()
    };
    let got = match &target {
        Some(t) => dos::fetch::fetch_from(opts, t).await?,
        None => dos::fetch::fetch(opts).await?,
    };
    let from = target.map_or_else(|| "the far side".to_string(), |t| t.host.to_string());
    tracing::info!("dos: {}", got.detail());
    dos::progress::write_stderr(format!("{}\n", got.summary(&a.image, &from)).as_bytes());
    Ok(())
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("dos: error: {e:#}");
    std::process::exit(dos::error::exit_code(&e));
}

fn strip_dashdash(mut v: Vec<String>) -> Vec<String> {
    if v.first().map(String::as_str) == Some("--") {
        v.remove(0);
    }
    v
}
