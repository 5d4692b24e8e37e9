"""Knowledge bases that expand each class's label words (KPT), and the expansion rules.

Every source returns, per class, an ordered list of related words; ``expand`` then builds the
candidate label words of a task from the same code path whatever the source:

* ``file``: the format the KPT authors published with OpenPrompt (``knowledgeable_verbalizer.txt``:
  one line per class in label order, words separated by commas, the first word the class name;
  or a JSON object mapping class name to a word list);
* ``wordnet``: WordNet 3.0 through nltk's reader (synonyms, hyponyms, similar-to, also-see,
  derivationally related forms; which relations and how deep is config);
* ``vader``: the scored sentiment lexicon of the ``vaderSentiment`` package (sentiment tasks);
* ``embedding``: nearest neighbours of the label words in the model's own input-embedding space.

Every source returns its words in a fixed, documented order, the same in every process (the word
cap keeps a prefix of it, so the order decides which words a run uses): ``file`` the file's order;
``wordnet`` sense by sense, related synsets sorted by name (nltk gives them in hash-seed order);
``vader`` strongest first, ties by word; ``embedding`` nearest first, ties by token id.

Expansion keeps the task's first label word as each class's anchor, removes a word listed under
two or more classes from every class where it is not the anchor, drops words the tokenizer cannot
represent and caps the list per class. Import-light: nltk, vaderSentiment and torch load on use.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .config import BLOCKLIST, Blocklist, blocklist_path, read_blocklist  # noqa: F401  (file formats live there)
from .config import read_kb_file  # noqa: F401  (the word-list file format lives with the settings)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
LEXNAMES = REPO_ROOT / "resources" / "kpt" / "wordnet" / "lexnames"
DEFAULT_WORDNET = "/usr/share/wordnet"
WORD = re.compile(r"^[a-z][a-z'-]*[a-z]$")


# --- WordNet --------------------------------------------------------------------------------------

WORDNET_RELATIONS = ("synonyms", "hyponyms", "hypernyms", "similar_tos", "also_sees", "derivationally_related_forms")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prompt-transfer-workflow"


def wordnet_reader(dict_dir: str | os.PathLike = DEFAULT_WORDNET, cache: str | os.PathLike | None = None):
    """nltk's WordNet reader over the WordNet 3.0 files in ``dict_dir`` (Debian: ``/usr/share/wordnet``).

    nltk wants an nltk-data layout (``corpora/wordnet/``) with a ``lexnames`` file, which Debian does
    not ship: the files are copied once into a cache folder with ``resources/kpt/wordnet/lexnames``.
    """
    dict_dir = Path(dict_dir)
    if not (dict_dir / "data.noun").is_file():
        raise UserError(f"WordNet not found at {dict_dir} (no data.noun): install it with scripts/setup.sh "
                        f"(apt-get install wordnet-base) or set the knowledge base's 'path' to a WordNet 3.0 dict folder")
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise UserError("the wordnet knowledge base needs the package nltk (pip install -e .)") from None
    key = hashlib.sha256(str(dict_dir.resolve()).encode()).hexdigest()[:10]
    root = Path(cache or _cache_root()) / f"nltk_data-{key}"
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
        for f in dict_dir.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        shutil.copyfile(LEXNAMES, tmp / "lexnames")
        try:
            os.replace(tmp, target)
        except OSError:  # another job built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # the mapping between WordNet versions (for multilingual data) needs index.sense, which Debian does
            # not ship either; this is WordNet 3.0 itself and no multilingual data is used
            return None

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "multilingual functions are not available"
        return Reader(str(target), None)


def _by_name(synsets) -> list:
    """Synsets sorted by name (``word.pos.nn``): nltk returns a relation's synsets from a set, in an
    order that follows the process's hash seed (PYTHONHASHSEED)."""
    return sorted(synsets, key=lambda s: s.name())


