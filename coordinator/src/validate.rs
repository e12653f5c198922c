//! Static validation of a Blueprint, without a cluster and without running anything.
//!
//! Used by `kanctl validate blueprint` and the admission webhook. [`problems`] reports every
//! problem found, each with its [`Location`], not only the first. The rules:
//!
//! 1. Each phase calls a known Kanister function ([`crate::functions`]).
//! 2. Each required argument of the function is present.
//! 3. No argument is unknown to the function.
//! 4. Phase names are non-empty and unique across the whole Blueprint, defer phases included
//!    (as upstream's `kanctl validate`).
//! 5. Every template (argument strings and keys, object references, output artifacts) parses
//!    and calls only known template functions.
//! 6. `.Phases.X` names a phase that runs before the template is rendered: an earlier phase of
//!    the same action (the defer phase and output artifacts may name any regular phase).
//! 7. `.ArtifactsIn.X` names an artifact declared in the action's `inputArtifactNames`.

use std::collections::BTreeMap;
use std::fmt;

use gotmpl::parse::{Expr, Node};

use crate::crd::{Blueprint, BlueprintAction, BlueprintPhase};
use crate::functions;
use crate::render::{Hint, Location, Renderer, closest_match, visit_node};

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Rule 1: `func` names no known function.
    UnknownFunction {
        /// The name used.
        function: String,
        /// The closest known function.
        hint: Hint,
    },
    /// Rule 2: a required argument is missing.
    MissingArgument {
        /// The function.
        function: String,
        /// The missing argument.
        argument: String,
    },
    /// Rule 3: an argument the function does not take.
    UnknownArgument {
        /// The function.
        function: String,
        /// The unknown argument.
        argument: String,
        /// The closest argument the function takes.
        hint: Hint,
    },
    /// Rule 4: a phase without a name.
    UnnamedPhase,
    /// A warning, not an error ([`warnings`]): a shell pipeline feeds `kando location push`
    /// without `pipefail`, so a dump that fails halfway still ends in a backup that looks
    /// complete.
    PipeWithoutPipefail,
    /// A warning ([`warnings`]): an upstream function this coordinator does not run; an action
    /// using it fails at that phase.
    NotServed {
        /// The function.
        function: String,
    },
    /// A warning ([`warnings`]): the Blueprint asks for the Profile's credential values in
    /// `toJson .Profile` (`kanister.io/profile-credentials: inline`), so they reach command
    /// lines; an error ([`problems`]) when the annotation has another value than the two.
    ProfileCredentials {
        /// The annotation's value.
        value: String,
    },
    /// Rule 4: a phase name used before.
    DuplicatePhase {
        /// The repeated name.
        name: String,
        /// Where it was first used (action name).
        first_action: String,
    },
    /// Rule 5: a template does not parse.
    TemplateSyntax {
        /// The parser's message.
        message: String,
    },
    /// Rule 5: a template calls an unknown function.
    UnknownTemplateFunction {
        /// The name used.
        function: String,
        /// The closest known function.
        hint: Hint,
    },
    /// Rule 6: `.Phases.X` names no phase that has run by then.
    PhaseNotEarlier {
        /// The phase named.
        phase: String,
        /// Why: the phase is later, is the current one, or does not exist in the action.
        reason: PhaseRefReason,
        /// The closest earlier phase.
        hint: Hint,
    },
    /// Rule 7: `.ArtifactsIn.X` names an undeclared artifact.
    UndeclaredInputArtifact {
        /// The artifact named.
        artifact: String,
        /// The closest declared artifact.
        hint: Hint,
    },
}

