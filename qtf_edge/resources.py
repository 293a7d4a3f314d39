"""Find the data folders (`profiles/`, `export/`) in a wheel install or a source checkout.

A wheel carries them under `qtf_edge/_data/`; a checkout (or editable install) has them
at the repository's top level, beside the package.
"""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder `name` (e.g. "profiles"), wherever this install keeps it."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"data folder '{name}' not found in {_PACKAGE_DIR / '_data'} or {_PACKAGE_DIR.parent}; "
        "reinstall qtf-edge"
    )


def shipped_names(folder: str) -> list[str]:
    """Names of the YAML files shipped in data folder `folder` (their stems), sorted."""
    return sorted(p.stem for p in data_dir(folder).glob("*.yaml"))


def named_yaml(name_or_path, folder: str, error: type[ValueError], kind: str,
               plural: str, hint: str = "") -> Path:
    """The file a name (one of `shipped_names(folder)`) or a path stands for. A string is a
    path when it ends in .yaml/.yml or contains a path separator. `error` (one line, naming
    the known names) for anything else."""
    if isinstance(name_or_path, Path):
        return name_or_path
    if not isinstance(name_or_path, str) or not name_or_path:
        raise error(f"{kind} must be a name or a path, got {name_or_path!r}")
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path:
        return Path(name_or_path)
    known = shipped_names(folder)
    if name_or_path not in known:
        raise error(f"unknown {kind} {name_or_path!r}; known {plural}: {', '.join(known)}{hint}")
    return data_dir(folder) / f"{name_or_path}.yaml"


def read_yaml(path: Path, error: type[ValueError], expected: str = ""):
    """The parsed YAML document at `path`; `error` (one line naming the file, and where a
    malformed document breaks) if it cannot be read or parsed."""
    import yaml  # only the YAML-backed loaders need it

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read file ({exc.strerror or exc}){expected}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise error(f"{path}: malformed YAML{where}: {problem}") from None


def check_top_level(data, path: Path, required: tuple[str, ...], optional: tuple[str, ...],
                    fail, name_expected: bool = False) -> None:
    """A YAML document's top level: a mapping with every required key and no unknown one;
    else fail(path, field, message) is raised."""
    if not isinstance(data, dict):
        raise fail(path, "(top level)", f"must be a mapping, got {type(data).__name__}")
    for key in required:
        if key not in data:
            raise fail(path, key, "is missing")
    extra = sorted(set(data) - set(required) - set(optional), key=str)
    if extra:
        expected = f" (expected: {', '.join(required + optional)})" if name_expected else ""
        raise fail(path, str(extra[0]), f"is not a known field{expected}")
