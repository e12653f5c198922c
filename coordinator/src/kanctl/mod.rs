//! `kanctl`: the command line of Kanister, a client of the coordinator's gRPC API.
//!
//! - [`actionset`]: `create actionset` flags → ActionSet (pure, table-tested).
//! - [`profile`]: `create profile s3compliant|gcp|azure|local` flags → request.
//! - [`client`]: connection settings (flags, environment, config file) and the gRPC client.
//! - [`output`]: tables, `describe`, the live progress line.
//! - [`run`]: executes a parsed command; [`Outcome::exit_code`] is the process's exit code.
//!
//! Exit codes: 0 success (an awaited ActionSet complete), 1 an error (bad input, unreachable
//! coordinator, refused token, invalid blueprint or profile), 2 bad usage (clap), 3 an awaited
//! ActionSet failed, 4 it was cancelled.

pub mod actionset;
pub mod client;
pub mod output;
pub mod profile;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kanister_proto::coordinator::v1 as pb;

use crate::crd::ActionSet;
use client::{Connection, ConnectionArgs};

/// Errors of kanctl; each names the field or the setting and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or a file is wrong.
    #[error("{0}")]
    Usage(String),
    /// The coordinator cannot be reached.
    #[error(
        "cannot reach the coordinator at {address}: {cause}; check --coordinator (KANCTL_COORDINATOR) and that the \
         coordinator is running"
    )]
    Unreachable {
        /// The address tried.
        address: String,
        /// Why.
        cause: String,
    },
    /// The coordinator refused the token.
    #[error("the coordinator refused the token: set KANCTL_TOKEN or --token-file to the coordinator's token")]
    Unauthenticated,
    /// The coordinator answered with an error.
    #[error("{0}")]
    Api(String),
    /// A validation found problems (already printed).
    #[error("{what} has {count} problem(s)")]
    Invalid {
        /// What was validated.
        what: String,
        /// How many problems.
        count: usize,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unauthenticated => Error::Unauthenticated,
            _ => Error::Api(s.message().to_string()),
        }
    }
}

/// The result type of kanctl.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// kanctl: create and follow Kanister ActionSets and Profiles through the coordinator.
///
/// Exit codes: 0 success, 1 error, 2 bad usage, 3 the awaited ActionSet failed, 4 it was
/// cancelled.
#[derive(Parser, Debug)]
#[command(name = "kanctl", version)]
pub struct Cli {
    #[command(flatten)]
    /// Connection settings.
    pub connection: ConnectionArgs,
    /// Display verbose output (as upstream: the created object, in full).
    #[arg(long, global = true)]
    pub verbose: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// kanctl's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an ActionSet or a Profile.
    Create(CreateArgs),
    /// Validate a Profile or a Blueprint, reporting every problem.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// List ActionSets.
    #[command(subcommand)]
    Get(GetCommand),
    /// Show an ActionSet: phases, outputs, artifacts, errors, events.
    #[command(subcommand)]
    Describe(DescribeCommand),
    /// Follow an ActionSet until it ends, reconnecting after a dropped connection.
    Watch(WatchArgs),
    /// Cancel a running ActionSet (its defer phase still runs).
    Cancel(RefArgs),
    /// Delete an ActionSet.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// List what a Profile's repository holds: each snapshot with its time, kind, sizes, tags
    /// and the ActionSet and artifact that produced it.
    Snapshots(SnapshotsArgs),
}

/// `create` and the flags upstream also takes before the kind (`kanctl create --dry-run
/// actionset ...`); the same flags after the kind work as well.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Print the object (YAML) instead of creating it.
    #[arg(long)]
    pub dry_run: bool,
    /// Create without validating first.
    #[arg(long)]
    pub skip_validation: bool,
    /// What to create.
    #[command(subcommand)]
    pub command: CreateCommand,
}

impl CreateArgs {
    /// Applies the flags given before the kind to the kind's own.
    pub fn push_down(&mut self) {
        match &mut self.command {
            CreateCommand::Actionset(a) => {
                a.dry_run |= self.dry_run;
                a.skip_validation |= self.skip_validation;
            }
            CreateCommand::Profile(p) => {
                let common = p.common_mut();
                common.dry_run |= self.dry_run;
                common.skip_validation |= self.skip_validation;
            }
        }
    }
}

