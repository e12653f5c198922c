//! The blueprint template renderer.
//!
//! Templates are Go `text/template` (parsed and executed by the `gotmpl` crate) with
//! `missingkey=error`, the sprig functions listed in [`sprig::NAMES`], and the parameters of
//! [`TemplateParams`] under their upstream names.
//!
//! What this module adds on top of `gotmpl`:
//! - [`sprig`]: the sprig functions; [`gotime`]: Go time layouts for `date`, `toDate`, ...
//! - [`params`]: the template data with Go field names and Go JSON shapes.
//! - Errors that say where ([`Location`]: blueprint, action, phase, argument), what (the
//!   missing key with the closest existing key, or the failing function), and never show a
//!   secret value: every message is scrubbed of the Secret values in the parameters.
//! - A template that prints `<no value>` (a field of a nil parameter such as `.Deployment` in a
//!   StatefulSet action, or `index` of a missing key) is an error, not a silent empty value.
//!
//! Arguments render as upstream's `param.RenderArgs`: every string in the argument tree
//! (values and map keys) is a template; numbers, booleans and nulls pass through.

pub mod gotime;
pub mod params;
pub mod sprig;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use gotmpl::parse::{Expr, ListNode, Node, PipeNode};
use gotmpl::{FuncMap, MissingKey, Template, TemplateError, Value};

use crate::crd::{Artifact, JsonMap};
pub use params::TemplateParams;

/// Where a template sits in a Blueprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Name of the Blueprint.
    pub blueprint: String,
    /// Name of the action.
    pub action: String,
    /// Name of the phase; empty for an action's output artifacts.
    pub phase: String,
    /// Path of the argument in the phase (`command[2]`, `spec.image`), or of the output
    /// artifact (`outputArtifacts.cloud.keyValue.path`).
    pub argument: String,
}

impl Location {
    /// The location of a phase's arguments; [`Location::argument`] is filled in per argument.
    pub fn phase(blueprint: &str, action: &str, phase: &str) -> Self {
        Location { blueprint: blueprint.into(), action: action.into(), phase: phase.into(), argument: String::new() }
    }

    fn with_argument(&self, argument: String) -> Self {
        Location { argument, ..self.clone() }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blueprint {:?}", self.blueprint)?;
        if !self.action.is_empty() {
            write!(f, ", action {:?}", self.action)?;
        }
        if !self.phase.is_empty() {
            write!(f, ", phase {:?}", self.phase)?;
        }
        if !self.argument.is_empty() {
            write!(f, ", argument {:?}", self.argument)?;
        }
        Ok(())
    }
}

/// A "did you mean" hint; displays as nothing when there is no close match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint(pub Option<String>);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, " (did you mean {s:?}?)"),
            None => Ok(()),
        }
    }
}