def wordnet_words(reader, seeds: list[str], relations: list[str], depth: int = 1, pos: list[str] | None = None,
                  max_senses: int | None = None, phrases: bool = False) -> list[str]:
    """Related words of ``seeds``, in a fixed order (the same in every process): per seed, its
    senses in WordNet's sense order; per sense, its synonyms (the synset's lemmas in WordNet's
    order), then its derivationally related forms (sorted by synset name, then lemma), then each
    other relation's synsets breadth first, up to ``depth`` hops, per hop and relation sorted by
    synset name, each synset's lemmas in WordNet's order.

    The sorting matters: nltk keeps a synset's pointers in a set, so its related synsets come in
    an order that changes with PYTHONHASHSEED, and the word cap would keep different words."""
    out: list[str] = []

    def add(name: str) -> None:
        word = name.replace("_", " ")
        if (" " in word or "-" in word) and not phrases:
            return
        out.append(word.lower())

    for seed in seeds:
        synsets = reader.synsets(seed.replace(" ", "_"))
        if pos:
            synsets = [s for s in synsets if s.pos() in pos]
        for syn in synsets[:max_senses] if max_senses else synsets:
            if "synonyms" in relations:
                for lemma in syn.lemmas():
                    add(lemma.name())
            if "derivationally_related_forms" in relations:
                for lemma in syn.lemmas():
                    if lemma.name().lower() == seed.lower().replace(" ", "_"):
                        related = lemma.derivationally_related_forms()  # also from a set in nltk
                        for rel in sorted(related, key=lambda x: (x.synset().name(), x.name())):
                            add(rel.name())
            frontier = [syn]
            for _ in range(depth):
                nxt = []
                for s in frontier:
                    for rel in relations:
                        if rel in ("synonyms", "derivationally_related_forms"):
                            continue
                        nxt.extend(_by_name(getattr(s, rel)()))
                for s in nxt:
                    for lemma in s.lemmas():
                        add(lemma.name())
                frontier = nxt
    return out


# --- VADER ------------------------------------------------------------------------------------------

def vader_lexicon() -> dict[str, float]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise UserError("the vader knowledge base needs the package vaderSentiment (pip install -e .)") from None
    return dict(SentimentIntensityAnalyzer().lexicon)


def vader_words(lexicon: dict[str, float], polarity: int, min_score: float, neutral_max: float) -> list[str]:
    """Words of one polarity (+1, -1, or 0 = neutral), strongest first (ties by word)."""
    items = [(w, s) for w, s in lexicon.items() if WORD.match(w)]
    if polarity > 0:
        items = [(w, s) for w, s in items if s >= min_score]
    elif polarity < 0:
        items = [(w, s) for w, s in items if s <= -min_score]
    else:
        items = [(w, s) for w, s in items if abs(s) <= neutral_max]
    return [w for w, s in sorted(items, key=lambda t: (-abs(t[1]) if polarity else abs(t[1]), t[0]))]


# --- nearest neighbours in the model's input embeddings ---------------------------------------------

def embedding_neighbours(embeddings, tokenizer, seeds: list[str], k: int) -> list[str]:
    """The ``k`` whole-word vocabulary entries nearest (cosine) to the mean of each seed's sub-token
    embeddings, over all seeds (a word that re-tokenises to exactly its own token id)."""
    import torch
    import torch.nn.functional as F

    emb = F.normalize(embeddings.detach().float().cpu(), dim=-1)
    special = set(tokenizer.all_special_ids)
    out: list[str] = []
    for seed in seeds:
        ids = tokenizer(" " + seed, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        query = F.normalize(emb[torch.tensor(ids)].mean(0), dim=-1)
        order = torch.argsort(emb @ query, descending=True, stable=True)[: 50 * k + 100].tolist()  # ties: by id
        found = 0
        for tid in order:
            if tid in special or tid in ids:
                continue
            word = tokenizer.decode([tid]).strip().lower()
            if not WORD.match(word) or tokenizer(" " + word, add_special_tokens=False)["input_ids"] != [tid]:
                continue
            out.append(word)
            found += 1
            if found >= k:
                break
    return out


# --- the blocklist ------------------------------------------------------------------------------------

def apply_blocklist(words: dict[str, list[str]], blocklist: Blocklist | None
                    ) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The knowledge base's words without blocked ones (order kept), and how many each class lost."""
    if blocklist is None:
        return words, {name: 0 for name in words}
    kept = {name: [w for w in ws if not blocklist.blocks(w)] for name, ws in words.items()}
    return kept, {name: len(words[name]) - len(kept[name]) for name in words}


# --- one code path for every source -----------------------------------------------------------------

def kb_words(kb: dict, task_spec: dict, tokenizer=None, embeddings=None) -> dict[str, list[str]]:
    """Related words per class name (no anchor handling, no filtering) from the KB spec ``kb``."""
    names, manual = task_spec["label_names"], task_spec["label_words"]
    source = kb["source"]
    if source == "file":
        return read_kb_file(kb["path"], names)
    if source == "wordnet":
        reader = wordnet_reader(kb.get("path") or DEFAULT_WORDNET)
        return {n: wordnet_words(reader, manual[n], kb.get("relations", list(WORDNET_RELATIONS)),
                                 depth=kb.get("depth", 1), pos=kb.get("pos"), max_senses=kb.get("max_senses"),
                                 phrases=kb.get("phrases", False)) for n in names}
    if source == "vader":
        polarity = kb.get("polarity") or {}
        missing = [n for n in names if n not in polarity]
        if missing:
            raise UserError(f"knowledge base '{kb.get('name', 'vader')}': no polarity for classes {missing} of task "
                            f"'{task_spec['name']}' (set polarity: {{class: 1 | -1 | 0}})")
        lex = vader_lexicon()
        return {n: vader_words(lex, polarity[n], kb.get("min_score", 1.0), kb.get("neutral_max", 0.3)) for n in names}
    if source == "embedding":
        if embeddings is None:
            raise ValueError("the embedding knowledge base needs the model's input embeddings")
        return {n: embedding_neighbours(embeddings, tokenizer, manual[n], kb.get("k", 20)) for n in names}
    raise UserError(f"unknown knowledge-base source '{source}' (file | wordnet | vader | embedding)")


@dataclass
class Candidate:
    """One label word of one class, with how expansion treated it."""
    cls: int
    word: str
    source: str  # anchor | manual | kb
    token_ids: list[int] = field(default_factory=list)
    status: str = "kept"  # kept | duplicate | tokenizer | cap


def word_tokens(tokenizer, word: str, max_subtokens: int | None = None) -> list[int] | None:
    """Sub-token ids of `` word`` (leading space: a word, not a word piece), or None if unusable."""
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and unk in ids) or (max_subtokens and len(ids) > max_subtokens):
        return None
    return list(ids)