/// The namespace `-n` defaults to: the current kubeconfig context's (`KUBECONFIG`, else
/// `~/.kube/config`) where it names one, else `kanister`.
pub fn default_namespace() -> String {
    // Clap builds every subcommand's `-n` default: read the kubeconfig once per process.
    static NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAMESPACE
        .get_or_init(|| {
            kube::config::Kubeconfig::read()
                .ok()
                .and_then(|k| {
                    let current = k.current_context.clone()?;
                    k.contexts.into_iter().find(|c| c.name == current)?.context?.namespace
                })
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "kanister".into())
        })
        .clone()
}

/// Upstream's default (and only) function version.
pub const FUNCTION_VERSION: &str = "v0.0.0";

/// What to create.
#[derive(Subcommand, Debug)]
pub enum CreateCommand {
    /// Create an ActionSet.
    Actionset(Box<actionset::CreateActionSetArgs>),
    /// Create a Profile and its Secret, checked by a probe write.
    #[command(subcommand)]
    Profile(Box<profile::ProfileCommand>),
}

/// What to validate: upstream's syntax (`--name`, `--resource-namespace`, `-f FILE` or `-`,
/// `--schema-validation-only`, `-v/--functionVersion`), the positional name as an alias.
#[derive(Subcommand, Debug)]
pub enum ValidateCommand {
    /// Validate a Profile (fields, Secret, probe write/read/delete); a file only for its schema
    /// and fields (the probe needs the stored Profile's Secret).
    Profile(ValidateArgs),
    /// Validate a Blueprint, stored or from a file.
    Blueprint(ValidateArgs),
}

/// `validate` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// The resource (stored in the namespace); or --name, or -f.
    #[arg(conflicts_with_all = ["name_flag", "filename"])]
    pub name: Option<String>,
    /// The K8s name of the custom resource to validate.
    #[arg(long = "name", id = "name_flag", conflicts_with = "filename")]
    pub name_flag: Option<String>,
    /// Namespace of the resource (when --resource-namespace is not given).
    #[arg(short = 'n', long, env = "KANCTL_NAMESPACE", default_value_t = default_namespace())]
    pub namespace: String,
    /// Namespace of the custom resource (upstream's flag; wins over -n).
    #[arg(long)]
    pub resource_namespace: Option<String>,
    /// YAML or JSON file of the custom resource to validate ("-": stdin).
    #[arg(short = 'f', long)]
    pub filename: Option<PathBuf>,
    /// Only check the resource's schema (no templates, functions, Secret or probe).
    #[arg(long)]
    pub schema_validation_only: bool,
    /// Kanister function version, as upstream (only v0.0.0 is served).
    #[arg(short = 'v', long = "functionVersion", default_value = FUNCTION_VERSION)]
    pub function_version: String,
}

impl ValidateArgs {
    /// The resource's name, from the argument or --name.
    pub fn resource_name(&self) -> Option<String> {
        self.name.clone().or_else(|| self.name_flag.clone()).filter(|n| !n.is_empty())
    }

    /// The resource's namespace: --resource-namespace, else -n.
    pub fn resource_namespace(&self) -> String {
        self.resource_namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| self.namespace.clone())
    }

    fn check(&self, kind: &str) -> Result<()> {
        if self.function_version != FUNCTION_VERSION {
            return Err(Error::Usage(format!(
                "--functionVersion {}: only the functions of version {FUNCTION_VERSION} (upstream's default) are \
                 served here",
                self.function_version
            )));
        }
        if self.filename.is_none() && self.resource_name().is_none() {
            return Err(Error::Usage(format!("name the {kind}: --name NAME (or -f FILE)")));
        }
        Ok(())
    }

    /// The file's text (stdin for "-").
    fn read_file(&self) -> Result<Option<(String, String)>> {
        let Some(f) = &self.filename else { return Ok(None) };
        if f.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::Usage(format!("-f -: cannot read stdin: {e}")))?;
            return Ok(Some(("standard input".into(), text)));
        }
        let text =
            std::fs::read_to_string(f).map_err(|e| Error::Usage(format!("-f: cannot read {}: {e}", f.display())))?;
        Ok(Some((f.display().to_string(), text)))
    }
}

