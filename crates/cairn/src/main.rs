//! `cairn`: the command line. `serve` runs the service, `token` mints a JWT,
//! `ask` runs one turn (in-process in embedded mode, or against `--server`).

/// mimalloc: the service allocates many small, short-lived buffers (JSON, events);
/// measured faster than the system allocator in the load generator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod replay;

use anyhow::{Context, bail};
use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use cairn_core::*;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: agents that answer, with memory, tools and streaming"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Config file (TOML); see config/cairn.example.toml. CAIRN_SECTION__KEY
    /// environment variables override it.
    #[arg(long, env = "CAIRN_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory for embedded state (default ./.cairn).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

/// Arguments of the hidden `parse-document` command.
#[derive(Args)]
struct ParseDocumentArgs {
    #[arg(long)]
    format: String,
    #[arg(long, default_value = "")]
    title: String,
    #[arg(long)]
    max_bytes: u64,
    #[arg(long)]
    max_decompressed_bytes: u64,
    #[arg(long)]
    memory_bytes: u64,
    #[arg(long)]
    cpu_seconds: u64,
}

impl From<ParseDocumentArgs> for cairn_retrieval::isolation::ChildArgs {
    fn from(a: ParseDocumentArgs) -> Self {
        Self {
            format: a.format,
            title: a.title,
            limits: cairn_retrieval::formats::ParseLimits {
                max_bytes: a.max_bytes,
                max_decompressed_bytes: a.max_decompressed_bytes,
            },
            memory_bytes: a.memory_bytes,
            cpu_seconds: a.cpu_seconds,
        }
    }
}

