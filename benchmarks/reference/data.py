"""WikiText-2's paths, the plan's one tokenizer and the token cache the jobs share."""

from __future__ import annotations

import hashlib

from qtf_edge.atomic import write_json_atomic, write_text_atomic

from .plan import REPO, Layout, read_json

# ---------------------------------------------------------------------------- data and tokenizer

def data_paths(args) -> dict[str, str]:
    """WikiText-2 train and valid: --data-dir, else .bench-data/wikitext-2 (how the GPU
    machine gets it), else ../shared/data/wikitext-2; --quick: the shipped excerpt."""
    from qtf_edge.data import default_corpus

    if args.quick and args.data_dir is None:
        return {"train": str(default_corpus("train")), "valid": str(default_corpus("valid"))}
    candidates = ([args.data_dir] if args.data_dir else
                  [REPO / ".bench-data" / "wikitext-2", REPO.parent / "shared/data/wikitext-2"])
    for folder in candidates:
        if (folder / "train.txt").is_file() and (folder / "valid.txt").is_file():
            return {"train": str(folder / "train.txt"), "valid": str(folder / "valid.txt")}
    raise SystemExit(f"error: no WikiText-2 train.txt/valid.txt in "
                     f"{', '.join(map(str, candidates))}; pass --data-dir")


def shared_tokenizer(layout: Layout, train_text: str, vocab: int) -> str:
    """Train the one tokenizer of the plan (deterministic: the same text gives the same
    file), or check the one already there; returns its sha256."""
    from qtf_edge.data import corpus_sha256, read_corpus, train_tokenizer

    lines = read_corpus(train_text)
    meta_path = layout.root / "tokenizer.meta.json"
    meta = {"vocab_size": vocab, "train_sha256": corpus_sha256(lines)}
    if layout.tokenizer.is_file():
        if read_json(meta_path) != meta:
            raise SystemExit(f"error: {layout.tokenizer} was trained on other text or for "
                             f"another vocabulary than {meta}; use another --runs-dir")
    else:
        tokenizer = train_tokenizer(lines, vocab)
        # The bytes prepare_session hashes and saves, so the token cache is shared.
        text = tokenizer.to_str(pretty=True)
        layout.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(layout.tokenizer, text)
        write_json_atomic(meta_path, meta)
    return hashlib.sha256(layout.tokenizer.read_bytes()).hexdigest()


def fill_token_cache(layout: Layout, data: dict[str, str]) -> None:
    """Encode both splits once, before the jobs start, so that they all read the cache
    instead of encoding the same text at the same time."""
    from qtf_edge.data import encode_corpus, load_tokenizer, read_corpus

    tokenizer = load_tokenizer(layout.tokenizer)
    digest = hashlib.sha256(layout.tokenizer.read_bytes()).hexdigest()
    for path in data.values():
        encode_corpus(read_corpus(path), tokenizer, digest)