/// What to list.
#[derive(Subcommand, Debug)]
pub enum GetCommand {
    /// List ActionSets (one when NAME is given).
    #[command(alias = "actionset")]
    Actionsets {
        /// One ActionSet.
        name: Option<String>,
        /// Namespace.
        #[arg(short = 'n', long, env = "KANCTL_NAMESPACE", default_value_t = default_namespace())]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_parser = ["table", "json", "yaml"], default_value = "table")]
        output: String,
    },
}

/// What to describe.
#[derive(Subcommand, Debug)]
pub enum DescribeCommand {
    /// Describe an ActionSet.
    Actionset(RefArgs),
}

/// What to delete.
#[derive(Subcommand, Debug)]
pub enum DeleteCommand {
    /// Delete an ActionSet.
    Actionset(RefArgs),
}

/// An ActionSet by name.
#[derive(clap::Args, Debug, Clone)]
pub struct RefArgs {
    /// The ActionSet.
    pub name: String,
    /// Its namespace.
    #[arg(short = 'n', long, env = "KANCTL_NAMESPACE", default_value_t = default_namespace())]
    pub namespace: String,
}

/// `watch` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    /// The ActionSet.
    pub actionset: RefArgs,
    /// How long to keep reconnecting after the connection dropped.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub reconnect_timeout: Duration,
}

/// `snapshots` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotsArgs {
    /// The Profile, `namespace/name` or `name`.
    #[arg(short = 'p', long)]
    pub profile: String,
    /// Namespace of the Profile when --profile has none.
    #[arg(short = 'n', long, env = "KANCTL_NAMESPACE", default_value_t = default_namespace())]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_parser = ["table", "json", "yaml"], default_value = "table")]
    pub output: String,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (an awaited ActionSet complete).
    Success,
    /// The awaited ActionSet failed.
    Failed,
    /// The awaited ActionSet was cancelled.
    Cancelled,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failed => 3,
            Outcome::Cancelled => 4,
        }
    }

    fn of(a: &pb::ActionSet) -> Self {
        match a.state.as_str() {
            "complete" => Outcome::Success,
            _ if a.error.contains("cancelled") => Outcome::Cancelled,
            _ => Outcome::Failed,
        }
    }
}

/// Where output goes.
pub struct Io<'a> {
    /// Results (tables, YAML).
    pub out: &'a mut (dyn Write + Send),
    /// Progress and notes.
    pub err: &'a mut (dyn Write + Send),
    /// Whether `err` is a terminal (the progress line is redrawn in place).
    pub live: bool,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").field("live", &self.live).finish_non_exhaustive()
    }
}

fn parse_actionset(a: &pb::ActionSet) -> Result<ActionSet> {
    serde_json::from_str(&a.actionset_json)
        .map_err(|e| Error::Api(format!("the coordinator sent an ActionSet that does not parse: {e}")))
}

