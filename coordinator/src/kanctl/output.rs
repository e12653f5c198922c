//! What kanctl prints: the ActionSet table, `describe`, snapshots and the live progress line.

use std::io::Write;
use std::time::Instant;

use kanister_proto::coordinator::v1 as pb;

use super::{Io, Result};
use crate::crd::ActionSet;

/// `1536` → `1.5 KiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn artifact_names(a: &ActionSet) -> String {
    let names: Vec<&str> =
        a.status.iter().flat_map(|s| &s.actions).flat_map(|s| s.artifacts.keys().map(String::as_str)).collect();
    if names.is_empty() { "-".into() } else { names.join(",") }
}

/// A table like `kubectl get actionsets`, with the output artifacts.
pub fn table(list: &[pb::ActionSet], parsed: &[ActionSet], out: &mut dyn Write) -> Result<()> {
    let header = ["NAME", "PROGRESS", "RUNNING PHASE", "LAST TRANSITION TIME", "STATE", "ARTIFACTS"];
    let rows: Vec<[String; 6]> = list
        .iter()
        .zip(parsed)
        .map(|(a, p)| {
            let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
            [
                a.name.clone(),
                dash(&a.percent_completed),
                dash(&a.running_phase),
                dash(&a.last_transition_time),
                a.state.clone(),
                artifact_names(p),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("   ").trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `kanctl describe actionset`.
pub fn describe(a: &pb::ActionSet, parsed: &ActionSet, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "Name:        {}", a.name)?;
    writeln!(out, "Namespace:   {}", a.namespace)?;
    writeln!(out, "Created:     {}", a.creation_time)?;
    writeln!(out, "State:       {}", a.state)?;
    writeln!(out, "Progress:    {}%", if a.percent_completed.is_empty() { "0" } else { &a.percent_completed })?;
    if a.size_uploaded_bytes > 0 || a.size_downloaded_bytes > 0 {
        writeln!(out, "Transferred: {} up, {} down", bytes(a.size_uploaded_bytes), bytes(a.size_downloaded_bytes))?;
    }
    if !a.error.is_empty() {
        writeln!(out, "Error:       {}", a.error)?;
    }
    let statuses = parsed.status.as_ref().map(|s| s.actions.as_slice()).unwrap_or_default();
    for (i, spec) in parsed.spec.actions.iter().enumerate() {
        let o = &spec.object;
        writeln!(out, "Action {}:    {} (blueprint {})", i, spec.name, spec.blueprint)?;
        writeln!(
            out,
            "  Object:    {} {}/{}",
            if o.kind.is_empty() { &o.resource } else { &o.kind },
            o.namespace,
            o.name
        )?;
        for (name, art) in &spec.artifacts {
            writeln!(out, "  Input artifact {name}: {}", serde_json::to_string(&art.key_value).unwrap_or_default())?;
        }
        let Some(st) = statuses.get(i) else { continue };
        for p in st.phases.iter().chain(st.defer_phase.iter()) {
            let state =
                serde_json::to_value(p.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            writeln!(out, "  Phase {:<20} {state}", p.name)?;
            for (k, v) in &p.output {
                writeln!(out, "    output {k}: {v}")?;
            }
        }
        for (name, art) in &st.artifacts {
            writeln!(out, "  Output artifact {name}:")?;
            for (k, v) in &art.key_value {
                writeln!(out, "    {k}: {v}")?;
            }
            if !art.kopia_snapshot.is_empty() {
                writeln!(out, "    kopiaSnapshot: {}", art.kopia_snapshot)?;
            }
        }
    }
    events(a, out)
}

/// The Events section of `describe`, as `kubectl describe` prints it.
fn events(a: &pb::ActionSet, out: &mut dyn Write) -> Result<()> {
    if !a.events_error.is_empty() {
        writeln!(out, "Events:      unavailable: {}", a.events_error)?;
        return Ok(());
    }
    if a.events.is_empty() {
        writeln!(out, "Events:      <none>")?;
        return Ok(());
    }
    writeln!(out, "Events:")?;
    let rows: Vec<Vec<String>> = a
        .events
        .iter()
        .map(|e| {
            let time = if e.count > 1 { format!("{} (x{})", dash(&e.time), e.count) } else { dash(&e.time) };
            vec![e.r#type.clone(), e.reason.clone(), time, e.message.clone()]
        })
        .collect();
    let mut table = Vec::new();
    columns(&["TYPE", "REASON", "TIME", "MESSAGE"], &rows, &mut table)?;
    for line in String::from_utf8_lossy(&table).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// Prints `rows` under `header` in columns two spaces apart.
fn columns(header: &[&str], rows: &[Vec<String>], out: &mut dyn Write) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn sorted_pairs(m: &std::collections::HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort();
    v
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

/// `kanctl snapshots`: a table of what the repository holds, or what the location holds instead.
pub fn snapshots(list: &pb::ListSnapshotsResponse, out: &mut dyn Write) -> Result<()> {
    if list.state() != pb::RepositoryState::Open {
        writeln!(out, "no snapshots: {}", list.message)?;
        return Ok(());
    }
    if list.snapshots.is_empty() {
        writeln!(out, "no snapshots: the repository at {} is empty", list.location)?;
        return Ok(());
    }
    let header = ["ID", "TIME", "KIND", "SIZE", "STORED", "ACTIONSET", "ARTIFACT", "TAGS"];
    let rows: Vec<Vec<String>> = list
        .snapshots
        .iter()
        .filter(|s| s.error.is_empty())
        .map(|s| {
            let actionset = if s.actionset_name.is_empty() {
                "-".to_string()
            } else {
                format!("{}/{}", s.actionset_namespace, s.actionset_name)
            };
            let tags: Vec<String> = sorted_pairs(&s.tags).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                s.short_id.clone(),
                // Seconds are enough in a table; -o json has the whole time.
                match s.time.get(..19) {
                    Some(t) if s.time.ends_with('Z') => format!("{t}Z"),
                    _ => s.time.clone(),
                },
                s.kind.clone(),
                bytes(i64::try_from(s.logical_bytes).unwrap_or(i64::MAX)),
                bytes(i64::try_from(s.stored_bytes).unwrap_or(i64::MAX)),
                actionset,
                dash(&s.artifact),
                dash(&tags.join(",")),
            ]
        })
        .collect();
    columns(&header, &rows, out)?;
    for s in list.snapshots.iter().filter(|s| !s.error.is_empty()) {
        writeln!(out, "snapshot {} cannot be read: {}", s.short_id, s.error)?;
    }
    Ok(())
}

/// `kanctl snapshots -o json|yaml`: the Profile, what its location holds and every snapshot.
pub fn snapshots_value(profile: &str, list: &pb::ListSnapshotsResponse) -> serde_json::Value {
    use serde_json::{Value, json};
    let state = match list.state() {
        pb::RepositoryState::Open => "open",
        pb::RepositoryState::NoKey => "noKey",
        pb::RepositoryState::NoRepository => "noRepository",
        pb::RepositoryState::Unspecified => "unknown",
    };
    let map = |m: &std::collections::HashMap<String, String>| -> Value {
        Value::Object(sorted_pairs(m).into_iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
    };
    let snapshots: Vec<Value> = list
        .snapshots
        .iter()
        .map(|s| {
            let mut v = json!({
                "id": s.id, "shortId": s.short_id, "time": s.time, "kind": s.kind, "path": s.path,
                "hostname": s.hostname, "logicalBytes": s.logical_bytes, "storedBytes": s.stored_bytes,
                "tags": map(&s.tags),
            });
            if !s.actionset_name.is_empty() {
                let mut a = json!({"namespace": s.actionset_namespace, "name": s.actionset_name, "action": s.action});
                for (k, v) in [
                    ("phase", &s.phase),
                    ("object", &s.object),
                    ("blueprint", &s.blueprint),
                    ("completionTime", &s.completion_time),
                ] {
                    if !v.is_empty() {
                        a[k] = Value::String(v.clone());
                    }
                }
                v["actionSet"] = a;
            }
            if !s.artifact.is_empty() {
                v["artifact"] = json!({"name": s.artifact, "keyValue": map(&s.key_values)});
            }
            if !s.error.is_empty() {
                v["error"] = Value::String(s.error.clone());
            }
            v
        })
        .collect();
    json!({
        "profile": profile,
        "location": list.location,
        "state": state,
        "message": list.message,
        "snapshots": snapshots,
    })
}

/// The live progress line: state, phase, percent, bytes, rate and ETA.
#[derive(Debug, Default)]
pub struct ProgressLine {
    first: Option<(Instant, i64)>,
    shown: String,
}

impl ProgressLine {
    fn text(&mut self, a: &pb::ActionSet) -> String {
        let moved = a.size_uploaded_bytes.max(a.size_downloaded_bytes);
        let (t0, b0) = *self.first.get_or_insert((Instant::now(), moved));
        let secs = t0.elapsed().as_secs_f64();
        let rate = if secs > 0.5 { (moved - b0).max(0) as f64 / secs } else { 0.0 };
        let total = a.estimated_upload_bytes.max(a.estimated_download_bytes);
        let mut s = format!("{}: {}", a.name, a.state);
        if !a.percent_completed.is_empty() {
            s.push_str(&format!(" {}%", a.percent_completed));
        }
        if !a.running_phase.is_empty() {
            s.push_str(&format!(" phase {}", a.running_phase));
        }
        if moved > 0 {
            s.push_str(&format!(" {}", bytes(moved)));
            if total > 0 {
                s.push_str(&format!("/{}", bytes(total)));
            }
            if rate > 0.0 {
                s.push_str(&format!(" {}/s", bytes(rate as i64)));
                if total > moved {
                    s.push_str(&format!(" ETA {}s", ((total - moved) as f64 / rate).ceil() as u64));
                }
            }
        }
        s
    }

    /// Shows the ActionSet's progress if it changed.
    pub fn show(&mut self, a: &pb::ActionSet, io: &mut Io<'_>) -> Result<()> {
        let text = self.text(a);
        if text != self.shown {
            if io.live {
                write!(io.err, "\r\x1b[K{text}")?;
            } else {
                writeln!(io.err, "{text}")?;
            }
            io.err.flush()?;
            self.shown = text;
        }
        Ok(())
    }

    /// Ends the line with the final state (and the error of a failed ActionSet).
    pub fn finish(&mut self, a: &pb::ActionSet, io: &mut Io<'_>) -> Result<()> {
        if io.live {
            writeln!(io.err)?;
        }
        if a.state == "failed" {
            writeln!(io.out, "actionset {} failed: {}", a.name, a.error)?;
        } else {
            writeln!(io.out, "actionset {} {}", a.name, a.state)?;
        }
        Ok(())
    }
}
