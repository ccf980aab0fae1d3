//! Every committed fuzz input (`fuzz/corpus/<target>/`), replayed through its target's
//! check on stable Rust: the fuzzers' findings stay fixed in `make test`, and the
//! corpus stays small.

use std::path::{Path, PathBuf};

use lazyxds_fuzz_check::TARGETS;

/// The committed corpus stays well under a megabyte.
const MAX_CORPUS_BYTES: u64 = 512 * 1024;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_its_check() {
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let files = inputs(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no inputs");
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "failing corpus inputs: {failed:#?}");
}

#[test]
fn the_committed_corpus_is_small() {
    let total: u64 = TARGETS
        .iter()
        .flat_map(|(target, _)| inputs(target))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        total <= MAX_CORPUS_BYTES,
        "fuzz/corpus is {total} bytes, more than {MAX_CORPUS_BYTES}"
    );
}