/// Runs a parsed command. `env_token` is `KANCTL_TOKEN`.
pub async fn run(cli: Cli, env_token: Option<String>, io: &mut Io<'_>) -> Result<Outcome> {
    // What needs no coordinator is checked (or done) here first: a missing flag or an unreadable
    // file is reported as such, not as an unreachable coordinator.
    let mut cli = cli;
    if let Command::Create(c) = &mut cli.command {
        c.push_down();
    }
    let verbose = cli.verbose;
    match &cli.command {
        Command::Create(CreateArgs { command: CreateCommand::Actionset(args), .. }) => {
            if args.action.as_deref().is_none_or(str::is_empty) {
                return Err(Error::Usage("--action is required: e.g. --action backup".into()));
            }
            if args.from.is_none() {
                actionset::build(args, None)?;
            }
        }
        Command::Create(CreateArgs { command: CreateCommand::Profile(p), .. }) => {
            profile::request(p)?;
        }
        Command::Validate(ValidateCommand::Blueprint(v)) => {
            v.check("blueprint")?;
            if let Some((origin, text)) = v.read_file()? {
                return validate_blueprint_text(
                    &format!("blueprint file {origin}"),
                    &text,
                    v.schema_validation_only,
                    io,
                );
            }
        }
        Command::Validate(ValidateCommand::Profile(v)) => {
            v.check("profile")?;
            if let Some((origin, text)) = v.read_file()? {
                return validate_profile_text(&format!("profile file {origin}"), &text, io);
            }
        }
        _ => {}
    }
    let conn = Connection::resolve(&cli.connection, env_token)?;
    match cli.command {
        Command::Create(CreateArgs { command: CreateCommand::Actionset(args), .. }) => {
            create_actionset(&conn, &args, verbose, io).await
        }
        Command::Create(CreateArgs { command: CreateCommand::Profile(p), .. }) => {
            let req = profile::request(&p)?;
            let (dry, ns, name) = (req.dry_run, req.namespace.clone(), req.name.clone());
            let info = conn.connect().await?.create_profile(req).await?.into_inner();
            if dry {
                let v: serde_json::Value = serde_json::from_str(&info.profile_json).unwrap_or_default();
                write!(io.out, "{}", serde_norway::to_string(&v).unwrap_or_default())?;
            } else {
                writeln!(
                    io.out,
                    "secret '{}' created\nprofile '{name}' created in namespace '{ns}'",
                    info.secret_name
                )?;
            }
            Ok(Outcome::Success)
        }
        Command::Validate(ValidateCommand::Profile(v)) => {
            let (namespace, name) = (v.resource_namespace(), v.resource_name().unwrap_or_default());
            let request = pb::ValidateProfileRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                schema_only: v.schema_validation_only,
            };
            let report = conn.connect().await?.validate_profile(request).await?.into_inner();
            report_problems(&format!("profile {namespace}/{name}"), &report.problems, io)
        }
        Command::Validate(ValidateCommand::Blueprint(v)) => {
            let (namespace, name) = (v.resource_namespace(), v.resource_name().unwrap_or_default());
            let report = conn
                .connect()
                .await?
                .validate_blueprint(pb::ValidateBlueprintRequest {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    blueprint_yaml: String::new(),
                    schema_only: v.schema_validation_only,
                })
                .await?
                .into_inner();
            report_warnings(&report.warnings, io)?;
            report_problems(&format!("blueprint {namespace}/{name}"), &report.problems, io)
        }
        Command::Get(GetCommand::Actionsets { name, namespace, all_namespaces, output }) => {
            let mut client = conn.connect().await?;
            let list = match name {
                Some(name) => vec![client.get_action_set(pb::ActionSetRef { namespace, name }).await?.into_inner()],
                None => {
                    let ns = if all_namespaces { String::new() } else { namespace };
                    client.list_action_sets(pb::ListActionSetsRequest { namespace: ns }).await?.into_inner().actionsets
                }
            };
            let parsed = list.iter().map(parse_actionset).collect::<Result<Vec<_>>>()?;
            match output.as_str() {
                "json" => writeln!(io.out, "{}", serde_json::to_string_pretty(&parsed).unwrap_or_default())?,
                "yaml" => {
                    for a in &parsed {
                        write!(io.out, "---\n{}", serde_norway::to_string(a).unwrap_or_default())?;
                    }
                }
                _ => output::table(&list, &parsed, io.out)?,
            }
            Ok(Outcome::Success)
        }
        Command::Describe(DescribeCommand::Actionset(r)) => {
            let a = conn
                .connect()
                .await?
                .get_action_set(pb::ActionSetRef { namespace: r.namespace, name: r.name })
                .await?
                .into_inner();
            output::describe(&a, &parse_actionset(&a)?, io.out)?;
            Ok(Outcome::Success)
        }
        Command::Watch(w) => {
            let a = watch(&conn, &w.actionset.namespace, &w.actionset.name, w.reconnect_timeout, io).await?;
            Ok(Outcome::of(&a))
        }
        Command::Cancel(r) => {
            let a = conn
                .connect()
                .await?
                .cancel_action_set(pb::ActionSetRef { namespace: r.namespace, name: r.name })
                .await?
                .into_inner();
            writeln!(io.out, "actionset '{}': cancellation requested (state {})", a.name, a.state)?;
            Ok(Outcome::Success)
        }
        Command::Delete(DeleteCommand::Actionset(r)) => {
            conn.connect()
                .await?
                .delete_action_set(pb::ActionSetRef { namespace: r.namespace, name: r.name.clone() })
                .await?;
            writeln!(io.out, "actionset '{}' deleted", r.name)?;
            Ok(Outcome::Success)
        }
        Command::Snapshots(s) => {
            let (namespace, name) = match s.profile.split_once('/') {
                Some((ns, n)) => (ns.to_string(), n.to_string()),
                None => (s.namespace.clone(), s.profile.clone()),
            };
            let profile = format!("{namespace}/{name}");
            let list =
                conn.connect().await?.list_snapshots(pb::ListSnapshotsRequest { namespace, name }).await?.into_inner();
            match s.output.as_str() {
                "json" => {
                    let v = output::snapshots_value(&profile, &list);
                    writeln!(io.out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
                }
                "yaml" => {
                    let v = output::snapshots_value(&profile, &list);
                    write!(io.out, "{}", serde_norway::to_string(&v).unwrap_or_default())?;
                }
                _ => output::snapshots(&list, io.out)?,
            }
            Ok(Outcome::Success)
        }
    }
}