/// Errors of the renderer. Messages never contain a secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The template does not parse.
    #[error("{location}: template does not parse: {message}")]
    Parse {
        /// Where the template is (boxed: keeps `Result`s small).
        location: Box<Location>,
        /// The parser's message.
        message: String,
    },
    /// The template looked up a key that does not exist (`missingkey=error`).
    #[error("{location}: map has no entry for key {key:?}{hint}")]
    MissingKey {
        /// Where the template is (boxed: keeps `Result`s small).
        location: Box<Location>,
        /// The missing key.
        key: String,
        /// The closest existing key.
        hint: Hint,
    },
    /// A function is not defined.
    #[error("{location}: function {function:?} not defined{hint}")]
    UndefinedFunction {
        /// Where the template is (boxed: keeps `Result`s small).
        location: Box<Location>,
        /// The unknown function.
        function: String,
        /// The closest known function.
        hint: Hint,
    },
    /// A function failed, or a value had the wrong type for an operation.
    #[error("{location}: {message}")]
    Exec {
        /// Where the template is (boxed: keeps `Result`s small).
        location: Box<Location>,
        /// What failed (names the function, e.g. `error calling toDate: ...`).
        message: String,
    },
    /// The template printed a nil value (`<no value>`).
    #[error(
        "{location}: template printed <no value>: a nil parameter or a missing index was used \
         (is the action run on the right kind of object?)"
    )]
    NoValue {
        /// Where the template is (boxed: keeps `Result`s small).
        location: Box<Location>,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses and executes templates. Cheap to share; holds the function map.
#[derive(Clone)]
pub struct Renderer {
    funcs: FuncMap,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer").field("functions", &self.funcs.len()).finish()
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

/// Template data prepared once for many templates.
struct Data {
    value: Value,
    secrets: Vec<String>,
}

/// Secret values shorter than this are not scrubbed from messages (they would mangle them).
const MIN_REDACTED_LEN: usize = 4;

impl Renderer {
    /// A renderer whose `now` reads the system clock.
    pub fn new() -> Self {
        Renderer { funcs: sprig::funcs(None) }
    }

    /// A renderer whose `now` always returns `now` (for tests and replays).
    pub fn with_clock(now: DateTime<Utc>) -> Self {
        Renderer { funcs: sprig::funcs(Some(now)) }
    }

    /// Whether `name` is a function templates may call (sprig or `text/template` builtin).
    pub fn has_function(&self, name: &str) -> bool {
        self.funcs.contains_key(name) || BUILTINS.contains(&name)
    }

    /// All callable function names.
    pub fn function_names(&self) -> impl Iterator<Item = &str> {
        self.funcs.keys().map(String::as_str).chain(BUILTINS.iter().copied())
    }

    /// Parses a template (`missingkey=error`, with the function map).
    pub fn parse(&self, src: &str) -> std::result::Result<Template, TemplateError> {
        Template::new("config").funcs(self.funcs.clone()).missing_key(MissingKey::Error).parse(src)
    }

    /// Renders one template against `params`; `location` is used in errors.
    pub fn render(&self, location: &Location, src: &str, params: &TemplateParams) -> Result<String> {
        self.render_with(location, src, &Self::data(params))
    }

    /// Renders a phase's arguments: every string (value or map key) in the tree is a template.
    pub fn render_args(&self, location: &Location, args: &JsonMap, params: &TemplateParams) -> Result<JsonMap> {
        let data = Self::data(params);
        args.iter()
            .map(|(name, v)| {
                let rendered = self.render_json(location, name, v, &data)?;
                Ok((name.clone(), rendered))
            })
            .collect()
    }

    /// Renders an action's output artifacts (after its phases ran, so `.Phases` is complete).
    pub fn render_artifacts(
        &self,
        location: &Location,
        artifacts: &BTreeMap<String, Artifact>,
        params: &TemplateParams,
    ) -> Result<BTreeMap<String, Artifact>> {
        let data = Self::data(params);
        let mut out = BTreeMap::new();
        for (name, artifact) in artifacts {
            let mut rendered = Artifact::default();
            for (k, v) in &artifact.key_value {
                let at = location.with_argument(format!("outputArtifacts.{name}.keyValue.{k}"));
                rendered.key_value.insert(k.clone(), self.render_with(&at, v, &data)?);
            }
            if !artifact.kopia_snapshot.is_empty() {
                let at = location.with_argument(format!("outputArtifacts.{name}.kopiaSnapshot"));
                rendered.kopia_snapshot = self.render_with(&at, &artifact.kopia_snapshot, &data)?;
            }
            out.insert(name.clone(), rendered);
        }
        Ok(out)
    }

    fn data(params: &TemplateParams) -> Data {
        let mut secrets: Vec<String> =
            params.secret_values().into_iter().filter(|s| s.len() >= MIN_REDACTED_LEN).collect();
        // Longest first, so a secret containing another is scrubbed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Data { value: params.to_value(), secrets }
    }

    fn render_json(
        &self,
        location: &Location,
        path: &str,
        v: &serde_json::Value,
        data: &Data,
    ) -> Result<serde_json::Value> {
        Ok(match v {
            serde_json::Value::String(s) => {
                serde_json::Value::String(self.render_with(&location.with_argument(path.into()), s, data)?)
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.render_json(location, &format!("{path}[{i}]"), item, data))
                    .collect::<Result<_>>()?,
            ),
            serde_json::Value::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, item) in m {
                    let key = self.render_with(&location.with_argument(format!("{path}.{k}")), k, data)?;
                    let item = self.render_json(location, &format!("{path}.{k}"), item, data)?;
                    out.insert(key, item);
                }
                serde_json::Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn render_with(&self, location: &Location, src: &str, data: &Data) -> Result<String> {
        let scrub = |s: String| redact(s, &data.secrets);
        let template = self
            .parse(src)
            .map_err(|e| Error::Parse { location: Box::new(location.clone()), message: scrub(e.to_string()) })?;
        let out = template.execute_to_string(&data.value).map_err(|e| self.explain(location, &template, data, e))?;
        if out.contains("<no value>") && !src.contains("<no value>") {
            return Err(Error::NoValue { location: Box::new(location.clone()) });
        }
        Ok(out)
    }

    fn explain(&self, location: &Location, template: &Template, data: &Data, e: TemplateError) -> Error {
        let location = Box::new(location.clone());
        match e {
            TemplateError::MissingKey { key } => {
                let hint = template.lookup(template.name()).and_then(|tree| suggest_key(tree, &data.value, &key));
                Error::MissingKey { location, key: redact(key, &data.secrets), hint: Hint(hint) }
            }
            TemplateError::UndefinedFunction(function) => Error::UndefinedFunction {
                hint: Hint(closest_match(&function, self.function_names()).map(str::to_string)),
                location,
                function,
            },
            TemplateError::Exec(message) => Error::Exec { location, message: redact(message, &data.secrets) },
            other => Error::Exec { location, message: redact(other.to_string(), &data.secrets) },
        }
    }
}

/// The `text/template` builtins provided by `gotmpl`.
pub const BUILTINS: &[&str] = &[
    "and", "call", "eq", "ge", "gt", "html", "index", "js", "le", "len", "lt", "ne", "not", "or", "print", "printf",
    "println", "slice", "urlquery",
];

fn redact(mut message: String, secrets: &[String]) -> String {
    for s in secrets {
        if message.contains(s.as_str()) {
            message = message.replace(s.as_str(), "<redacted>");
        }
    }
    message
}

/// The candidate closest to `target` (case-insensitive edit distance), if close enough to be a
/// plausible typo: at most 2 edits, or 40% of the longer name.
pub fn closest_match<'a>(target: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let t = target.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != target && *c != params::JSON_KEY)
        .map(|c| (strsim::damerau_levenshtein(&t, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2 || *d * 5 <= t.len().max(c.len()) * 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Finds the closest existing key to a missing one: first among the keys of the map the
/// template looked in (resolved from the root for `.A.B.missing` chains), then anywhere.
fn suggest_key(tree: &ListNode, data: &Value, key: &str) -> Option<String> {
    let mut chains = Vec::new();
    for node in &tree.nodes {
        collect_chains_node(node, &mut chains);
    }
    for chain in &chains {
        if let Some(i) = chain.iter().position(|f| f == key) {
            let mut v = data;
            let mut ok = true;
            for f in &chain[..i] {
                match v.field(f) {
                    Some(next) => v = next,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok
                && let Value::Map(m) = v
                && let Some(s) = closest_match(key, m.keys().map(|k| &**k))
            {
                return Some(s.to_string());
            }
        }
    }
    let mut keys = Vec::new();
    collect_keys(data, 0, &mut keys);
    closest_match(key, keys.iter().map(String::as_str)).map(str::to_string)
}

fn collect_keys(v: &Value, depth: usize, out: &mut Vec<String>) {
    if depth > 8 || out.len() > 10_000 {
        return;
    }
    match v {
        Value::Map(m) => {
            for (k, item) in m.iter() {
                out.push(k.to_string());
                collect_keys(item, depth + 1, out);
            }
        }
        Value::List(items) => items.iter().for_each(|i| collect_keys(i, depth + 1, out)),
        _ => {}
    }
}

/// Field chains rooted at the data (`.A.B`, `$.A.B`) anywhere in a template.
pub(crate) fn collect_chains_node(node: &Node, out: &mut Vec<Vec<String>>) {
    visit_node(node, &mut |e| match e {
        Expr::Field(_, fields) => out.push(fields.iter().map(|f| f.to_string()).collect()),
        Expr::Variable(_, name, fields) if name == "$" => out.push(fields.iter().map(|f| f.to_string()).collect()),
        _ => {}
    });
}

/// Calls `f` on every expression of a node, recursively (pipes, branches, bodies).
pub(crate) fn visit_node(node: &Node, f: &mut dyn FnMut(&Expr)) {
    match node {
        Node::List(l) => l.nodes.iter().for_each(|n| visit_node(n, f)),
        Node::Action(a) => visit_pipe(&a.pipe, f),
        Node::If(b) | Node::Range(b) | Node::With(b) => {
            visit_pipe(&b.pipe, f);
            b.body.nodes.iter().for_each(|n| visit_node(n, f));
            if let Some(e) = &b.else_body {
                e.nodes.iter().for_each(|n| visit_node(n, f));
            }
        }
        Node::Template(t) => {
            if let Some(p) = &t.pipe {
                visit_pipe(p, f);
            }
        }
        Node::Define(d) => d.body.nodes.iter().for_each(|n| visit_node(n, f)),
        Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
    }
}

fn visit_pipe(p: &PipeNode, f: &mut dyn FnMut(&Expr)) {
    for cmd in &p.commands {
        for e in &cmd.args {
            visit_expr(e, f);
        }
    }
}

fn visit_expr(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Pipe(_, p) => visit_pipe(p, f),
        Expr::Chain(_, inner, _) => visit_expr(inner, f),
        _ => {}
    }
}
