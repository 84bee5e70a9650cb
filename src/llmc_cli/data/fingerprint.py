"""Fingerprints that key the data cache: file contents and tokenizers.

A file's sha256 is remembered against its path, size, inode and modification time
(``files.json`` in the cache), so a second run does not read a large file again; any
change to those recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmc_cli.durable import write_text

CHUNK = 1 << 22
MEMO = "files.json"


def file_digest(path: Path, root: Path) -> str:
    """sha256 of the bytes of ``path``, memoised in ``root/files.json`` by its stat."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    memo_path = root / MEMO
    memo = _read_memo(memo_path)
    known = memo.get(str(path))
    if known and known.get("stamp") == stamp:
        return known["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    memo = _read_memo(memo_path)  # another process may have added entries meanwhile
    memo[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_text(memo_path, json.dumps(memo))
    except OSError:
        pass  # only a memo: the next run hashes the file again
    return digest.hexdigest()


def _read_memo(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def tokenizer_digest(tokenizer) -> str:
    """sha256 of everything about a tokenizer that changes the tokens or the rendered text."""
    import tokenizers
    import transformers

    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    facts = {
        "class": type(tokenizer).__name__,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "split_special_tokens": getattr(tokenizer, "split_special_tokens", False),
        "len": len(tokenizer),
        # Rendering (chat templates) and tokenisation may change between library versions.
        "versions": [transformers.__version__, tokenizers.__version__],
    }
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return digest.hexdigest()
