//! File mode (`lazyxds run --file TOPOLOGY --out DIR`): a topology file stands in for the
//! cluster, and the desired Sidecars are written as YAML files instead of applied (one
//! file per workload: its catch-all EnvoyFilter, then its Sidecar, the order
//! `kubectl apply -f` needs so that first calls always have the gateway to go to); the
//! gateway's routing objects go to `DIR/gateway/lazyxds-gateway.yaml`, and gateways get
//! the namespace table of the topology's pods.
//!
//! State lives in the Sidecar files themselves (learned deps and last-seen in an
//! annotation), exactly as it will in the cluster: on start they are read back before
//! anything is written, so a restart never shrinks a Sidecar.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lazyxds_index::objects::{is_ours, string_map};
use lazyxds_index::{Desired, GatewayObjects, Index, Pass, RenderConfig, SidecarObject, Topology};
use serde::Deserialize;
use serde_json::Value;

use crate::error::FileModeError;
use crate::learn::SharedLearner;
use crate::ready::WritePath;
use crate::target::Target;

/// The default of `--max-topology-bytes`: some 60,000 workloads with two pods each.
/// Parsing holds about 50 times the file in memory at its peak (measured: 16 MB of
/// workloads, 2.2 s and 800 MB in a release build), so this bounds a reload to about a
/// second and 400 MB.
pub const DEFAULT_MAX_TOPOLOGY_BYTES: u64 = 8 * 1024 * 1024;

/// Reads and parses a topology file of at most [`DEFAULT_MAX_TOPOLOGY_BYTES`]; errors
/// name the file, object and field.
pub fn load_topology(path: &Path) -> Result<Topology, FileModeError> {
    load_topology_limited(path, DEFAULT_MAX_TOPOLOGY_BYTES)
}