#[derive(Subcommand)]
enum AnalyticsAction {
    /// Recounts a tenant's analytics overview by replaying every event of the
    /// embedded bus (slow; for checking the live counters) and prints it as JSON.
    Recount {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Start of the range (RFC 3339; default: 7 days before --to).
        #[arg(long)]
        from: Option<String>,
        /// End of the range (RFC 3339; default: now).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// What to run: `all` (API and actors), `api` (HTTP API only) or `worker`
        /// (actors and bus bridges only); overrides `server.role`.
        #[arg(long, value_parser = ["all", "api", "worker"])]
        role: Option<String>,
    },
    /// Print a JWT signed with the configured (or generated) secret.
    Token {
        #[command(flatten)]
        common: Common,
        /// The user (`sub`).
        #[arg(long)]
        sub: String,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Validity, e.g. 1h, 24h, 30d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Scopes to grant (repeatable), e.g. --scope admin.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Add documents (files and folders, recursively) to the embedded knowledge
    /// base, or through a running server with --server.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The tenant that owns the documents.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Upload to a running server (e.g. http://127.0.0.1:8080) instead of
        /// writing the embedded data dir.
        #[arg(long)]
        server: Option<String>,
        /// Token for --server, with the ingest scope (default: $CAIRN_TOKEN, else
        /// one minted with the configured secret).
        #[arg(long, env = "CAIRN_TOKEN")]
        token: Option<String>,
        /// How long to wait for the server to finish ingesting.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Search the embedded knowledge base.
    Search {
        #[command(flatten)]
        common: Common,
        /// The query.
        query: String,
        /// The tenant to search.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// hybrid, dense or sparse.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Hits to show.
        #[arg(long, default_value_t = 5)]
        limit: usize,
    },
    /// Internal: parse one document from stdin into JSON on stdout, within
    /// limits (the service runs this as a child process per upload).
    #[command(hide = true)]
    ParseDocument(ParseDocumentArgs),
    /// MCP tools from the configured servers (`[[mcp.servers]]`).
    Tools {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: ToolsAction,
        /// The tenant whose tools to use.
        #[arg(long, default_value = "default", global = true)]
        tenant: String,
        /// The user the calls are made for (sent to the server with the tenant).
        #[arg(long, default_value = "cli", global = true)]
        user: String,
    },
    /// Alerts, silences and the notification log of a running server.
    Alerts {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: AlertsAction,
        /// The server.
        #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
        server: String,
        /// Token (default: $CAIRN_TOKEN, else one minted with the configured
        /// secret, with the alerts scope).
        #[arg(long, env = "CAIRN_TOKEN", global = true)]
        token: Option<String>,
        /// The tenant (when minting a token).
        #[arg(long, default_value = "default", global = true)]
        tenant: String,
        /// The user (when minting a token).
        #[arg(long, default_value = "cli", global = true)]
        user: String,
        /// Print the API's JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Analytics from the embedded bus' raw events (the server must be stopped).
    Analytics {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: AnalyticsAction,
    },
    /// Replay a finished turn against another model or prompt: its recorded
    /// tool results are fed back instead of running the tools again; prints the
    /// old and new answers side by side.
    Replay {
        #[command(flatten)]
        common: Common,
        /// The turn (`turn_id`).
        turn: String,
        /// Its conversation.
        #[arg(long)]
        conversation: String,
        /// The model to replay with (default: `llm.model` of the configuration).
        #[arg(long)]
        model: Option<String>,
        /// A system prompt to replay with (default: `agent.system_prompt`).
        #[arg(long)]
        system_prompt: Option<String>,
        /// The running server holding the turn.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Token for --server (default: $CAIRN_TOKEN, else one minted with the
        /// configured secret).
        #[arg(long, env = "CAIRN_TOKEN")]
        token: Option<String>,
        /// The tenant (when minting a token).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The user (when minting a token).
        #[arg(long, default_value = "cli")]
        user: String,
        /// Print JSON instead of two columns.
        #[arg(long)]
        json: bool,
    },
    /// Ask one question and print the answer (exits non-zero if the turn fails).
    Ask {
        #[command(flatten)]
        common: Common,
        /// The question.
        question: String,
        /// Continue this conversation (created when it does not exist).
        #[arg(long)]
        conversation: Option<String>,
        /// Ask a running server instead of running in-process.
        #[arg(long)]
        server: Option<String>,
        /// Token for --server (default: $CAIRN_TOKEN, else one minted with the
        /// configured secret).
        #[arg(long, env = "CAIRN_TOKEN")]
        token: Option<String>,
        /// The tenant to ask as (in-process, or when minting a token).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The user to ask as.
        #[arg(long, default_value = "cli")]
        user: String,
        /// Give up after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum AlertsAction {
    /// Lists the tenant's active and recently resolved alerts.
    List {
        /// `firing` or `resolved`.
        #[arg(long)]
        state: Option<String>,
        /// A label matcher, e.g. 'severity="critical"' (repeatable).
        #[arg(long = "filter")]
        filters: Vec<String>,
    },
    /// Shows the notification log, newest first.
    Notifications {
        /// Most entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Silences: `add MATCHER… --duration 2h --comment …`, `list`, `expire ID`.
    Silence {
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// Sends one test notification to a receiver, e.g. `cairn alerts test ops`.
    Test {
        /// The receiver's name (`[[alerts.receivers]]`).
        receiver: String,
    },
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Creates a silence, e.g. `add 'alertname="DiskFull"' --duration 2h --comment "resizing"`.
    Add {
        /// Label matchers: name="v", name!="v", name=~"re", name!~"re".
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long it lasts.
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// Lists silences.
    List,
    /// Ends a silence now.
    Expire {
        /// The silence id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ToolsAction {
    /// Lists each server's health and the tools the tenant may use.
    List,
    /// Calls one tool, e.g. `cairn tools call calculator.evaluate '{"expression":"6*7"}'`.
    Call {
        /// `SERVER.TOOL`.
        name: String,
        /// The arguments (a JSON object).
        #[arg(default_value = "{}")]
        arguments: String,
    },
}

/// The log filter when `CAIRN_LOG` is unset: Cairn's own events from INFO up,
/// other crates' (rmcp, hyper, rdkafka, …) only from WARN, so that their
/// routine INFO lines (a child's stdin closing at shutdown, say) are not read
/// as faults. `CAIRN_LOG` takes `tracing` directives, e.g. `info` for all.
const DEFAULT_LOG_FILTER: &str = "warn,cairn=info,cairn_core=info,cairn_actors=info,\
    cairn_api=info,cairn_bus=info,cairn_store=info,cairn_redb=info,cairn_retrieval=info,\
    cairn_tools=info,cairn_llm=info,cairn_alerts=info,cairn_insights=info,cairn_desk=info";

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load_config(common: &Common, listen: Option<&String>) -> anyhow::Result<Config> {
    let mut config = Config::load(common.config.as_deref(), std::env::vars())?;
    if let Some(d) = &common.data_dir {
        config.server.data_dir = d.clone();
    }
    if let Some(l) = listen {
        config.server.listen = l.clone();
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The document parser child runs before any runtime or logger exists: it
    // limits itself, parses one document from stdin and exits.
    if let Command::ParseDocument(args) = cli.command {
        let code = cairn_retrieval::isolation::child_main(args.into());
        return ExitCode::from(u8::try_from(code).unwrap_or(2));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::ParseDocument(_) => Ok(ExitCode::from(2)),
        Command::Serve {
            common,
            listen,
            role,
        } => serve(&common, listen.as_ref(), role.as_deref()).await,
        Command::Ingest {
            common,
            paths,
            tenant,
            server,
            token,
            timeout,
        } => match server {
            Some(url) => ingest_remote(&common, &url, token, &paths, &tenant, timeout).await,
            None => ingest(&common, &paths, &tenant).await,
        },
        Command::Search {
            common,
            query,
            tenant,
            mode,
            limit,
        } => search(&common, &query, &tenant, &mode, limit).await,
        Command::Tools {
            common,
            action,
            tenant,
            user,
        } => tools(&common, action, &tenant, &user).await,
        Command::Alerts {
            common,
            action,
            server,
            token,
            tenant,
            user,
            json,
        } => alerts(&common, action, &server, token, (&tenant, &user), json).await,
        Command::Analytics {
            common,
            action: AnalyticsAction::Recount { tenant, from, to },
        } => analytics_recount(&common, &tenant, from.as_deref(), to.as_deref()).await,
        Command::Token {
            common,
            sub,
            tenant,
            ttl,
            scopes,
        } => token(&common, &sub, &tenant, ttl, &scopes),
        Command::Replay {
            common,
            turn,
            conversation,
            model,
            system_prompt,
            server,
            token,
            tenant,
            user,
            json,
        } => {
            let who = (tenant.as_str(), user.as_str());
            let with = replay::With {
                model,
                system_prompt,
                json,
            };
            replay::run(&common, &server, token, who, &conversation, &turn, with).await
        }
        Command::Ask {
            common,
            question,
            conversation,
            server,
            token,
            tenant,
            user,
            timeout,
        } => {
            let who = (tenant.as_str(), user.as_str());
            match server {
                Some(url) => {
                    ask_remote(&common, &url, token, who, conversation, &question, timeout).await
                }
                None => ask_local(&common, who, conversation, &question, timeout).await,
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// How long past `server.shutdown_timeout` the watchdog lets a shutdown run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn serve(
    common: &Common,
    listen: Option<&String>,
    role: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut config = load_config(common, listen)?;
    if let Some(role) = role {
        config.server.role = serde_json::from_value(serde_json::Value::String(role.into()))?;
        config.validate()?;
    }
    // Every open stream (SSE, WebSocket) holds a socket: take the hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut app = app::build(&config, &env_lookup, ToolCatalog::new(), None).await?;
    if let (Some(path), Some(hub)) = (common.config.clone(), app.tools.clone()) {
        // `POST /v1/admin/tools/reload` and edits of the file reload the servers.
        let source: cairn_api::state::ToolsSource = Arc::new(move || {
            let c = Config::load(Some(&path), std::env::vars()).map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())?;
            Ok(c.mcp)
        });
        app.state.tools_source = Some(source.clone());
        tokio::spawn(cairn::app::watch_tools_config(
            common.config.clone().unwrap_or_default(),
            source,
            hub,
        ));
    }
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.server.data_dir.display(), "cairn is listening");
    if app.dev_secret {
        let token = app.state.auth.mint(
            &UserId::parse("dev")?,
            &TenantId::parse("default")?,
            Duration::from_secs(24 * 3600),
            &[
                "admin".to_owned(),
                "operator".to_owned(),
                config.auth.ingest_scope.clone(),
                config.auth.alerts_scope.clone(),
                config.auth.desk_scope.clone(),
            ],
        )?;
        app.state.console_token = Some(token.clone());
        println!(
            "\nDevelopment mode: no [auth] configured, so a secret was generated in {}.\n\
             A token for tenant \"default\", user \"dev\", valid 24 hours:\n\n  export CAIRN_TOKEN={token}\n\n\
             Try: curl -s -X POST http://{addr}/v1/conversations -H \"Authorization: Bearer $CAIRN_TOKEN\"\n\
             or open the console at http://{addr}/console\n",
            config
                .server
                .data_dir
                .join(cairn::secret::SECRET_FILE)
                .display()
        );
    }
    let limit = config.server.shutdown_timeout;
    let signal = async move {
        shutdown_signal().await;
        // The graceful shutdown keeps to server.shutdown_timeout itself; this is
        // the backstop should something block past it.
        let _ = std::thread::Builder::new()
            .name("shutdown-watchdog".into())
            .spawn(move || {
                std::thread::sleep(limit + SHUTDOWN_GRACE);
                eprintln!("error: shutdown took longer than server.shutdown_timeout; exiting");
                std::process::exit(1);
            });
    };
    app.serve(listener, signal).await?;
    Ok(ExitCode::SUCCESS)
}

async fn ingest(common: &Common, paths: &[PathBuf], tenant: &str) -> anyhow::Result<ExitCode> {
    let config = load_config(common, None)?;
    let kb = app::open_knowledge(&config, &env_lookup).await?;
    let tenant = TenantId::parse(tenant)?;
    let in_flight = config.knowledge.ingest_concurrency;
    let s = cairn::ingest::ingest_paths_with(&kb, &tenant, paths, in_flight).await?;
    Ok(ingest_report(&s))
}

/// The token for `--server` commands: the one given, else one valid for an hour
/// minted with the configured (or generated) secret, with `scopes(config)`.
async fn alerts(
    common: &Common,
    action: AlertsAction,
    server: &str,
    token: Option<String>,
    (tenant, user): (&str, &str),
    raw: bool,
) -> anyhow::Result<ExitCode> {
    use cairn::alerts_cli::Action;
    cairn_llm::http::install_crypto_provider();
    let token = token_for_server(common, token, user, tenant, |c| {
        vec![c.auth.alerts_scope.clone()]
    })?;
    let action = match action {
        AlertsAction::List { state, filters } => Action::List { state, filters },
        AlertsAction::Notifications { limit } => Action::Notifications { limit },
        AlertsAction::Test { receiver } => Action::Test { receiver },
        AlertsAction::Silence { action } => match action {
            SilenceAction::Add {
                matchers,
                duration,
                comment,
            } => Action::SilenceAdd {
                matchers,
                duration,
                comment,
            },
            SilenceAction::List => Action::SilenceList,
            SilenceAction::Expire { id } => Action::SilenceExpire { id },
        },
    };
    println!(
        "{}",
        cairn::alerts_cli::run(server, &token, action, raw).await?
    );
    Ok(ExitCode::SUCCESS)
}

fn token_for_server(
    common: &Common,
    token: Option<String>,
    user: &str,
    tenant: &str,
    scopes: impl FnOnce(&Config) -> Vec<String>,
) -> anyhow::Result<String> {
    if let Some(t) = token {
        return Ok(t);
    }
    let config = load_config(common, None)?;
    let (auth, _) = app::authenticator(&config, &env_lookup)?;
    anyhow::ensure!(
        auth.has_secret(),
        "auth.jwks_url is set and no HS256 secret is configured (auth.jwt_secret_env): \
         tokens come from the identity provider"
    );
    Ok(auth.mint(
        &UserId::parse(user)?,
        &TenantId::parse(tenant)?,
        Duration::from_secs(3600),
        &scopes(&config),
    )?)
}

async fn ingest_remote(
    common: &Common,
    server: &str,
    token: Option<String>,
    paths: &[PathBuf],
    tenant: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    cairn_llm::http::install_crypto_provider();
    let token = token_for_server(common, token, "cli", tenant, |c| {
        vec![c.auth.ingest_scope.clone()]
    })?;
    let s = cairn::ingest::ingest_via_server(server, &token, paths, timeout).await?;
    Ok(ingest_report(&s))
}

fn ingest_report(s: &cairn::ingest::IngestSummary) -> ExitCode {
    for (file, reason) in &s.failed {
        eprintln!("failed: {}: {reason}", file.display());
    }
    println!(
        "added {}, replaced {}, unchanged {}, failed {} ({} chunks written)",
        s.added,
        s.replaced,
        s.unchanged,
        s.failed.len(),
        s.chunks
    );
    if s.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn tools(
    common: &Common,
    action: ToolsAction,
    tenant: &str,
    user: &str,
) -> anyhow::Result<ExitCode> {
    use cairn_actors::ToolProvider;
    cairn_llm::http::install_crypto_provider();
    let config = load_config(common, None)?;
    if config.mcp.servers.is_empty() {
        bail!("no MCP servers are configured ([[mcp.servers]] in the config file)");
    }
    let tenant = TenantId::parse(tenant)?;
    let host = cairn_tools::McpHost::start(&config.mcp, &env_lookup);
    host.wait_ready(Duration::from_secs(20)).await;
    let code = match action {
        ToolsAction::List => {
            for s in host.status(&tenant) {
                println!(
                    "{} [{}]",
                    s.name,
                    serde_json::to_value(s.health)?.as_str().unwrap_or("?")
                );
                if let Some(e) = &s.last_error {
                    println!("  last error: {e}");
                }
                for t in &s.tools {
                    println!("  {} — {}", t.name, t.description);
                }
            }
            ExitCode::SUCCESS
        }
        ToolsAction::Call { name, arguments } => {
            let args: Value = serde_json::from_str(&arguments)
                .with_context(|| "the arguments are not valid JSON")?;
            let Some(tool) = host
                .tools_for(&tenant)
                .into_iter()
                .find(|t| t.spec().name == name)
            else {
                bail!("no tool `{name}` for tenant {tenant} (see `cairn tools list`)");
            };
            let ctx = cairn_core::ports::ToolContext {
                knowledge_tags: Vec::new(),
                traceparent: None,
                cancel: Default::default(),
                tenant_id: tenant.clone(),
                user_id: UserId::parse(user)?,
                conversation_id: ConversationId::parse("cli")?,
                idempotency_key: format!("cli:{}", uuid::Uuid::now_v7()),
                deadline: config.agent.tool_timeout,
            };
            match tool.call(args, &ctx).await {
                Ok(out) if !out.is_error => {
                    println!("{}", out.content);
                    ExitCode::SUCCESS
                }
                Ok(out) => {
                    eprintln!("the tool reported an error: {}", out.content);
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    };
    host.shutdown();
    Ok(code)
}

async fn search(
    common: &Common,
    query: &str,
    tenant: &str,
    mode: &str,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let mode = match mode {
        "hybrid" => cairn_core::ports::SearchMode::Hybrid,
        "dense" => cairn_core::ports::SearchMode::Dense,
        "sparse" => cairn_core::ports::SearchMode::Sparse,
        other => bail!("--mode must be hybrid, dense or sparse, not `{other}`"),
    };
    let config = load_config(common, None)?;
    let kb = app::open_knowledge(&config, &env_lookup).await?;
    let out = cairn::ingest::search_text(&kb, &TenantId::parse(tenant)?, query, mode, limit)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

async fn analytics_recount(
    common: &Common,
    tenant: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use cairn_desk::analytics::{MemoryCounters, Range, Totals, fold, overview, plan};
    let config = load_config(common, None)?;
    if !config.kafka.brokers.is_empty() {
        anyhow::bail!("recount replays the embedded bus; this configuration uses Kafka");
    }
    let parse = |v: Option<&str>| -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        v.map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| anyhow::anyhow!("{s}: {e}"))
        })
        .transpose()
    };
    let to = parse(to)?.unwrap_or_else(chrono::Utc::now);
    let from = parse(from)?.unwrap_or(to - chrono::Duration::days(7));
    let tenant = TenantId::parse(tenant)?;
    let dir = &config.server.data_dir;
    let db = cairn_redb::Db::open(&dir.join(app::MEMORY_FILE))
        .map_err(|e| anyhow::anyhow!("{e} (is a server running on this data dir?)"))?;
    let bus = app::open_embedded_bus(dir, db).await?;
    let topics = cairn_core::ports::Topics::with_prefix(&config.bus.topic_prefix);
    let mut counters = MemoryCounters::default();
    let mut events = 0usize;
    for topic in [
        &topics.user_events,
        &topics.conversation_events,
        &topics.tickets,
    ] {
        let mut next = 0;
        loop {
            let page = bus.read_from(topic, next, 1024).await?;
            let Some((last, _)) = page.last() else { break };
            next = last + 1;
            // Records a consumer refuses (they go to the DLQ) count nothing.
            for rec in page.iter().filter_map(|(_, r)| r.as_ref().ok()) {
                if let Some(u) = fold(&rec.envelope) {
                    counters.apply(&u);
                    events += 1;
                }
            }
        }
    }
    let range = Range::new(from, to);
    let buckets = plan(range);
    let totals = Totals::of(&buckets, &counters.read(tenant.as_str(), &buckets));
    let mut out =
        json!({"tenant_id": tenant, "from": range.from, "to": range.to, "events_folded": events});
    if let (Some(o), Value::Object(b)) = (out.as_object_mut(), overview(&totals)) {
        o.extend(b);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

fn token(
    common: &Common,
    sub: &str,
    tenant: &str,
    ttl: Duration,
    scopes: &[String],
) -> anyhow::Result<ExitCode> {
    let config = load_config(common, None)?;
    let (auth, _) = app::authenticator(&config, &env_lookup)?;
    anyhow::ensure!(
        auth.has_secret(),
        "auth.jwks_url is set and no HS256 secret is configured (auth.jwt_secret_env): \
         tokens come from the identity provider"
    );
    let t = auth.mint(&UserId::parse(sub)?, &TenantId::parse(tenant)?, ttl, scopes)?;
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// Prints the outcome of a turn; the exit code says whether it answered.
fn report(status: &str, answer: &Value, error: &Value) -> ExitCode {
    if status == "completed" {
        println!("{}", answer["content"].as_str().unwrap_or_default());
        if let Some(cites) = answer["citations"].as_array().filter(|c| !c.is_empty()) {
            println!();
            for c in cites {
                println!(
                    "  [{}] {}",
                    c["source"].as_str().unwrap_or("?"),
                    c["snippet"].as_str().unwrap_or("")
                );
            }
        }
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "the turn failed ({}): {}",
            error["code"].as_str().unwrap_or("unknown"),
            error["reason"].as_str().unwrap_or("no reason given")
        );
        ExitCode::from(1)
    }
}

async fn ask_local(
    common: &Common,
    (tenant, user): (&str, &str),
    conversation: Option<String>,
    question: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let config = load_config(common, None)?;
    let app = app::build(&config, &env_lookup, ToolCatalog::new(), None).await?;
    let result = ask_in(
        &app,
        TenantId::parse(tenant)?,
        UserId::parse(user)?,
        conversation,
        question,
        timeout,
    )
    .await;
    app.stop().await;
    result
}

async fn ask_in(
    app: &app::App,
    tenant: TenantId,
    user: UserId,
    conversation: Option<String>,
    question: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let state = &app.state;
    let id = match conversation {
        Some(c) => ConversationId::parse(c)?,
        None => ConversationId::generate(),
    };
    if state.memory.get_conversation(&tenant, &id).await?.is_none() {
        let title = Some(question.chars().take(80).collect());
        let meta = ConversationMeta::new(id.clone(), tenant.clone(), user.clone(), title);
        state.memory.create_conversation(&meta).await?;
    }
    // The same admission as the HTTP paths: length and queue room.
    let caller = cairn_api::auth::Caller {
        tenant: tenant.clone(),
        user: user.clone(),
        scopes: Vec::new(),
        expires_at: None,
    };
    cairn_api::messages::admit(state, &caller, &id, question, "question")
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let after = state.events.last_event_id(&tenant, &id).await?;
    let request = cairn_api::messages::new_request(state, &tenant, &id, &user, question.to_owned());
    state.runtime.submit(&request, None).await?;
    eprintln!("conversation {id}");
    let mut events = state.events.subscribe(tenant, id, after);
    let outcome = tokio::time::timeout(timeout, async {
        while let Some(e) = events.next().await {
            let e = e?;
            if e.event.turn_id() != &request.turn_id {
                continue;
            }
            match e.event {
                TurnEvent::ToolCalled { tool, .. } => eprintln!("  calling {tool}…"),
                TurnEvent::AnswerCompleted {
                    content, citations, ..
                } => {
                    return Ok::<_, anyhow::Error>((
                        "completed",
                        json!({"content": content, "citations": citations}),
                        Value::Null,
                    ));
                }
                TurnEvent::TurnFailed { code, reason, .. } => {
                    return Ok((
                        "failed",
                        Value::Null,
                        json!({"code": code, "reason": reason}),
                    ));
                }
                TurnEvent::TurnCancelled { mode, reason, .. } => {
                    return Ok((
                        "cancelled",
                        Value::Null,
                        json!({"code": "cancelled", "mode": mode, "reason": reason}),
                    ));
                }
                _ => {}
            }
        }
        bail!("the event stream ended before the turn did")
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
    Ok(report(outcome.0, &outcome.1, &outcome.2))
}

async fn ask_remote(
    common: &Common,
    server: &str,
    token: Option<String>,
    (tenant, user): (&str, &str),
    conversation: Option<String>,
    question: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    cairn_llm::http::install_crypto_provider();
    let token = token_for_server(common, token, user, tenant, |_| Vec::new())?;
    let base = server.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(timeout + Duration::from_secs(5))
        .build()?;
    let id = match conversation {
        Some(c) => c,
        None => {
            let r = http
                .post(format!("{base}/v1/conversations"))
                .bearer_auth(&token)
                .json(&json!({"title": question.chars().take(80).collect::<String>()}))
                .send()
                .await
                .with_context(|| format!("cannot reach {base}"))?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!(
                    "creating a conversation failed: HTTP {status}: {}",
                    body["error"]["message"]
                );
            }
            body["id"].as_str().unwrap_or_default().to_owned()
        }
    };
    eprintln!("conversation {id}");
    let r = http
        .post(format!("{base}/v1/conversations/{id}/messages?wait=true"))
        .bearer_auth(&token)
        .json(&json!({ "content": question }))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "HTTP {status} {}: {}",
            body["error"]["code"].as_str().unwrap_or("?"),
            body["error"]["message"].as_str().unwrap_or("?")
        );
    }
    Ok(report(
        body["status"].as_str().unwrap_or("unknown"),
        &body["answer"],
        &body["error"],
    ))
}
