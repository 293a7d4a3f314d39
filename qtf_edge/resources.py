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