/// Reads and parses a topology file of at most `max_bytes`; one nesting deeper than
/// `lazyxds_index::topology::limits::MAX_DEPTH` is refused before it is parsed.
/// Blocking: from async code use [`load_topology_off_runtime`].
pub fn load_topology_limited(path: &Path, max_bytes: u64) -> Result<Topology, FileModeError> {
    let read_err = |source| FileModeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let too_large = |size| FileModeError::TooLarge {
        path: path.to_path_buf(),
        size,
        max: max_bytes,
    };
    let size = file.metadata().map_err(read_err)?.len();
    if size > max_bytes {
        return Err(too_large(size));
    }
    let mut text = String::new();
    // The file may grow between the check and the read.
    file.take(max_bytes.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > max_bytes {
        return Err(too_large(text.len() as u64));
    }
    Ok(Topology::from_yaml(&text, &path.display().to_string())?)
}

/// [`load_topology_limited`] on a blocking thread: the async runtime (gRPC, `/healthz`,
/// signals) keeps running while a large file is parsed. Cancel-safe: the parse goes on
/// when the returned future is dropped (see [`FileTarget`]'s reload).
pub fn spawn_load_topology(
    path: PathBuf,
    max_bytes: u64,
) -> tokio::task::JoinHandle<Result<Topology, FileModeError>> {
    tokio::task::spawn_blocking(move || load_topology_limited(&path, max_bytes))
}

/// [`spawn_load_topology`], awaited.
pub async fn load_topology_off_runtime(
    path: &Path,
    max_bytes: u64,
) -> Result<Topology, FileModeError> {
    joined(
        path,
        spawn_load_topology(path.to_path_buf(), max_bytes).await,
    )
}

fn joined<T>(
    path: &Path,
    result: Result<Result<T, FileModeError>, tokio::task::JoinError>,
) -> Result<T, FileModeError> {
    result.unwrap_or_else(|e| {
        Err(FileModeError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    })
}

/// The Sidecars in `dir` that we own (label `app.kubernetes.io/managed-by: lazyxds`), by
/// file name. Files that are not ours are ignored; ours that do not parse are errors
/// (their learned deps would otherwise be lost on the next write).
pub fn read_our_sidecars(dir: &Path) -> Result<BTreeMap<PathBuf, SidecarObject>, FileModeError> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(FileModeError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let path = entry
            .map_err(|source| FileModeError::Read {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = fs::read_to_string(&path).map_err(|source| FileModeError::Read {
            path: path.clone(),
            source,
        })?;
        match parse_our_sidecar(&path, &text)? {
            Some(sidecar) => {
                out.insert(path, sidecar);
            }
            None if looks_ours(&path) => move_aside(&path),
            None => {}
        }
    }
    Ok(out)
}

/// The Sidecar document of a workload file (files of older versions hold the Sidecar
/// alone; current ones its EnvoyFilter first).
/// Stops at the first document that does not parse (the deserializer would yield its error
/// again and again).
fn sidecar_document(text: &str) -> Option<Value> {
    serde_norway::Deserializer::from_str(text)
        .map_while(|doc| Value::deserialize(doc).ok())
        .find(|doc| doc.get("kind").and_then(Value::as_str) == Some("Sidecar"))
}

/// Named as we name workload files (`<namespace>_lazyxds-…yaml`).
fn looks_ours(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("_lazyxds-"))
}

/// A file named as ours that holds no Sidecar of ours (empty, truncated, not YAML): its
/// learned deps cannot be read, so it is kept for a human under another name rather than
/// overwritten, and said so.
fn move_aside(path: &Path) {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("yaml.damaged-{stamp}"));
    match fs::rename(path, &aside) {
        Ok(()) => tracing::error!(
            file = %path.display(), moved_to = %aside.display(),
            "a workload file of ours holds no readable Sidecar (its learned deps are lost to \
             this controller); moved aside, not overwritten"
        ),
        Err(error) => tracing::error!(
            file = %path.display(), %error,
            "a workload file of ours holds no readable Sidecar and cannot be moved aside"
        ),
    }
}

fn parse_our_sidecar(path: &Path, text: &str) -> Result<Option<SidecarObject>, FileModeError> {
    let bad = |message: String| FileModeError::Sidecar {
        path: path.to_path_buf(),
        message,
    };
    // Not YAML, or no Sidecar: not ours, leave it alone.
    let Some(value) = sidecar_document(text) else {
        return Ok(None);
    };
    let meta = &value["metadata"];
    let labels = string_map(&meta["labels"]);
    if !is_ours(&labels) {
        return Ok(None);
    }
    let name = meta.get("name").and_then(Value::as_str);
    let namespace = meta.get("namespace").and_then(Value::as_str);
    let (Some(name), Some(namespace)) = (name, namespace) else {
        return Err(bad(
            "metadata.name and metadata.namespace are required".into()
        ));
    };
    let spec = value["spec"].clone();
    SidecarObject::new(
        namespace,
        name,
        labels.into(),
        &string_map(&meta["annotations"]),
        spec,
    )
    .map(Some)
    .map_err(|e| bad(e.to_string()))
}

/// The file a workload's Sidecar (and its EnvoyFilter) is written to:
/// `<namespace>_<name>.yaml` (`_` is in neither).
pub fn sidecar_file(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("{namespace}_{name}.yaml"))
}

/// What one write pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
}

/// Writes every desired workload file (its EnvoyFilter and Sidecar) whose content
/// differs (write, then rename: readers never see half a file) and removes our files that
/// are no longer desired.
pub fn write_sidecars(dir: &Path, desired: &Desired) -> Result<WriteStats, FileModeError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut stats = WriteStats::default();
    let mut keep = BTreeSet::new();
    for key in desired.sidecars.keys() {
        let (namespace, name) = key;
        let path = sidecar_file(dir, namespace, name);
        let text = desired
            .workload_yaml(key)
            .map_err(|e| FileModeError::Sidecar {
                path: path.clone(),
                message: e.to_string(),
            })?;
        keep.insert(path.clone());
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            stats.unchanged += 1;
            continue;
        }
        write_whole(&dir.join(format!(".{name}.tmp")), &path, &text)?;
        stats.written += 1;
    }
    for path in read_our_sidecars(dir)?.into_keys() {
        if !keep.contains(&path) {
            fs::remove_file(&path).map_err(io_err(&path))?;
            stats.removed += 1;
        }
    }
    Ok(stats)
}

/// Where the gateway's routing objects are written, under `--out`: a subdirectory, so the
/// Sidecar directory keeps one Sidecar per file.
pub fn gateway_file(out_dir: &Path) -> PathBuf {
    out_dir.join("gateway").join("lazyxds-gateway.yaml")
}

