"""Golden suite storage: ``manifest.json`` plus ``cases/<case_id>.safetensors``, read defensively.

Case files are safetensors, written by :func:`encode_case` with a fixed tensor and key order and no
timestamps, so the same tensors give the same bytes. Every write is atomic: a temporary file in the
target directory, ``fsync``, then ``os.replace``.

Reading never unpickles and trusts nothing. For each case, in this order:

1. the manifest is JSON with a known ``schema_version`` and matches ``manifest.schema.json``;
2. the case path is relative, has no ``..``, and does not leave the suite directory (symlinks
   included), and is ``cases/<id>.safetensors``;
3. the file size equals the manifest's ``bytes`` (smaller: truncated; larger: oversized) and is
   under ``max_case_bytes``;
4. the sha256 of the bytes read equals the manifest's (the bytes hashed are the bytes parsed);
5. the safetensors header is parsed by hand: bounded length, JSON object, known dtypes, each
   tensor's byte span equal to ``prod(shape) * itemsize``, spans contiguous and inside the file;
6. the tensor names, dtypes and shapes equal the manifest's, and the embedded case metadata agrees.

Each failure is a :class:`GoldenFormatError` (a ``ValueError``); one about a case names it
(``case_id``) and its message starts with ``case '<id>'``.

Files are written with the permissions the umask allows (``0o666 & ~umask``), like ``open()``
would: suites are shared between users and CI containers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GoldenFormatError",
    "rule_version",
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "CASES_DIR",
    "DEFAULT_MAX_CASE_BYTES",
    "MAX_HEADER_BYTES",
    "case_relpath",
    "encode_case",
    "decode_case",
    "write_atomic",
    "read_manifest",
    "write_manifest",
    "validate_manifest",
    "validate_entry",
    "manifest_schema",
    "case_path",
    "read_case_bytes",
    "read_case",
    "sha256_hex",
    "batch_fingerprint",
]

#: The manifest format this code writes and the only one it reads.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
CASES_DIR = "cases"
#: Refuse case files larger than this unless the caller raises the limit.
DEFAULT_MAX_CASE_BYTES = 8 << 30
#: safetensors' own limit for the JSON header.
MAX_HEADER_BYTES = 100 << 20
#: Key of the case description stored in each file's safetensors ``__metadata__``.
METADATA_KEY = "sparse_ref.case"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# safetensors dtype code <-> NumPy dtype (little-endian). No object or string dtypes exist here.
_ST_TO_NP: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class GoldenFormatError(ValueError):
    """A golden suite (its manifest or a case file) is malformed, corrupted or unreadable.

    ``case_id`` names the case, or is ``None`` for a problem with the suite as a whole. A checker
    re-raises this instead of blaming the implementation under test.
    """

    def __init__(self, message: str, case_id: str | None = None) -> None:
        super().__init__(f"case {case_id!r}: {message}" if case_id is not None else message)
        self.case_id = case_id


def _err(case_id: str | None, message: str) -> GoldenFormatError:
    return GoldenFormatError(message, case_id)


def rule_version(manifest: dict[str, Any]) -> int:
    """The tolerance rule version a manifest's tolerances were computed with (1 for a string)."""
    rule = manifest.get("tolerance_rule")
    return int(rule["version"]) if isinstance(rule, dict) else 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def batch_fingerprint(patterns: Any) -> str:
    """The fingerprint of a per-batch pattern list: sha256 of its elements' fingerprints, in
    order, joined by newlines."""
    return sha256_hex("\n".join(p.fingerprint() for p in patterns).encode())


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def case_relpath(case_id: str) -> str:
    """The manifest path of a case file: ``cases/<case_id>.safetensors``."""
    return f"{CASES_DIR}/{case_id}.safetensors"


# ---------------------------------------------------------------------------------------- writing
_NP_TO_ST = {dtype: code for code, dtype in _ST_TO_NP.items()}