/// `validate blueprint -f FILE`: parsed and checked here, with the validator the coordinator
/// uses; no coordinator needed.
fn validate_blueprint_text(what: &str, text: &str, schema_only: bool, io: &mut Io<'_>) -> Result<Outcome> {
    let bp: crate::crd::Blueprint =
        serde_norway::from_str(text).map_err(|e| Error::Usage(format!("{what} does not parse as a Blueprint: {e}")))?;
    if schema_only {
        return report_problems(what, &[], io);
    }
    let to_pb =
        |p: crate::validate::Problem| pb::Problem { location: p.location.to_string(), message: p.kind.to_string() };
    let problems: Vec<pb::Problem> = crate::validate::problems(&bp).into_iter().map(to_pb).collect();
    let warnings: Vec<pb::Problem> = crate::validate::warnings(&bp).into_iter().map(to_pb).collect();
    report_warnings(&warnings, io)?;
    report_problems(what, &problems, io)
}

/// A Profile from a file: its schema and fields (the probe needs its Secret, which only the
/// coordinator reads: validate the stored Profile for that).
fn validate_profile_text(what: &str, text: &str, io: &mut Io<'_>) -> Result<Outcome> {
    let profile: crate::crd::profile::Profile =
        serde_norway::from_str(text).map_err(|e| Error::Usage(format!("{what} does not parse as a Profile: {e}")))?;
    let problems: Vec<pb::Problem> = crate::api::probe::schema(&profile.spec)
        .into_iter()
        .map(|p| pb::Problem { location: p.field, message: p.message })
        .collect();
    report_problems(what, &problems, io)
}

/// Prints warnings (they do not fail the validation).
fn report_warnings(warnings: &[pb::Problem], io: &mut Io<'_>) -> Result<()> {
    for w in warnings {
        writeln!(io.err, "warning: {}: {}", w.location, w.message)?;
    }
    Ok(())
}

fn report_problems(what: &str, problems: &[pb::Problem], io: &mut Io<'_>) -> Result<Outcome> {
    if problems.is_empty() {
        writeln!(io.out, "{what} is valid")?;
        return Ok(Outcome::Success);
    }
    writeln!(io.out, "{what} is invalid:")?;
    for p in problems {
        writeln!(io.out, "  - {}: {}", p.location, p.message)?;
    }
    Err(Error::Invalid { what: what.into(), count: problems.len() })
}