/// Writes the gateway's routing objects (one multi-document YAML file, write then
/// rename) unless the file already says the same; returns whether it wrote.
pub fn write_gateway(out_dir: &Path, objects: &GatewayObjects) -> Result<bool, FileModeError> {
    let path = gateway_file(out_dir);
    let text = objects.to_yaml().map_err(|e| FileModeError::Sidecar {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(out_dir);
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_whole(&dir.join(".lazyxds-gateway.yaml.tmp"), &path, &text)?;
    Ok(true)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileModeError {
    let path = path.to_path_buf();
    move |source| FileModeError::Write { path, source }
}

/// Writes `text` to `tmp`, then renames it to `path`: readers never see half a file.
fn write_whole(tmp: &Path, path: &Path, text: &str) -> Result<(), FileModeError> {
    fs::write(tmp, text).map_err(io_err(tmp))?;
    fs::rename(tmp, path).map_err(io_err(path))
}

/// Builds the index for a topology and the Sidecars already in `dir` (restart safety).
/// Refuses a topology that lacks more than `max_removal_percent` of the workloads those
/// Sidecars scope.
pub fn load_state(
    (file, topology): (&Path, &Topology),
    dir: &Path,
    index: &mut Index,
    max_removal_percent: u8,
) -> Result<u64, FileModeError> {
    let ours = read_our_sidecars(dir)?;
    let scoped: BTreeSet<_> = ours
        .values()
        .filter_map(|s| s.restored.as_ref().map(|r| r.workload.clone()))
        .collect();
    let removal = topology.removal(&scoped, index.config());
    if removal.exceeds(max_removal_percent) {
        return Err(FileModeError::Shrink {
            file: file.to_path_buf(),
            dir: dir.to_path_buf(),
            removal,
            max_percent: max_removal_percent,
        });
    }
    topology.apply_to(index);
    let restored = index.restore_from_sidecars(ours.into_values());
    index.forget_absent_workloads();
    Ok(restored)
}

/// How often the topology file is checked for changes.
const TOPOLOGY_POLL: Duration = Duration::from_secs(1);
/// While nothing is written, `--out` is probed this often for `/readyz`.
const WRITE_PROBE_EVERY: Duration = Duration::from_secs(5);

/// `run --file`: the topology file stands in for the cluster's watches, `--out` for the
/// cluster's Sidecars.
#[derive(Debug)]
pub struct FileTarget {
    topology: PathBuf,
    out_dir: PathBuf,
    /// Defaults the topology's `mesh`/`gateway` sections override.
    base_render: RenderConfig,
    render: RenderConfig,
    learner: SharedLearner,
    seen_mtime: Option<SystemTime>,
    poll: tokio::time::Interval,
    last_refusals: BTreeMap<String, String>,
    max_bytes: u64,
    /// A reload being parsed on a blocking thread; kept when `changed` is dropped.
    parsing: Option<tokio::task::JoinHandle<Result<Topology, FileModeError>>>,
    /// Whether files get written: the last pass's writes, or the last probe of `--out`.
    writes: Arc<WritePath>,
    next_probe: tokio::time::Instant,
    max_removal_percent: u8,
}

impl FileTarget {
    /// `topology` is the file's current content, already applied to the learner's index.
    pub fn new(
        topology_file: PathBuf,
        out_dir: PathBuf,
        base_render: RenderConfig,
        topology: &Topology,
        learner: SharedLearner,
    ) -> Self {
        FileTarget {
            render: topology.render_config(base_render.clone()),
            seen_mtime: mtime(&topology_file),
            topology: topology_file,
            out_dir,
            base_render,
            learner,
            poll: tokio::time::interval(TOPOLOGY_POLL),
            last_refusals: BTreeMap::new(),
            max_bytes: DEFAULT_MAX_TOPOLOGY_BYTES,
            parsing: None,
            writes: Arc::default(),
            next_probe: tokio::time::Instant::now() + WRITE_PROBE_EVERY,
            max_removal_percent: 50,
        }
    }

    /// Whether `--out` takes files (for `/readyz`).
    pub fn write_path(&self) -> Arc<WritePath> {
        self.writes.clone()
    }

    /// Writes and removes a file in `--out` and its gateway directory, as a pass would.
    fn probe(&self) -> Result<(), String> {
        let gateway = gateway_file(&self.out_dir);
        let dirs = [Some(self.out_dir.as_path()), gateway.parent()];
        for dir in dirs.into_iter().flatten() {
            let probe = dir.join(".lazyxds-ready-probe");
            fs::create_dir_all(dir)
                .and_then(|()| fs::write(&probe, b"ready\n"))
                .and_then(|()| fs::remove_file(&probe))
                .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Reloads refuse files larger than `max_bytes` (`--max-topology-bytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// A reload that would remove more than this share of the workloads is refused.
    pub fn with_max_removal_percent(mut self, percent: u8) -> Self {
        self.max_removal_percent = percent;
        self
    }
}

impl Target for FileTarget {
    async fn ready(&mut self) {}

    fn render_config(&self) -> RenderConfig {
        self.render.clone()
    }

    async fn apply(&mut self, pass: &Pass) -> bool {
        let mut ok = true;
        let mut failure = None;
        match write_gateway(&self.out_dir, &pass.gateway) {
            Ok(true) => tracing::info!(
                file = %gateway_file(&self.out_dir).display(),
                virtual_services = pass.gateway.virtual_services.len(),
                "gateway routing objects updated"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "writing the gateway objects failed");
                failure = Some(format!("writing the gateway objects failed: {error:#}"));
                ok = false;
            }
        }
        log_refusals(&pass.desired, &mut self.last_refusals);
        match write_sidecars(&self.out_dir, &pass.desired) {
            Ok(stats) if stats.written + stats.removed > 0 => tracing::info!(
                dir = %self.out_dir.display(), written = stats.written,
                removed = stats.removed, unchanged = stats.unchanged, "Sidecars updated"
            ),
            Ok(_) => {}
            Err(error) => {
                // Keep the state; the loop retries.
                tracing::error!(%error, "writing Sidecars failed");
                failure = Some(format!("writing Sidecars failed: {error:#}"));
                ok = false;
            }
        }
        self.writes.record(failure.map_or(Ok(()), Err));
        self.next_probe = tokio::time::Instant::now() + WRITE_PROBE_EVERY;
        ok
    }

    /// Reloads the topology when its file changes; a bad file is logged and the last good
    /// state kept. The file is parsed off the async runtime; a parse under way survives
    /// this future being dropped (the loop drops it whenever edges arrive).
    async fn changed(&mut self) {
        loop {
            let Some(parsing) = &mut self.parsing else {
                self.poll.tick().await;
                // Idle for a while: is `--out` still writable (for `/readyz`)?
                if tokio::time::Instant::now() >= self.next_probe {
                    self.writes.record(self.probe());
                    self.next_probe = tokio::time::Instant::now() + WRITE_PROBE_EVERY;
                }
                let now = mtime(&self.topology);
                if now == self.seen_mtime {
                    continue;
                }
                self.seen_mtime = now;
                self.parsing = Some(spawn_load_topology(self.topology.clone(), self.max_bytes));
                continue;
            };
            let parsed = joined(&self.topology, parsing.await);
            self.parsing = None;
            match parsed {
                Ok(topology) => {
                    let removal = {
                        let index = self.learner.index();
                        topology.removal(&index.workload_ids(), index.config())
                    };
                    if removal.exceeds(self.max_removal_percent) {
                        tracing::error!(
                            file = %self.topology.display(), %removal,
                            max_removal_percent = self.max_removal_percent,
                            "topology not reloaded: it would remove {removal} at once (their \
                             Sidecars and learned deps with them); keeping the last good state"
                        );
                        continue;
                    }
                    topology.apply_to(&mut self.learner.index());
                    self.render = topology.render_config(self.base_render.clone());
                    tracing::info!(file = %self.topology.display(), "topology reloaded");
                    return;
                }
                Err(error) => tracing::error!(
                    %error, "topology not reloaded; keeping the last good state"
                ),
            }
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn log_refusals(desired: &Desired, last: &mut BTreeMap<String, String>) {
    let now: BTreeMap<String, String> = desired
        .refusals
        .iter()
        .map(|r| (format!("{}", r.workload), r.reason.to_string()))
        .chain(
            desired
                .capped
                .iter()
                .map(|c| (format!("{}", c.workload), c.to_string())),
        )
        .collect();
    for (workload, reason) in &now {
        if last.get(workload) != Some(reason) {
            tracing::warn!(%workload, %reason, "workload not scoped, or scoped at the host cap");
        }
    }
    *last = now;
}
