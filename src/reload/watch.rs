//! `[gateway] watch_config`: the config file's folder is watched (an editor often replaces the
//! file by a rename, which a watch on the file itself would lose), and once its changes have
//! settled for a moment the config is reloaded, as SIGHUP does.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::Reloader;

/// How long the file must stay unchanged before it is read: an editor's save is several
/// events (truncate, write, rename).
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `path` on `tracker` until `stop`, reloading through `reloader` after each change.
pub fn spawn(
    path: &Path,
    reloader: Reloader,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("cannot watch {}: it names no file", path.display()))?
        .to_owned();
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (a reload does) is no change, nor is a new access time.
        let change = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_)
        ) && !matches!(
            event.kind,
            EventKind::Modify(notify::event::ModifyKind::Metadata(_))
        );
        if change && event.paths.iter().any(|p| p.file_name() == Some(&name)) {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the config file")?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {} for changes", folder.display()))?;
    info!(file = %path.display(), "Watching the config file: a change reloads it.");
    tracker.spawn(async move {
        // Dropping the watcher ends the watch.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            loop {
                match tokio::time::timeout(SETTLE, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            info!("The config file changed: reloading it.");
            crate::systemd::reloading();
            // The outcome is logged and recorded as an event by the reload itself.
            let _ = reloader.reload(false, "a change of the config file").await;
            crate::systemd::ready(reloader.0.with.registry.all().len());
        }
    });
    Ok(())
}