/// Why a `.Phases.X` reference is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseRefReason {
    /// No phase of the action has that name.
    Unknown,
    /// The phase runs later (or is the phase itself).
    NotYetRun,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::UnknownFunction { function, hint } => {
                write!(f, "unknown function {function:?}{hint}")
            }
            ProblemKind::MissingArgument { function, argument } => {
                write!(f, "function {function} requires argument {argument:?}")
            }
            ProblemKind::UnknownArgument { function, argument, hint } => {
                write!(f, "function {function} does not take argument {argument:?}{hint}")
            }
            ProblemKind::UnnamedPhase => write!(f, "phase has no name"),
            ProblemKind::NotServed { function } => write!(
                f,
                "{function} is upstream Kanister's and not run by this coordinator: an action reaching this phase \
                 fails; use the functions the README lists as served{}",
                if function.contains("RDS") {
                    " (for an RDS database: a KubeTask running mysqldump or pg_dump against its endpoint)"
                } else {
                    ""
                }
            ),
            ProblemKind::PipeWithoutPipefail => write!(
                f,
                "the command pipes into `kando location push` without `set -o pipefail` (or `bash -o pipefail`): \
                 a dump that fails halfway would still leave a backup that looks complete"
            ),
            ProblemKind::ProfileCredentials { value } if value == "inline" => write!(
                f,
                "{ANNOTATION}: inline puts the store's secret key on the command line of kando in the task \
                 pods (visible in ps on the node): keep it only for images that carry upstream's kando"
            ),
            ProblemKind::ProfileCredentials { value } => write!(
                f,
                "{ANNOTATION} is {value:?}: use \"reference\" (the default: no secret on command lines) or \
                 \"inline\" (for images that carry upstream's kando)"
            ),
            ProblemKind::DuplicatePhase { name, first_action } => write!(
                f,
                "phase name {name:?} is already used in action {first_action:?}; phase names \
                 must be unique in a blueprint"
            ),
            ProblemKind::TemplateSyntax { message } => write!(f, "template does not parse: {message}"),
            ProblemKind::UnknownTemplateFunction { function, hint } => {
                write!(f, "template calls unknown function {function:?}{hint}")
            }
            ProblemKind::PhaseNotEarlier { phase, reason, hint } => match reason {
                PhaseRefReason::Unknown => {
                    write!(f, ".Phases.{phase} names no phase of this action{hint}")
                }
                PhaseRefReason::NotYetRun => write!(
                    f,
                    ".Phases.{phase} names a phase that has not run yet when this template \
                     renders{hint}"
                ),
            },
            ProblemKind::UndeclaredInputArtifact { artifact, hint } => {
                write!(f, ".ArtifactsIn.{artifact} is not declared in the action's inputArtifactNames{hint}")
            }
        }
    }
}

/// One problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: blueprint, action, phase, argument (some may be empty).
    pub location: Location,
    /// What.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.kind)
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The Blueprint has problems; all of them are listed.
    #[error("blueprint {blueprint:?} is invalid ({} problems):\n{}", problems.len(), list(problems))]
    Invalid {
        /// Name of the Blueprint.
        blueprint: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

/// Validates a Blueprint; `Err` lists every problem.
pub fn check(bp: &Blueprint) -> Result<(), Error> {
    let problems = problems(bp);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid { blueprint: bp.metadata.name.clone().unwrap_or_default(), problems })
    }
}

/// What is allowed but probably wrong: every phase whose command pipes into `kando location
/// push` without `pipefail` (`set -o pipefail`, `set -eo pipefail`, `bash -o pipefail ...`).
pub fn warnings(bp: &Blueprint) -> Vec<Problem> {
    let name = bp.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    if credentials_annotation(bp) == Some("inline") {
        out.push(Problem {
            location: Location {
                blueprint: name.clone(),
                argument: "metadata.annotations".into(),
                ..Default::default()
            },
            kind: ProblemKind::ProfileCredentials { value: "inline".into() },
        });
    }
    for (action_name, action) in &bp.spec.actions {
        for phase in action.all_phases() {
            if functions::lookup(&phase.func).is_some_and(|f| f.runner.is_none()) {
                out.push(Problem {
                    location: Location::phase(&name, action_name, &phase.name),
                    kind: ProblemKind::NotServed { function: phase.func.clone() },
                });
            }
            let words: Vec<String> = phase
                .args
                .values()
                .flat_map(|v| match v {
                    serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                    serde_json::Value::String(s) => vec![s.clone()],
                    _ => vec![],
                })
                .collect();
            let text = words.join(" ");
            let pipes_into_push = text.split('|').skip(1).any(|after| {
                let t = after.trim_start();
                t.starts_with("kando location push") || t.starts_with("kando  location push")
            });
            let pipefail = text.contains("pipefail");
            if pipes_into_push && !pipefail {
                out.push(Problem {
                    location: Location {
                        argument: "command".into(),
                        ..Location::phase(&name, action_name, &phase.name)
                    },
                    kind: ProblemKind::PipeWithoutPipefail,
                });
            }
        }
    }
    out
}

const ANNOTATION: &str = crate::engine::PROFILE_CREDENTIALS_ANNOTATION;

/// The Blueprint's `kanister.io/profile-credentials` annotation, if any.
fn credentials_annotation(bp: &Blueprint) -> Option<&str> {
    bp.metadata.annotations.as_ref()?.get(ANNOTATION).map(String::as_str)
}

