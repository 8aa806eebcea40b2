"""MkDocs hook: the experiments' and benchmarks' own reports join the site at the paths they have
in the repository (experiments/README.md, experiments/results/ with its figures,
benchmarks/README.md). The pages link to them as the README does, strict mode checks those links,
and each report keeps its one copy beside the script that writes it."""

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("experiments/README.md", "experiments/results", "benchmarks/README.md")
SUFFIXES = {".md", ".png"}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for entry in SHARED:
        path = ROOT / entry
        for source in [path] if path.is_file() else sorted(path.rglob("*")):
            if source.is_file() and source.suffix in SUFFIXES:
                uri = source.relative_to(ROOT).as_posix()
                files.append(File(uri, str(ROOT), config.site_dir, config.use_directory_urls))
    return files
