//! Reading the files an operator names: the config, routes, schemas, policies, secrets,
//! certificates. Only regular files are read, so that a stray FIFO or device cannot stall
//! the thread that loads, reloads and answers signals.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The bytes of a regular file, or of the one a symlink leads to (Kubernetes mounts
/// ConfigMaps and Secrets as symlinks). Anything else is refused: a FIFO would keep the
/// reader waiting for a writer, and a device like `/dev/zero` never ends. Opened without
/// blocking and judged by what was opened, so a FIFO put in the file's place between a
/// look and the open cannot hold the reader either.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// The entries of `dir` named `*.{extension}`, sorted: those loading takes, and the
/// hidden ones it passes over.
pub fn with_extension(dir: &Path, extension: &str) -> io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut listed, mut hidden): (Vec<PathBuf>, Vec<PathBuf>) = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .partition(|path| is_listed(path));
    listed.sort();
    hidden.sort();
    Ok((listed, hidden))
}

/// Whether loading takes a directory entry: not a hidden one. Editors keep lock and swap
/// files beside the file being edited under a leading dot (`.#grants.cedar`, a symlink
/// to nowhere), and Kubernetes its `..data` links.
fn is_listed(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| !name.as_encoded_bytes().starts_with(b"."))
}

/// The line (from 1) on which byte `offset` of a file's `text` falls: how a problem in a
/// config, route table, schema or policy file is placed.
pub fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grants.cedar");
        std::fs::write(&file, "permit (principal, action, resource);").unwrap();
        let link = dir.path().join("link.cedar");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_to_string(&link).unwrap().starts_with("permit"));

        let fifo = dir.path().join("fifo.cedar");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        for refused in [fifo.as_path(), dir.path(), Path::new("/dev/zero")] {
            let error = read(refused).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{refused:?}");
        }
    }

    #[test]
    fn hidden_entries_are_not_listed() {
        assert!(is_listed(Path::new("policies/grants.cedar")));
        for hidden in [".#grants.cedar", ".grants.cedar.swp", "..data"] {
            assert!(!is_listed(&Path::new("policies").join(hidden)), "{hidden}");
        }
    }
}