/// Every problem of a Blueprint, in a stable order (actions by name, phases in order).
pub fn problems(bp: &Blueprint) -> Vec<Problem> {
    let name = bp.metadata.name.clone().unwrap_or_default();
    let renderer = Renderer::new();
    let mut v = Validator { renderer: &renderer, out: Vec::new() };
    if let Some(value) = credentials_annotation(bp).filter(|v| !matches!(*v, "inline" | "reference")) {
        let at = Location { blueprint: name.clone(), argument: "metadata.annotations".into(), ..Default::default() };
        v.push(&at, ProblemKind::ProfileCredentials { value: value.to_string() });
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (action_name, action) in &bp.spec.actions {
        for phase in action.all_phases() {
            let at = Location::phase(&name, action_name, &phase.name);
            if phase.name.is_empty() {
                v.push(&at, ProblemKind::UnnamedPhase);
            } else if let Some(first) = seen.get(phase.name.as_str()) {
                v.push(
                    &at,
                    ProblemKind::DuplicatePhase { name: phase.name.clone(), first_action: (*first).to_string() },
                );
            } else {
                seen.insert(&phase.name, action_name);
            }
        }
        v.action(&name, action_name, action);
    }
    v.out
}

struct Validator<'r> {
    renderer: &'r Renderer,
    out: Vec<Problem>,
}

/// Which phases a template may name in `.Phases`.
struct Scope<'a> {
    action: &'a BlueprintAction,
    /// Phases that have run when the template renders.
    earlier: Vec<&'a str>,
    /// The phase being rendered: its own `.Phases.<self>.Secrets` / `.ConfigMaps` (resolved
    /// from its `objects`) are available, its `Output` is not.
    current: Option<&'a str>,
}

impl<'r> Validator<'r> {
    fn push(&mut self, at: &Location, kind: ProblemKind) {
        self.out.push(Problem { location: at.clone(), kind });
    }

    fn action(&mut self, bp: &str, action_name: &str, action: &BlueprintAction) {
        let regular: Vec<&str> = action.phases.iter().map(|p| p.name.as_str()).collect();
        for (i, phase) in action.phases.iter().enumerate() {
            let scope = Scope { action, earlier: regular[..i].to_vec(), current: Some(&phase.name) };
            self.phase(&Location::phase(bp, action_name, &phase.name), phase, &scope);
        }
        if let Some(defer) = &action.defer_phase {
            let scope = Scope { action, earlier: regular.clone(), current: Some(&defer.name) };
            self.phase(&Location::phase(bp, action_name, &defer.name), defer, &scope);
        }
        let all = Scope { action, earlier: regular, current: None };
        let at = Location::phase(bp, action_name, "");
        for (name, artifact) in &action.output_artifacts {
            for (k, tmpl) in &artifact.key_value {
                let at = Location { argument: format!("outputArtifacts.{name}.keyValue.{k}"), ..at.clone() };
                self.template(&at, tmpl, &all);
            }
            if !artifact.kopia_snapshot.is_empty() {
                let at = Location { argument: format!("outputArtifacts.{name}.kopiaSnapshot"), ..at.clone() };
                self.template(&at, &artifact.kopia_snapshot, &all);
            }
        }
    }

    fn phase(&mut self, at: &Location, phase: &BlueprintPhase, scope: &Scope<'_>) {
        match functions::lookup(&phase.func) {
            None => self.push(
                at,
                ProblemKind::UnknownFunction {
                    function: phase.func.clone(),
                    hint: Hint(functions::closest(&phase.func).map(str::to_string)),
                },
            ),
            Some(spec) => {
                for req in spec.required {
                    if !phase.args.contains_key(*req) {
                        self.push(
                            at,
                            ProblemKind::MissingArgument { function: spec.name.into(), argument: (*req).into() },
                        );
                    }
                }
                for arg in phase.args.keys() {
                    if !spec.accepts(arg) {
                        self.push(
                            &Location { argument: arg.clone(), ..at.clone() },
                            ProblemKind::UnknownArgument {
                                function: spec.name.into(),
                                argument: arg.clone(),
                                hint: Hint(closest_match(arg, spec.arguments()).map(str::to_string)),
                            },
                        );
                    }
                }
            }
        }
        for (name, value) in &phase.args {
            self.json(at, name, value, scope);
        }
        for (name, obj) in &phase.object_refs {
            for (field, s) in [
                ("apiVersion", &obj.api_version),
                ("group", &obj.group),
                ("resource", &obj.resource),
                ("kind", &obj.kind),
                ("name", &obj.name),
                ("namespace", &obj.namespace),
            ] {
                let at = Location { argument: format!("objects.{name}.{field}"), ..at.clone() };
                self.template(&at, s, scope);
            }
        }
    }