def encode_case(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Serialize ``tensors`` and ``meta`` (JSON) in the safetensors format, deterministically.

    Written here rather than by ``safetensors.numpy.save``, whose metadata order follows a Rust
    hash map (it differs between processes): tensors in order of decreasing item size then name,
    so every tensor is aligned; header JSON with a fixed key order, padded with spaces to 8 bytes.
    Equal inputs give equal bytes. Any safetensors reader loads the result.
    """
    arrays = {}
    for name, arr in tensors.items():
        a = np.asarray(arr)
        arrays[name] = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        if arrays[name].dtype not in _NP_TO_ST:
            raise TypeError(f"tensor {name!r}: dtype {a.dtype} has no safetensors code here")
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    metadata = {
        "format": "sparse-ref-golden-case",
        "schema_version": str(SCHEMA_VERSION),
        METADATA_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False),
    }
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        a = arrays[name]
        header[name] = {
            "dtype": _NP_TO_ST[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text] + [arrays[n].tobytes() for n in order])


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, os.replace.

    A reader (or a killed writer) sees either the old file or the complete new one, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would not
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable where the platform allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_manifest(
    root: str | os.PathLike[str], manifest: dict[str, Any], *, validate: bool = True
) -> None:
    """Validate ``manifest`` and write ``root/manifest.json`` atomically (sorted keys, indent 1).

    ``validate=False`` skips the schema check (for a writer that validated each entry already).
    """
    if validate:
        validate_manifest(manifest)
    text = json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n"
    write_atomic(Path(root) / MANIFEST_NAME, text.encode())


# ---------------------------------------------------------------------------------------- schema
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of ``manifest.json`` (``sparse_ref/golden/manifest.schema.json``)."""
    return json.loads(_schema_text())


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("sparse_ref.golden").joinpath("manifest.schema.json").read_text()


_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    return isinstance(value, _TYPES[name])


def _validate(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> None:
    """A small JSON Schema validator for the keywords ``manifest.schema.json`` uses."""
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise GoldenFormatError(f"unsupported $ref {ref!r} in the manifest schema")
        schema = root["$defs"][ref[len("#/$defs/") :]]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            raise GoldenFormatError(
                f"{where}: expected {' or '.join(types)}, got {json.dumps(value)[:80]}"
            )
    if "const" in schema and value != schema["const"]:
        raise GoldenFormatError(f"{where}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise GoldenFormatError(f"{where}: must be one of {schema['enum']}, got {value!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise GoldenFormatError(f"{where}: {value!r} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0):
            raise GoldenFormatError(f"{where}: shorter than {schema['minLength']} characters")
    if _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise GoldenFormatError(f"{where}: {value} < minimum {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise GoldenFormatError(
                f"{where}: {value} <= exclusive minimum {schema['exclusiveMinimum']}"
            )
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise GoldenFormatError(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise GoldenFormatError(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(item, schema["items"], root, f"{where}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise GoldenFormatError(f"{where}: missing required key {key!r}")
        props = schema.get("properties", {})
        pattern_props = schema.get("patternProperties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            matched = False
            if key in props:
                _validate(item, props[key], root, f"{where}.{key}")
                matched = True
            for pat, sub in pattern_props.items():
                if re.search(pat, key):
                    _validate(item, sub, root, f"{where}.{key}")
                    matched = True
            if not matched:
                if extra is False:
                    raise GoldenFormatError(f"{where}: unexpected key {key!r}")
                if isinstance(extra, dict):
                    _validate(item, extra, root, f"{where}.{key}")


def validate_manifest(manifest: Any) -> None:
    """Check a parsed manifest: known ``schema_version``, the JSON Schema, unique ids and paths.

    Errors inside a case entry start with ``case '<id>'``.
    """
    if not isinstance(manifest, dict):
        raise GoldenFormatError("manifest.json must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise GoldenFormatError(
            f"manifest has unknown schema_version {version!r}; this sparse-ref reads version "
            f"{SCHEMA_VERSION} (upgrade sparse-ref, or regenerate the suite)"
        )
    schema = manifest_schema()
    top = {k: v for k, v in schema.items() if k != "properties"}
    top["properties"] = {k: v for k, v in schema["properties"].items() if k != "cases"}
    top["properties"]["cases"] = {"type": "array"}
    _validate(manifest, top, schema, "manifest")
    seen: set[str] = set()
    for i, entry in enumerate(manifest["cases"]):
        validate_entry(entry, i, schema)
        if entry["id"] in seen:
            raise _err(entry["id"], "duplicate case id in the manifest")
        seen.add(entry["id"])


def validate_entry(entry: Any, index: int = 0, schema: dict[str, Any] | None = None) -> None:
    """Check one manifest case entry against the schema and the path rules."""
    schema = schema or manifest_schema()
    case_id = entry.get("id") if isinstance(entry, dict) else None
    label = case_id if isinstance(case_id, str) else f"#{index}"
    try:
        _validate(entry, schema["$defs"]["case"], schema, f"cases[{index}]")
    except ValueError as err:
        raise _err(label, str(err)) from None
    _check_relpath(entry["file"], entry["id"])


# ---------------------------------------------------------------------------------------- reading
def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``root/manifest.json``; ``ValueError`` on anything unexpected."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise GoldenFormatError(f"{root} is not a directory")
    if not path.is_file():
        raise GoldenFormatError(f"{root} holds no {MANIFEST_NAME}: not a golden suite")
    if path.stat().st_size > MAX_HEADER_BYTES:
        raise GoldenFormatError(f"{path} is larger than {MAX_HEADER_BYTES} bytes")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GoldenFormatError(f"{path} is not valid JSON: {err}") from None
    validate_manifest(manifest)
    return manifest


def _reject_constant(name: str) -> Any:
    raise GoldenFormatError(f"non-standard JSON constant {name}")


def _check_relpath(rel: str, case_id: str) -> None:
    if "\\" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or os.path.isabs(rel):
        raise _err(case_id, f"file path {rel!r} is absolute; case paths must be relative")
    parts = rel.split("/")
    if ".." in parts:
        raise _err(case_id, f"file path {rel!r} contains '..'")
    if rel != case_relpath(case_id):
        raise _err(case_id, f"file path {rel!r} must be {case_relpath(case_id)!r}")


def case_path(root: str | os.PathLike[str], entry: dict[str, Any]) -> Path:
    """The case file of ``entry``, checked to stay inside ``root`` after resolving symlinks."""
    case_id = entry["id"]
    rel = entry["file"]
    _check_relpath(rel, case_id)
    base = Path(root).resolve()
    path = Path(root) / rel
    resolved = path.resolve()
    if base not in resolved.parents:
        raise _err(case_id, f"file path {rel!r} resolves to {resolved}, outside the suite {base}")
    return path


def read_case_bytes(
    root: str | os.PathLike[str],
    entry: dict[str, Any],
    *,
    max_case_bytes: int = DEFAULT_MAX_CASE_BYTES,
) -> bytearray:
    """The bytes of a case file after the path, size and sha256 checks (steps 2-4 above)."""
    case_id = entry["id"]
    path = case_path(root, entry)
    if not path.exists():
        raise _err(case_id, f"file {entry['file']} is missing")
    if not path.is_file():
        raise _err(case_id, f"{entry['file']} is not a regular file")
    size = path.stat().st_size
    want = entry["bytes"]
    if want > max_case_bytes:
        raise _err(case_id, f"oversized: manifest declares {want} bytes > limit {max_case_bytes}")
    if size < want:
        raise _err(case_id, f"truncated: file has {size} bytes, manifest says {want}")
    if size > want:
        raise _err(case_id, f"oversized: file has {size} bytes, manifest says {want}")
    buf = bytearray(size)
    with open(path, "rb") as f:
        got = f.readinto(buf)
    if got != size:
        raise _err(case_id, f"truncated: read {got} of {size} bytes")
    digest = sha256_hex(buf)
    if digest != entry["sha256"]:
        raise _err(case_id, f"sha256 mismatch: file {digest}, manifest {entry['sha256']}")
    return buf


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in the safetensors header")
        out[key] = value
    return out


def decode_case(
    data: bytes | bytearray, case_id: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes by hand (no pickle, no trust): ``(tensors, metadata)``.

    Checks the header length, that it is a JSON object of known dtypes and integer shapes, that each
    tensor's byte span is exactly ``prod(shape) * itemsize`` and lies inside the data, and that the
    spans tile the data without gaps or overlap. Arrays are views of ``data``.
    """
    if len(data) < 8:
        raise _err(case_id, f"truncated: {len(data)} bytes, not even a safetensors header length")
    header_len = int.from_bytes(data[:8], "little")
    if header_len < 2 or header_len > MAX_HEADER_BYTES:
        raise _err(case_id, f"not a safetensors file: header length {header_len}")
    if 8 + header_len > len(data):
        raise _err(case_id, f"truncated: header of {header_len} bytes but file has {len(data)}")
    try:
        header = json.loads(
            bytes(data[8 : 8 + header_len]).decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError) as err:
        raise _err(case_id, f"not a safetensors file: header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise _err(case_id, "not a safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _err(case_id, "safetensors __metadata__ must map strings to strings")
    body = memoryview(data)[8 + header_len :]
    spans = []
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _err(case_id, f"tensor {name!r}: malformed header entry")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in _ST_TO_NP:
            raise _err(case_id, f"tensor {name!r}: unsupported dtype {code!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise _err(case_id, f"tensor {name!r}: shape must be a list of non-negative ints")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _err(case_id, f"tensor {name!r}: malformed data_offsets {offsets!r}")
        dtype: np.dtype[Any] = _ST_TO_NP[code]
        nbytes = math.prod(shape) * dtype.itemsize
        begin, end = offsets
        if end - begin != nbytes:
            kind = "oversized" if end - begin > nbytes else "undersized"
            raise _err(
                case_id,
                f"tensor {name!r}: {kind}: spans {end - begin} bytes but {code}{shape} needs "
                f"{nbytes}",
            )
        if end > len(body):
            raise _err(
                case_id,
                f"truncated: tensor {name!r} ends at byte {end} but the data has {len(body)}",
            )
        spans.append((begin, end, name))
        count = math.prod(shape)
        tensors[name] = (
            np.frombuffer(body, dtype=dtype, count=count, offset=begin).reshape(shape)
            if count
            else np.zeros(shape, dtype=dtype)
        )
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _err(
                case_id, f"tensor {name!r}: data is not contiguous (gap or overlap at {begin})"
            )
        position = end
    if position != len(body):
        raise _err(case_id, f"oversized: {len(body) - position} trailing bytes after the tensors")
    return tensors, metadata


def tensor_dtype_name(arr: np.ndarray) -> str:
    """The manifest name of an array's dtype (``float32``, ``int64``, ...)."""
    return np.dtype(arr.dtype).name


def read_case(
    root: str | os.PathLike[str],
    entry: dict[str, Any],
    *,
    max_case_bytes: int = DEFAULT_MAX_CASE_BYTES,
) -> dict[str, np.ndarray]:
    """All checks 2-6 for one case; returns its tensors (writable arrays over one buffer)."""
    case_id = entry["id"]
    data = read_case_bytes(root, entry, max_case_bytes=max_case_bytes)
    tensors, metadata = decode_case(data, case_id)
    shapes, dtypes = entry["shapes"], entry["tensor_dtypes"]
    if set(tensors) != set(shapes):
        missing = sorted(set(shapes) - set(tensors))
        extra = sorted(set(tensors) - set(shapes))
        raise _err(
            case_id, f"manifest/case disagreement: tensors missing {missing}, unexpected {extra}"
        )
    for name, arr in tensors.items():
        if list(arr.shape) != shapes[name]:
            raise _err(
                case_id,
                f"manifest/case shape disagreement: tensor {name!r} has shape {list(arr.shape)}, "
                f"manifest says {shapes[name]}",
            )
        if tensor_dtype_name(arr) != dtypes.get(name):
            raise _err(
                case_id,
                f"manifest/case disagreement: tensor {name!r} is {tensor_dtype_name(arr)}, "
                "manifest "
                f"says {dtypes.get(name)}",
            )
    if metadata.get("schema_version") != str(SCHEMA_VERSION):
        raise _err(case_id, f"unknown case schema_version {metadata.get('schema_version')!r}")
    try:
        meta = json.loads(metadata.get(METADATA_KEY, ""), parse_constant=_reject_constant)
    except ValueError:
        raise _err(case_id, f"case metadata {METADATA_KEY!r} is missing or not JSON") from None
    for key, value in meta.items() if isinstance(meta, dict) else [(None, None)]:
        if key is None or entry.get(key) != value:
            raise _err(case_id, f"manifest/case disagreement on {key!r}: file says {value!r}")
    return tensors