async fn create_actionset(
    conn: &Connection,
    args: &actionset::CreateActionSetArgs,
    verbose: bool,
    io: &mut Io<'_>,
) -> Result<Outcome> {
    let offline = args.dry_run && args.skip_validation && args.from.is_none() && args.selector.is_none();
    if offline {
        let (a, _) = actionset::build(args, None)?;
        write!(io.out, "{}", serde_norway::to_string(&a).unwrap_or_default())?;
        return Ok(Outcome::Success);
    }
    let mut client = conn.connect().await?;
    let parent = match &args.from {
        Some(from) => {
            let p = client
                .get_action_set(pb::ActionSetRef { namespace: args.namespace.clone(), name: from.clone() })
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::NotFound => Error::Usage(format!(
                        "--from: actionset {from} not found in namespace {}: check the name (kanctl get actionsets)",
                        args.namespace
                    )),
                    _ => s.into(),
                })?
                .into_inner();
            Some(parse_actionset(&p)?)
        }
        None => None,
    };
    let (a, selectors) = actionset::build(args, parent.as_ref())?;
    let created = client
        .create_action_set(pb::CreateActionSetRequest {
            actionset_json: serde_json::to_string(&a).unwrap_or_default(),
            selectors,
            dry_run: args.dry_run,
            skip_validation: args.skip_validation,
        })
        .await?
        .into_inner();
    if args.dry_run {
        write!(io.out, "{}", serde_norway::to_string(&parse_actionset(&created)?).unwrap_or_default())?;
        return Ok(Outcome::Success);
    }
    writeln!(io.out, "actionset {} created", created.name)?;
    if verbose {
        write!(io.err, "{}", serde_norway::to_string(&parse_actionset(&created)?).unwrap_or_default())?;
    }
    if !args.wait {
        return Ok(Outcome::Success);
    }
    let end = watch(conn, &created.namespace, &created.name, Duration::from_secs(300), io).await?;
    Ok(Outcome::of(&end))
}

/// Whether a watch error may pass by reconnecting (the connection dropped, the server
/// restarted).
fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::Aborted
            | tonic::Code::DeadlineExceeded
    )
}

/// Follows an ActionSet until it is complete or failed, printing a progress line on every
/// change. A dropped connection is re-established (for at most `reconnect_for` without
/// success) and the watch resumed from the last revision seen. Returns the final form.
pub async fn watch(
    conn: &Connection,
    namespace: &str,
    name: &str,
    reconnect_for: Duration,
    io: &mut Io<'_>,
) -> Result<pb::ActionSet> {
    let mut last = String::new();
    let mut line = output::ProgressLine::default();
    let mut down_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let broken: String = match conn.connect().await {
            Err(Error::Unreachable { cause, .. }) => cause,
            Err(e) => return Err(e),
            Ok(mut client) => {
                let req = pb::WatchActionSetRequest {
                    namespace: namespace.into(),
                    name: name.into(),
                    after_revision: last.clone(),
                };
                match client.watch_action_set(req).await {
                    Err(s) if retryable(&s) => s.message().to_string(),
                    Err(s) => return Err(s.into()),
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(m)) => {
                                    down_since = None;
                                    backoff = Duration::from_millis(100);
                                    last = m.revision.clone();
                                    line.show(&m, io)?;
                                    if matches!(m.state.as_str(), "complete" | "failed") {
                                        line.finish(&m, io)?;
                                        return Ok(m);
                                    }
                                }
                                // The server ended the stream without the final state: resume.
                                Ok(None) => break "the stream ended".to_string(),
                                Err(s) if retryable(&s) => break s.message().to_string(),
                                Err(s) => return Err(s.into()),
                            }
                        }
                    }
                }
            }
        };
        let since = *down_since.get_or_insert_with(Instant::now);
        if since.elapsed() > reconnect_for {
            return Err(Error::Unreachable { address: conn.address.clone(), cause: broken });
        }
        if io.live {
            write!(io.err, "\r\x1b[Kconnection lost ({broken}); reconnecting...")?;
        } else {
            writeln!(io.err, "connection lost ({broken}); reconnecting")?;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