    fn json(&mut self, at: &Location, path: &str, v: &serde_json::Value, scope: &Scope<'_>) {
        let here = Location { argument: path.to_string(), ..at.clone() };
        match v {
            serde_json::Value::String(s) => self.template(&here, s, scope),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.json(at, &format!("{path}[{i}]"), item, scope);
                }
            }
            serde_json::Value::Object(m) => {
                for (k, item) in m {
                    let sub = format!("{path}.{k}");
                    self.template(&Location { argument: sub.clone(), ..at.clone() }, k, scope);
                    self.json(at, &sub, item, scope);
                }
            }
            _ => {}
        }
    }

    fn template(&mut self, at: &Location, src: &str, scope: &Scope<'_>) {
        if !src.contains("{{") {
            return;
        }
        let template = match self.renderer.parse(src) {
            Ok(t) => t,
            Err(e) => {
                self.push(at, ProblemKind::TemplateSyntax { message: e.to_string() });
                return;
            }
        };
        let Some(tree) = template.lookup(template.name()) else { return };
        let mut functions = Vec::new();
        let mut refs: Vec<Vec<String>> = Vec::new();
        for node in &tree.nodes {
            collect(node, &mut functions, &mut refs);
        }
        for function in functions {
            if !self.renderer.has_function(&function) {
                let hint = Hint(closest_match(&function, self.renderer.function_names()).map(str::to_string));
                self.push(at, ProblemKind::UnknownTemplateFunction { function, hint });
            }
        }
        for chain in refs {
            match chain.as_slice() {
                [root, phase, rest @ ..] if root == "Phases" => {
                    let own_objects = scope.current == Some(phase.as_str())
                        && matches!(rest.first().map(String::as_str), Some("Secrets" | "ConfigMaps"));
                    if own_objects || scope.earlier.contains(&phase.as_str()) {
                        continue;
                    }
                    let exists = scope.action.all_phases().any(|p| &p.name == phase);
                    let reason = if exists { PhaseRefReason::NotYetRun } else { PhaseRefReason::Unknown };
                    let hint = Hint(closest_match(phase, scope.earlier.iter().copied()).map(str::to_string));
                    self.push(at, ProblemKind::PhaseNotEarlier { phase: phase.clone(), reason, hint });
                }
                [root, artifact, ..] if root == "ArtifactsIn" => {
                    let declared = &scope.action.input_artifact_names;
                    if !declared.contains(artifact) {
                        let hint =
                            Hint(closest_match(artifact, declared.iter().map(String::as_str)).map(str::to_string));
                        self.push(at, ProblemKind::UndeclaredInputArtifact { artifact: artifact.clone(), hint });
                    }
                }
                _ => {}
            }
        }
    }
}

/// Collects function names and root-anchored field chains (`.A.B`, `$.A.B`, and
/// `index .A "B"` as `[A, B]`) of a template node.
fn collect(node: &Node, functions: &mut Vec<String>, refs: &mut Vec<Vec<String>>) {
    visit_node(node, &mut |e| match e {
        Expr::Identifier(_, name) => functions.push(name.to_string()),
        Expr::Field(_, fields) => refs.push(fields.iter().map(|f| f.to_string()).collect()),
        Expr::Variable(_, name, fields) if name == "$" => refs.push(fields.iter().map(|f| f.to_string()).collect()),
        _ => {}
    });
    // `index .Phases "name" ...`: visit commands to pair the map with its first key.
    visit_commands(node, &mut |args| {
        if let [Expr::Identifier(_, f), target, Expr::String(_, key), ..] = args
            && f == "index"
        {
            let base = match target {
                Expr::Field(_, fields) => Some(fields),
                Expr::Variable(_, name, fields) if name == "$" => Some(fields),
                _ => None,
            };
            if let Some(base) = base {
                let mut chain: Vec<String> = base.iter().map(|f| f.to_string()).collect();
                chain.push(key.to_string());
                refs.push(chain);
            }
        }
    });
}

fn visit_commands(node: &Node, f: &mut dyn FnMut(&[Expr])) {
    fn pipe(p: &gotmpl::parse::PipeNode, f: &mut dyn FnMut(&[Expr])) {
        for cmd in &p.commands {
            f(&cmd.args);
            for e in &cmd.args {
                if let Expr::Pipe(_, inner) = e {
                    pipe(inner, f);
                }
            }
        }
    }
    match node {
        Node::List(l) => l.nodes.iter().for_each(|n| visit_commands(n, f)),
        Node::Action(a) => pipe(&a.pipe, f),
        Node::If(b) | Node::Range(b) | Node::With(b) => {
            pipe(&b.pipe, f);
            b.body.nodes.iter().for_each(|n| visit_commands(n, f));
            if let Some(e) = &b.else_body {
                e.nodes.iter().for_each(|n| visit_commands(n, f));
            }
        }
        Node::Template(t) => {
            if let Some(p) = &t.pipe {
                pipe(p, f);
            }
        }
        Node::Define(d) => d.body.nodes.iter().for_each(|n| visit_commands(n, f)),
        Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
    }
}