def expand(task_spec: dict, words: dict[str, list[str]] | None, tokenizer, *, max_words: int | None,
           max_subtokens: int | None = None, origin: str = "knowledge base") -> list[Candidate]:
    """Candidate label words of every class: the task's own words (the first one is the anchor)
    then the knowledge base's; duplicates across classes removed where not the anchor, words the
    tokenizer cannot represent dropped, each class capped at ``max_words`` kept words.

    Returns every candidate, dropped ones included (``status``), in class then list order.
    """
    names = task_spec["label_names"]
    cands: list[Candidate] = []
    for c, name in enumerate(names):
        seen = set()
        own = task_spec["label_words"][name]
        extra = (words or {}).get(name, [])
        for j, w in enumerate(list(own) + list(extra)):
            key = w.strip().lower()
            if not key or key in seen:
                continue
            seen.add(key)
            src = "anchor" if j == 0 else ("manual" if j < len(own) else "kb")
            cands.append(Candidate(c, w.strip() if src != "kb" else key, src))
    owners: dict[str, set[int]] = {}
    for cand in cands:
        owners.setdefault(cand.word.lower(), set()).add(cand.cls)
    for cand in cands:
        if len(owners[cand.word.lower()]) > 1 and cand.source != "anchor":
            cand.status = "duplicate"
    for cand in cands:  # every candidate is tokenised: the manual variants use the task's words even when dropped here
        ids = word_tokens(tokenizer, cand.word, max_subtokens)
        if ids is None:
            if cand.source == "anchor":
                raise UserError(f"{origin}: the anchor word '{cand.word}' of class '{names[cand.cls]}' cannot be "
                                f"represented by this model's tokenizer")
            if cand.status == "kept":
                cand.status = "tokenizer"
            continue
        cand.token_ids = ids
    if max_words:
        for c in range(len(names)):
            kept = [x for x in cands if x.cls == c and x.status == "kept"]
            for x in kept[max_words:]:
                x.status = "cap"
    return cands


def check_file_usable(path: str, task_spec: dict, words: dict[str, list[str]], tokenizer,
                      max_subtokens: int | None = None) -> None:
    """A KB file must give every class at least one word this tokenizer can represent (names the line)."""
    for i, name in enumerate(task_spec["label_names"], 1):
        if not any(word_tokens(tokenizer, w, max_subtokens) for w in words[name]):
            where = f"line {i}" if not str(path).endswith(".json") else f"class '{name}'"
            raise UserError(f"{path}: {where}: no word of class '{name}' can be represented by this model's "
                            f"tokenizer ({', '.join(words[name][:5])})")
